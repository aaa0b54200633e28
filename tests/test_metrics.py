"""Metrics: hand-worked cases, agreement with the plain reference, and invariants."""

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from filterlens.metrics import (
    aggregate,
    aggregate_layers,
    as_filters,
    entropy10,
    measure_weight,
    orthogonality,
    principal_variances,
    sparse_mask,
    sparsity,
    variance_entropy,
)
from reference import ref_orthogonality, ref_sparsity, ref_variance_entropy

LOG10_9 = math.log10(9)


# --- hand-worked cases -------------------------------------------------------------------------

def test_sparsity_hand_worked_threshold_is_inclusive():
    # Layer max is 1.0; the threshold is 0.01. Filter maxima: 1.0, 0.01 (== t), 0.005, 0.02.
    # float64, where 0.01 * 1.0 == 0.01 exactly (float32(0.01) is slightly below 0.01).
    w = np.zeros((2, 2, 3, 3), dtype=np.float64)
    w[0, 0, 1, 1] = 1.0
    w[0, 1, 0, 0] = -0.01
    w[1, 0, 2, 2] = 0.005
    w[1, 1, 0, 1] = 0.02
    assert sparsity(w) == pytest.approx(2 / 4)  # 0.01 <= 0.01 and 0.005: sparse
    assert sparsity(w, inclusive=False) == pytest.approx(1 / 4)  # torchconvquality's '<'
    assert sparsity(w, threshold=0.03) == pytest.approx(3 / 4)


def test_all_zero_layer_is_fully_sparse_and_entropy_undefined():
    w = np.zeros((4, 3, 3, 3))
    assert sparsity(w) == 1.0
    assert sparsity(w, inclusive=False) == 1.0
    assert math.isnan(variance_entropy(w))
    r = measure_weight(w)
    assert r["n_nonsparse"] == 0 and "need 2" in r["notes"]


def test_entropy_of_one_repeated_pattern_is_zero():
    pattern = np.arange(9, dtype=np.float64).reshape(3, 3) - 4
    w = np.stack([np.stack([pattern * s for s in (1.0, 2.0, 0.5)])] * 4)  # scaling is divided out
    assert variance_entropy(w) == 0.0


def test_entropy_is_maximal_for_an_orthonormal_spread():
    # Filters +-e_i for each of the 9 positions: centred, the covariance is a multiple of I.
    rows = []
    for i in range(9):
        for sign in (1.0, -1.0):
            f = np.zeros(9)
            f[i] = sign
            rows.append(f.reshape(3, 3))
    w = np.array(rows)[:, None]  # (18, 1, 3, 3)
    assert variance_entropy(w) == pytest.approx(LOG10_9, abs=1e-12)


def test_entropy_two_directions_hand_worked():
    # Scaled filters: e0, -e0, e1, -e1 -> variance split evenly over 2 axes -> log10(2).
    rows = []
    for i in (0, 1):
        for sign in (1.0, -1.0):
            f = np.zeros(9)
            f[i] = sign * 3.0
            rows.append(f.reshape(3, 3))
    assert variance_entropy(np.array(rows)[:, None]) == pytest.approx(math.log10(2), abs=1e-12)


def test_principal_variances_match_svd():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 9))
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    np.testing.assert_allclose(principal_variances(x), s**2 / 49, rtol=1e-10, atol=1e-12)


def test_entropy10_edge_cases():
    assert entropy10(np.array([1.0, 0.0, 0.0])) == 0.0
    assert entropy10(np.zeros(3)) == 0.0
    assert entropy10(np.ones(10)) == pytest.approx(1.0)


def test_orthogonality_hand_worked():
    # Two orthogonal channels: 1. Two identical channels: 1 - 2/2 = 0.
    eye = np.zeros((2, 1, 3, 3))
    eye[0, 0, 0, 0] = 1
    eye[1, 0, 1, 1] = 5
    assert orthogonality(eye) == pytest.approx(1.0)
    same = np.ones((2, 1, 3, 3))
    assert orthogonality(same) == pytest.approx(0.0, abs=1e-7)
    # Three channels: a, b orthogonal, c = (a+b)/sqrt2: |G-I| off-diagonal = 4 * 1/sqrt2.
    a = np.zeros(9); a[0] = 1
    b = np.zeros(9); b[1] = 1
    c = (a + b) / math.sqrt(2)
    w = np.stack([a, b, c]).reshape(3, 1, 3, 3)
    assert orthogonality(w) == pytest.approx(1 - 4 / math.sqrt(2) / 6, abs=1e-7)


def test_orthogonality_zero_channel_adds_one_through_the_diagonal():
    w = np.zeros((2, 1, 3, 3))
    w[0, 0, 0, 0] = 1.0  # channel 1 is all zero: G = diag(1, 0), |G - I| sums to 1
    assert orthogonality(w) == pytest.approx(1 - 1 / 2)


def test_single_channel_orthogonality_undefined():
    r = measure_weight(np.random.default_rng(1).normal(size=(1, 4, 3, 3)))
    assert math.isnan(r["orthogonality"]) and "orthogonality undefined" in r["notes"]


def test_non_finite_weights_are_not_measured():
    w = np.random.default_rng(2).normal(size=(4, 4, 3, 3))
    w[1, 2, 0, 0] = np.nan
    r = measure_weight(w)
    assert math.isnan(r["sparsity"]) and "non-finite" in r["notes"]


# --- agreement with the plain reference --------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("shape", [(16, 3, 3, 3), (32, 16, 3, 3), (8, 1, 3, 3), (24, 8, 5, 5), (4, 6, 1, 3)])
def test_agrees_with_reference_on_random_weights(seed, shape, dtype):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape).astype(dtype)
    # make a share of filters (near) sparse, one on the threshold
    kill = rng.random(shape[:2]) < 0.3
    w[kill] *= 1e-3
    w[0, 0] = 0
    m = float(np.abs(w).max())
    w[0, 0, 0, 0] = 0.01 * m  # on the threshold: sparse under '<=', not under '<'
    if dtype == np.float64:
        # float64 stores 0.01 * m as computed, so the filter sits exactly on the threshold and
        # the two rules must differ by exactly this one filter (float32 would round it off).
        assert abs(float(w[0, 0, 0, 0])) == 0.01 * m
        n = shape[0] * shape[1]
        assert sparsity(w) - sparsity(w, inclusive=False) == pytest.approx(1 / n, abs=1e-12)
        assert sparse_mask(as_filters(w))[0] and not sparse_mask(as_filters(w), inclusive=False)[0]
    r = measure_weight(w)
    assert r["sparsity"] == pytest.approx(ref_sparsity(w), abs=1e-12)
    assert sparsity(w, inclusive=False) == pytest.approx(ref_sparsity(w, inclusive=False), abs=1e-12)
    ve = ref_variance_entropy(w)
    if math.isnan(ve):
        assert math.isnan(r["variance_entropy"])
    else:
        assert r["variance_entropy"] == pytest.approx(ve, abs=1e-9)
    assert r["orthogonality"] == pytest.approx(ref_orthogonality(w), abs=1e-6)


def test_large_layer_orthogonality_precision():
    # float32 Gram products against the float64 reference on a WRN-sized layer slice.
    w = np.random.default_rng(3).normal(size=(256, 256, 3, 3)).astype(np.float32)
    assert orthogonality(w) == pytest.approx(ref_orthogonality(w), abs=1e-6)


# --- invariants (hypothesis) -------------------------------------------------------------------

layer_shapes = st.tuples(st.integers(2, 8), st.integers(1, 6), st.just(3), st.just(3))
weights = layer_shapes.flatmap(
    lambda s: arrays(np.float64, s, elements=st.floats(-1, 1, allow_nan=False, width=32))
)


def _close(a, b, tol=1e-7):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


@settings(max_examples=60, deadline=None)
@given(weights, st.randoms(use_true_random=False))
def test_permuting_filters_and_channels_changes_nothing(w, rnd):
    perm_out = list(range(w.shape[0]))
    perm_in = list(range(w.shape[1]))
    rnd.shuffle(perm_out)
    rnd.shuffle(perm_in)
    p = w[perm_out][:, perm_in]
    a, b = measure_weight(w), measure_weight(p)
    for key in ("sparsity", "variance_entropy", "orthogonality"):
        assert _close(a[key], b[key], 1e-6), key


@settings(max_examples=60, deadline=None)
@given(weights, st.floats(1e-3, 1e3))
def test_positive_scaling_leaves_sparsity_entropy_and_orthogonality(w, c):
    a, b = measure_weight(w), measure_weight(w * c)
    assert a["sparsity"] == b["sparsity"]
    assert _close(a["variance_entropy"], b["variance_entropy"], 1e-6)
    assert _close(a["orthogonality"], b["orthogonality"], 1e-5)


@settings(max_examples=80, deadline=None)
@given(weights)
def test_bounds(w):
    r = measure_weight(w)
    assert 0.0 <= r["sparsity"] <= 1.0
    if not math.isnan(r["variance_entropy"]):
        assert -1e-12 <= r["variance_entropy"] <= LOG10_9 + 1e-12
    # |G_ij| <= 1 bounds the off-diagonal sum by n(n-1): orthogonality in [0, 1]
    assert -1e-6 <= r["orthogonality"] <= 1.0 + 1e-6
    assert r["n_sparse"] + r["n_nonsparse"] == r["n_filters"]


@settings(max_examples=40, deadline=None)
@given(weights)
def test_sparse_mask_matches_definition(w):
    f = w.reshape(-1, 9)
    m = np.abs(w).max()
    expect = np.abs(f).max(axis=1) <= 0.01 * m if m > 0 else np.ones(len(f), bool)
    np.testing.assert_array_equal(sparse_mask(f), expect)


# --- aggregation -------------------------------------------------------------------------------

def test_aggregate_uses_documented_weights_not_mean_of_ratios():
    layers = pd.DataFrame(
        {
            "model": ["m", "m"],
            "n_filters": [10, 90],
            "n_sparse": [5, 0],
            "n_nonsparse": [5, 90],
            "sparsity": [0.5, 0.0],
            "variance_entropy": [0.2, 0.8],
            "orthogonality": [0.4, 0.9],
            "out_channels": [10, 30],
        }
    )
    agg = aggregate_layers(layers)
    assert agg["sparsity"] == pytest.approx(5 / 100)  # not (0.5 + 0) / 2
    assert agg["variance_entropy"] == pytest.approx((0.2 * 5 + 0.8 * 90) / 95)
    assert agg["orthogonality"] == pytest.approx((0.4 * 10 + 0.9 * 30) / 40)
    by_model = aggregate(layers)
    assert list(by_model["model"]) == ["m"] and by_model.loc[0, "n_filters"] == 100


def test_aggregate_skips_undefined_layers():
    layers = pd.DataFrame(
        {"model": ["m", "m"], "n_filters": [1, 9], "n_sparse": [0, 0], "n_nonsparse": [1, 9],
         "sparsity": [0.0, 0.0], "variance_entropy": [np.nan, 0.5], "orthogonality": [np.nan, 0.7],
         "out_channels": [1, 3]}
    )
    agg = aggregate_layers(layers)
    assert agg["variance_entropy"] == pytest.approx(0.5)
    assert agg["orthogonality"] == pytest.approx(0.7)


@pytest.mark.parametrize("scale", [1e-26, 1e-12, 1.0, 1e20])
def test_tiny_and_huge_weights_are_not_flushed(scale):
    # float32 squares of 1e-26 underflow to 0 and of 1e20 overflow: the Gram must not see a
    # "zero channel" or inf there (found by hypothesis).
    w = np.random.default_rng(5).normal(size=(6, 4, 3, 3)) * scale
    assert orthogonality(w) == pytest.approx(ref_orthogonality(w), abs=1e-6)
    assert measure_weight(w)["orthogonality"] == pytest.approx(ref_orthogonality(w), abs=1e-6)


# --- the compiled fused pass -------------------------------------------------------------------

def _plain_moments(filters, t, inclusive):
    """Per-filter norms and float64 moments of the kept, scaled filters, the obvious way."""
    f = filters.astype(np.float64)
    linf = np.abs(f).max(axis=1)
    keep = (linf > t if inclusive else linf >= t) & (linf > 0)
    y = f[keep] / linf[keep, None]
    return linf, int(keep.sum()), y.sum(axis=0), y.T @ y


@pytest.mark.parametrize("k", [1, 2, 3, 9, 25, 49])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_fused_pass_matches_plain_computation(k, dtype):
    from filterlens.metrics.entropy import linf_and_moments

    rng = np.random.default_rng(k)
    n = 5003  # not a multiple of the block size
    f = rng.normal(size=(n, k)).astype(dtype)
    f[rng.random(n) < 0.2] *= dtype(1e-3)
    f[7] = 0
    t = 0.01 * float(np.abs(f).max())
    f[11, 0] = t  # a filter exactly on the threshold (when representable)
    for inclusive in (True, False):
        want = _plain_moments(f, t, inclusive)
        for chunk in (64, 1000, 4096):
            linf, linf_sum, count, total, xtx = linf_and_moments(f, t, inclusive, chunk=chunk)
            assert linf_sum == pytest.approx(want[0].sum(), rel=1e-12)
            assert linf.dtype == (np.float32 if dtype == np.float16 else dtype)
            np.testing.assert_array_equal(linf.astype(np.float64), want[0])
            assert count == want[1]
            np.testing.assert_allclose(total, want[2], rtol=1e-12, atol=1e-9)
            np.testing.assert_allclose(xtx, want[3], rtol=1e-12, atol=1e-9)


def test_measure_weights_over_threads_equals_one_layer_at_a_time():
    from filterlens.metrics import measure_weights

    rng = np.random.default_rng(0)
    layers = [rng.normal(size=s).astype(np.float32) for s in [(64, 32, 3, 3), (8, 3, 3, 3), (1, 4, 3, 3), (128, 64, 3, 3)]]
    layers.append(np.full((4, 4, 3, 3), np.nan, dtype=np.float32))
    one = [measure_weight(w) for w in layers]
    for threads in (1, 2, 3):
        many = measure_weights(layers, threads=threads)
        assert len(many) == len(layers)
        for a, b in zip(many, one):
            assert a.keys() == b.keys()
            for key in a:  # bit-identical: each layer is measured by one thread
                assert a[key] == b[key] or (isinstance(a[key], float) and math.isnan(a[key]) and math.isnan(b[key]))
    assert "non-finite" in one[-1]["notes"] and "1 output channel" in one[2]["notes"]


def test_orthogonality_from_raw_gram_matches_normalised_gram():
    from filterlens.metrics.orthogonality import (
        normalise_gram,
        orthogonality_from_gram,
        orthogonality_from_raw_gram,
        raw_channel_gram,
    )

    w = np.random.default_rng(1).normal(size=(40, 7, 3, 3))
    w[3] = 0  # a zero channel: zero row and column, adds 1 through the diagonal
    raw = w.reshape(40, -1) @ w.reshape(40, -1).T  # float64: both routes are exact to rounding
    assert orthogonality_from_raw_gram(raw) == pytest.approx(orthogonality_from_gram(normalise_gram(raw)), abs=1e-13)
    assert orthogonality_from_raw_gram(raw) == pytest.approx(ref_orthogonality(w), abs=1e-13)
    # the float32 Gram of measure_weight: normalised in float64, closer than the float32 route
    raw32 = raw_channel_gram(w)
    assert raw32.dtype == np.float32
    assert orthogonality_from_raw_gram(raw32) == pytest.approx(ref_orthogonality(w), abs=1e-9)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_layer_max_abs_is_exact_and_flags_non_finite(dtype):
    from filterlens.metrics.entropy import layer_max_abs

    w = np.random.default_rng(2).normal(size=(5, 4, 3, 3)).astype(dtype)
    w[2, 1, 0, 0] = -7.25  # the largest magnitude is negative
    assert layer_max_abs(w) == 7.25
    assert layer_max_abs(w[:, :, ::2]) == float(np.abs(w[:, :, ::2]).max())  # strided view
    assert layer_max_abs(np.zeros((2, 2, 3, 3), dtype=dtype)) == 0.0
    assert layer_max_abs(np.full((1, 1, 1, 1), -0.0, dtype=dtype)) == 0.0
    tiny = np.zeros((2, 2, 3, 3), dtype=dtype)
    tiny[1, 1, 1, 1] = -np.finfo(dtype).smallest_subnormal
    assert layer_max_abs(tiny) == float(np.finfo(dtype).smallest_subnormal)
    for bad in (np.nan, -np.nan, np.inf, -np.inf):
        v = w.copy()
        v[4, 3, 2, 2] = bad
        assert not math.isfinite(layer_max_abs(v))


def test_read_only_big_endian_and_fortran_weights_give_the_same_numbers():
    w = np.random.default_rng(0).normal(size=(8, 4, 3, 3)).astype(np.float32)
    want = measure_weight(w)
    frozen = w.copy()
    frozen.setflags(write=False)  # e.g. a memory-mapped safetensors file
    for variant in (frozen, w.astype(">f4"), np.asfortranarray(w)):
        got = measure_weight(variant)
        for key in ("n_sparse", "variance_entropy", "orthogonality", "weight_max_abs", "filter_linf_mean"):
            assert got[key] == pytest.approx(want[key], rel=1e-7), key


def test_kernels_compile_without_a_writable_cache(monkeypatch):
    # A read-only install with no writable home: numba cannot cache, filterlens still runs.
    import importlib

    import numba
    import numba.core.caching as caching

    import filterlens.metrics.kernels as kernels

    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed across numba versions
    monkeypatch.setattr(impl, "_locator_classes", [])
    with pytest.raises(RuntimeError, match="no locator"):  # the situation is really simulated
        numba.njit(cache=True)(_plain_moments)
    try:
        fresh = importlib.reload(kernels)
        acc = np.zeros((fresh.padded_rows(9),) * 2)
        linf = np.empty(3, dtype=np.float32)
        flat = np.arange(27, dtype=np.float32)
        assert fresh.linf_moments(flat, 9, 0.0, False, linf, acc, 4096) == pytest.approx(8 + 17 + 26)
    finally:
        monkeypatch.undo()
        importlib.reload(kernels)
