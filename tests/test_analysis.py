"""Tests of filterlens.analysis on hand-made data whose answers are known by construction."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from filterlens.analysis import (
    ALL,
    BIN_LABELS,
    DECILES,
    FIRST,
    GroupSpec,
    bootstrap_diff_ci,
    compare,
    depth_bin,
    distribution_shift,
    evaluate_claims,
    group_stats,
    load_pairs,
    match_pairs,
    model_bin_table,
    select_layers,
    split_groups,
)
from filterlens.analysis.shift import HIST_EPS, scaled_nonsparse_chunk, symmetric_kl
from filterlens.analysis.stats import (
    accuracy_correlations,
    bootstrap_mean_ci,
    cohens_d,
    holm,
    mann_whitney,
    spearman,
    wilcoxon_signed_rank,
)
from filterlens.errors import FilterlensError
from filterlens.metrics import measure_weight, scaled_nonsparse, sparse_mask

N_DEPTHS = 11  # conv_depth 0..10 -> conv_depth_norm d/10: "first" and the ten deciles
MIDDLE = 5  # conv_depth 5 -> (0.4, 0.5]
CENTRE = np.array([[0.1, 0.3, 0.1], [0.3, 1.0, 0.3], [0.1, 0.3, 0.1]], dtype=np.float32)


def _random_layer(rng: np.random.Generator, c_out: int, c_in: int) -> np.ndarray:
    """Diverse random filters with a random share (5-30 %) of near-zero (sparse) ones."""
    w = rng.normal(size=(c_out, c_in, 3, 3)).astype(np.float32)
    n = c_out * c_in
    k = int(round(rng.uniform(0.05, 0.3) * n))
    flat = w.reshape(n, 9)
    flat[rng.choice(n, size=k, replace=False)] *= 1e-4
    return w


def _structured_layer(rng: np.random.Generator, c_out: int, c_in: int) -> np.ndarray:
    """One centre-weighted pattern with small noise, half of the filters near zero."""
    scale = rng.normal(1.0, 0.1, size=(c_out, c_in, 1, 1)).astype(np.float32)
    w = CENTRE * scale + 0.05 * rng.normal(size=(c_out, c_in, 3, 3)).astype(np.float32)
    flat = w.reshape(-1, 9)
    flat[rng.choice(len(flat), size=len(flat) // 2, replace=False)] *= 1e-4
    return w


def build(
    n_models: int = 8,
    differ: tuple[int, ...] = (MIDDLE,),
    identical: bool = False,
    shared_elsewhere: bool = True,
    datasets: tuple[str, ...] = ("cifar10",),
    seed: int = 0,
):
    """Models, layers and weights of two groups that differ by construction.

    Group ``a`` ("robust", training adversarial) and ``b`` ("normal"). Pair ``i`` of the two
    groups has the same architecture. In the conv depths ``differ`` group ``b`` gets
    structured, half-sparse filters while group ``a`` keeps diverse random ones. Elsewhere
    the pair shares its weights exactly (``shared_elsewhere``) or draws them independently
    from the same distribution. ``identical``: group ``b`` is a copy of group ``a``.
    """
    rng = np.random.default_rng(seed)
    models, layers, weights = [], [], {}
    for ds in datasets:
        for i in range(n_models):
            base = [_random_layer(rng, 16, 3 if d == 0 else 8) for d in range(N_DEPTHS)]
            for g, training in (("a", "adversarial"), ("b", "normal")):
                name = f"{ds}-{'rob' if g == 'a' else 'nor'}{i}"
                models.append(
                    {"model": name, "arch": f"net{i}", "dataset": ds, "training": training, "eps": 8 / 255 if g == "a" else 0.0,
                     "clean_acc": 0.9 - 0.01 * i, "robust_acc": 0.4 + 0.01 * i if g == "a" else 0.0}
                )
                for d in range(N_DEPTHS):
                    c_in = 3 if d == 0 else 8
                    if g == "b" and not identical and d in differ:
                        w = _structured_layer(rng, 16, c_in)
                    elif g == "b" and not identical and not shared_elsewhere:
                        w = _random_layer(rng, 16, c_in)
                    else:
                        w = base[d].copy()
                    weights[(name, f"conv{d}")] = w
                    layers.append(
                        {"model": name, "layer": f"conv{d}", "kernel_size": "3x3", "in_channels": c_in, "out_channels": 16, "groups": 1,
                         "transposed": False, "conv_depth": d, "conv_depth_norm": d / (N_DEPTHS - 1), **measure_weight(w)}
                    )
    return pd.DataFrame(models), pd.DataFrame(layers), weights


def chunker(weights: dict, chunk_size: int = 50):
    """A filter source like FilterDB.iter_filters: (n, kh, kw) chunks of one layer."""

    def fn(model: str, layer: str):
        f = weights[(model, layer)].reshape(-1, *weights[(model, layer)].shape[2:])
        for i in range(0, len(f), chunk_size):
            yield f[i : i + chunk_size]

    return fn


# ------------------------------------------------------------------ in-memory reference
def _pca_svd(x: np.ndarray):
    """Plain PCA via SVD with the basis signs fixed (largest |loading| positive)."""
    mu = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mu, full_matrices=False)
    idx = np.abs(vt).argmax(axis=1)
    vt = vt * np.sign(vt[np.arange(len(vt)), idx])[:, None]
    var = s**2 / (len(x) - 1)
    return mu, vt, var / var.sum()


def reference_shift(weights, membership, select=lambda key: True, range_mode="global", n_bins=70, repeat=None):
    """The distribution shift computed the obvious way, all filters in memory."""
    repeat = repeat or {}
    parts = {"a": [], "b": []}
    for key, w in weights.items():
        if key[0] in membership and select(key):
            s = scaled_nonsparse(w.reshape(-1, 9))
            parts[membership[key[0]]].append(np.tile(s, (int(repeat.get(key[0], 1)), 1)))
    xa, xb = np.concatenate(parts["a"]), np.concatenate(parts["b"])
    mu, vt, evr = _pca_svd(np.concatenate([xa, xb]))
    ca, cb = (xa - mu) @ vt.T, (xb - mu) @ vt.T
    both = np.concatenate([ca, cb])
    kl = []
    for c in range(9):
        rng_ = (both.min(), both.max()) if range_mode == "global" else (both[:, c].min(), both[:, c].max())
        p = np.histogram(ca[:, c], n_bins, rng_)[0] / len(ca)
        q = np.histogram(cb[:, c], n_bins, rng_)[0] / len(cb)
        p = np.where(p == 0, HIST_EPS, p)
        q = np.where(q == 0, HIST_EPS, q)
        p, q = p / p.sum(), q / q.sum()
        kl.append(np.sum(p * np.log(p / q)) + np.sum(q * np.log(q / p)))
    own = {g: np.cumsum(_pca_svd(x)[2]) for g, x in (("a", xa), ("b", xb))}
    return float(np.dot(evr, kl)), evr, vt, own


# ------------------------------------------------------------------------------ bins
@pytest.mark.parametrize(
    "conv_depth, norm, expected",
    [
        (0, 0.0, FIRST),
        (0, 0.5, FIRST),  # conv_depth 0 wins whatever the norm says
        (None, 0.0, FIRST),
        (1, 0.05, "(0.0, 0.1]"),
        (1, 0.1, "(0.0, 0.1]"),  # right-closed
        (2, 0.1000001, "(0.1, 0.2]"),
        (3, 0.30000000000000004, "(0.2, 0.3]"),  # 3 * 0.1 in floating point is still 0.3
        (3, 3 / 10, "(0.2, 0.3]"),
        (1, 1 / 3, "(0.3, 0.4]"),
        (9, 0.9, "(0.8, 0.9]"),
        (10, 1.0, "(0.9, 1.0]"),
        (7, 0.95, "(0.9, 1.0]"),
        (5, float("nan"), None),
        (5, 1.5, None),
        (5, 0.0, None),  # norm 0 but not the first layer: inconsistent
    ],
)
def test_depth_bin(conv_depth, norm, expected):
    assert depth_bin(conv_depth, norm) == expected


def test_every_decile_reached_by_levels():
    # 11 levels: d/10 for d = 1..10 hits every decile once, at its right edge
    assert [depth_bin(d, d / 10) for d in range(11)] == BIN_LABELS
    # 21 levels: two layers per decile, and the edges go down
    bins = [depth_bin(d, d / 20) for d in range(1, 21)]
    assert bins == [b for b in DECILES for _ in range(2)]


def test_model_bin_table_weights_by_hand():
    layers = pd.DataFrame(
        {
            "model": ["m"] * 4,
            "conv_depth": [0, 1, 2, 3],
            "conv_depth_norm": [0.0, 0.05, 0.1, 0.5],
            "n_filters": [10, 100, 300, 50],
            "n_sparse": [1, 10, 90, 0],
            "n_nonsparse": [9, 90, 210, 50],
            "sparsity": [0.1, 0.1, 0.3, 0.0],
            "variance_entropy": [0.5, 0.6, 0.9, 0.7],
            "orthogonality": [0.2, 0.4, 0.8, 0.6],
            "out_channels": [10, 10, 30, 5],
        }
    )
    t = model_bin_table(layers).set_index("depth_bin")
    assert list(t.index) == [ALL, FIRST, "(0.0, 0.1]", "(0.4, 0.5]"]
    b = t.loc["(0.0, 0.1]"]
    assert b["n_layers"] == 2
    assert b["sparsity"] == pytest.approx(100 / 400)  # summed counts, not a mean of ratios
    assert b["variance_entropy"] == pytest.approx((0.6 * 90 + 0.9 * 210) / 300)
    assert b["orthogonality"] == pytest.approx((0.4 * 10 + 0.8 * 30) / 40)
    assert t.loc[ALL, "sparsity"] == pytest.approx(101 / 460)
    assert t.loc[FIRST, "sparsity"] == pytest.approx(0.1)


def test_unplaced_layers_count_only_in_all():
    layers = pd.DataFrame(
        {"model": ["m", "m"], "conv_depth": [0, 4], "conv_depth_norm": [0.0, np.nan], "n_filters": [10, 10],
         "n_sparse": [0, 10], "n_nonsparse": [10, 0], "sparsity": [0.0, 1.0], "variance_entropy": [0.5, np.nan],
         "orthogonality": [0.5, 0.5], "out_channels": [2, 2]}
    )
    t = model_bin_table(layers).set_index("depth_bin")
    assert list(t.index) == [ALL, FIRST]
    assert t.loc[ALL, "sparsity"] == 0.5


def test_select_layers_kernel_formats():
    layers = pd.DataFrame(
        {"kernel_size": ["3x3", (3, 3), [1, 1], 3, "(7, 7)", "3x3"], "transposed": [False] * 5 + [True]}
    )
    assert list(select_layers(layers).index) == [0, 1, 3]
    assert list(select_layers(layers, (7, 7)).index) == [4]
    assert list(select_layers(layers, None, include_transposed=True).index) == list(range(6))


# ---------------------------------------------------------------------------- groups
def test_groups_default_query_callable_and_column():
    models, _, _ = build(n_models=2)
    g = split_groups(models)
    assert g.a == ["cifar10-rob0", "cifar10-rob1"] and g.b == ["cifar10-nor0", "cifar10-nor1"]
    g = split_groups(models, GroupSpec("arch == 'net0'", lambda m: m["arch"] == "net1", "zero", "one"))
    assert g.a == ["cifar10-nor0", "cifar10-rob0"] and g.b == ["cifar10-nor1", "cifar10-rob1"]
    g = split_groups(models, GroupSpec.by_column("arch", "net0", "net1"))
    assert g.name_a == "net0" and len(g.a) == 2
    assert g.spec["a"] == "callable arch == 'net0'"
    g = split_groups(models, GroupSpec(["cifar10-rob0"], ["cifar10-nor1"]))
    assert g.membership.to_dict() == {"cifar10-rob0": "a", "cifar10-nor1": "b"}


def test_groups_errors():
    models, _, _ = build(n_models=2)
    with pytest.raises(FilterlensError, match="both groups"):
        split_groups(models, GroupSpec("arch == 'net0'", "training == 'normal'"))
    with pytest.raises(FilterlensError, match="empty"):
        split_groups(models, GroupSpec("training == 'unknown'"))
    with pytest.raises(FilterlensError, match="bad group query"):
        split_groups(models, GroupSpec("training ==== 1"))
    with pytest.raises(FilterlensError, match="unknown models"):
        split_groups(models, GroupSpec(["nope"]))


def test_pairs_from_csv_and_auto_with_shared_counterpart(tmp_path):
    models, _, _ = build(n_models=3)
    # a third robust model of arch net0 shares the normal counterpart cifar10-nor0
    models = pd.concat(
        [models, pd.DataFrame([{"model": "extra-rob", "arch": "net0", "dataset": "cifar10", "training": "adversarial"}])],
        ignore_index=True,
    )
    groups = split_groups(models)
    auto = match_pairs(models, groups)
    assert dict(zip(auto.table["model_a"], auto.table["model_b"]))["extra-rob"] == "cifar10-nor0"
    shared = auto.shared
    assert list(shared["model_b"]) == ["cifar10-nor0"] and shared["n_pairs"].iloc[0] == 2
    assert any("counterpart of 2 models" in line for line in auto.describe())
    assert auto.multiplicity()["cifar10-nor0"] == 2

    csv = tmp_path / "pairs.csv"
    csv.write_text("robust,normal\ncifar10-rob0,cifar10-nor0\ncifar10-rob1,cifar10-nor1\ncifar10-rob1,cifar10-nor1\n")
    pairs = load_pairs(csv, models, groups)
    assert len(pairs.table) == 2 and "duplicate" in pairs.notes[0]
    with pytest.raises(FilterlensError, match="do not fit"):
        load_pairs(pd.DataFrame({"robust": ["cifar10-nor0"], "normal": ["cifar10-nor1"]}), models, groups)
    with pytest.raises(FilterlensError, match="unknown"):
        load_pairs(pd.DataFrame({"model_a": ["x"], "model_b": ["cifar10-nor1"]}), models, groups)


def test_auto_pairs_report_unmatched():
    models, _, _ = build(n_models=2)
    models.loc[models["model"] == "cifar10-rob1", "arch"] = "other"
    pairs = match_pairs(models, split_groups(models))
    assert pairs.unmatched == ["cifar10-rob1"] and len(pairs.table) == 1


# ----------------------------------------------------------------------------- stats
def test_bootstrap_ci_covers_true_difference_and_is_seeded():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 300)
    lo, hi = bootstrap_diff_ci(a, b, n_boot=10_000, seed=3)
    assert lo < 1.0 < hi and lo > 0.6 and hi < 1.4
    assert (lo, hi) == bootstrap_diff_ci(a, b, n_boot=10_000, seed=3)
    assert (lo, hi) != bootstrap_diff_ci(a, b, n_boot=10_000, seed=4)
    # half-width close to the normal-theory value 1.96 * sqrt(1/200 + 1/300)
    assert (hi - lo) / 2 == pytest.approx(1.96 * np.sqrt(1 / 200 + 1 / 300), rel=0.15)


def test_bootstrap_coverage_on_simple_case():
    rng = np.random.default_rng(7)
    hits = 0
    for i in range(100):
        lo, hi = bootstrap_diff_ci(rng.normal(0.5, 1, 40), rng.normal(0, 1, 40), n_boot=2000, seed=i)
        hits += lo <= 0.5 <= hi
    assert hits >= 88  # nominal 95 %


def test_bootstrap_small_n_is_nan():
    assert np.isnan(bootstrap_diff_ci([1.0], [1.0, 2.0])).all()
    assert np.isnan(bootstrap_mean_ci([1.0])).all()
    lo, hi = bootstrap_mean_ci([1.0, 2.0, 3.0, 4.0], seed=0)
    assert 1.0 <= lo < 2.5 < hi <= 4.0


def test_tests_and_effect_sizes():
    u, p, r, note = mann_whitney([5, 6, 7, 8], [1, 2, 3, 4])
    assert u == 16 and r == 1.0 and p == pytest.approx(2 / 70) and note == ""
    assert mann_whitney([1, 1], [1, 1])[1:] == (1.0, 0.0, "all values equal")
    assert np.isnan(mann_whitney([1], [1, 2])[1])
    w, p, r, _ = wilcoxon_signed_rank([1.0, 2.0, 3.0, -0.5])
    assert r == pytest.approx((2 + 3 + 4 - 1) / 10) and p == pytest.approx(0.25)
    assert wilcoxon_signed_rank([0.0, 0.0, 0.0])[1:] == (1.0, 0.0, "all paired differences are zero")
    assert cohens_d([1, 2, 3], [1, 2, 3]) == 0.0
    assert cohens_d([2, 3, 4], [1, 2, 3]) == pytest.approx(1.0)
    assert np.isnan(cohens_d([1, 1], [2, 2]))


def test_holm():
    np.testing.assert_allclose(holm([0.01, 0.04, np.nan, 0.03]), [0.03, 0.06, np.nan, 0.06])
    assert np.isnan(holm([np.nan])).all()


def test_small_groups_give_nan_with_reason():
    per_model = pd.DataFrame(
        {"model": ["r", "n"], "group": ["a", "b"], "dataset": ["d", "d"], "depth_bin": [ALL, ALL],
         "sparsity": [0.1, 0.2], "variance_entropy": [0.5, 0.6], "orthogonality": [0.3, 0.4]}
    )
    stats = group_stats(per_model, n_boot=100)
    assert len(stats) == 3 and stats["p_value"].isna().all() and stats["ci_low"].isna().all()
    assert stats["note"].str.contains("too few models").all()
    assert (stats["diff"] == per_model["sparsity"][0] - per_model["sparsity"][1]).iloc[0]
    rho, p, n, note = spearman([1, 2], [2, 3])
    assert np.isnan(rho) and n == 2 and "too few" in note
    assert "constant" in spearman([1, 1, 1], [1, 2, 3])[3]


def test_accuracy_correlations():
    per_model = pd.DataFrame(
        {"model": list("abcdef"), "group": ["a"] * 6, "dataset": ["d"] * 6, "sparsity": [6, 5, 4, 3, 2, 1.0],
         "variance_entropy": [1, 2, 3, 4, 5, 6.0], "orthogonality": [1, 1, 1, 1, 1, 1.0]}
    )
    models = pd.DataFrame({"model": list("abcdef"), "robust_acc": [0.1, 0.2, 0.3, 0.4, 0.5, np.nan]})
    corr = accuracy_correlations(per_model, models, {"a": "robust", "b": "normal"})
    row = corr[(corr["population"] == "robust") & (corr["metric"] == "variance_entropy")].iloc[0]
    assert row["rho"] == pytest.approx(1.0) and row["n"] == 5  # unknown accuracy left out
    assert corr[(corr["population"] == "robust") & (corr["metric"] == "sparsity")]["rho"].iloc[0] == pytest.approx(-1)
    assert "clean_acc" not in set(corr["accuracy"])
    assert corr[corr["population"] == "normal"]["note"].str.contains("too few").all()


# ---------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def middle_differs():
    models, layers, weights = build(differ=(MIDDLE,))
    return models, layers, weights, compare(models, layers, chunker(weights), n_boot=2000)


def test_stats_flag_only_the_differing_bin(middle_differs):
    *_, res = middle_differs
    target = "(0.4, 0.5]"
    for metric in ("sparsity", "variance_entropy", "orthogonality"):
        cells = res.stats[(res.stats["metric"] == metric) & (res.stats["depth_bin"] != ALL)]
        flagged = set(cells.loc[cells["significant"], "depth_bin"])
        assert flagged == {target}, metric
        others = cells[cells["depth_bin"] != target]
        assert (others["p_value"] == 1.0).all() and (others["diff"] == 0).all()
        assert (others["ci_low"] < 0).all() and (others["ci_high"] > 0).all()
    cell = res.stats[(res.stats["metric"] == "sparsity") & (res.stats["depth_bin"] == target)].iloc[0]
    assert cell["diff"] < 0 and cell["ci_high"] < 0 and cell["rank_biserial"] == -1.0
    assert len(cell["values_a"]) == 8 and len(cell["values_b"]) == 8
    assert cell["mean_b"] == pytest.approx(0.5, abs=0.01)


def test_shift_large_in_differing_bin_zero_elsewhere(middle_differs):
    *_, res = middle_differs
    s = res.shift.set_index("depth_bin")["divergence"]
    assert s["(0.4, 0.5]"] > 1.0
    others = s.drop(["(0.4, 0.5]", ALL])
    assert len(others) == 10 and (others == 0.0).all()
    assert s[ALL] > 0
    assert res.settings["shift"]["shared_models_counted"] == "once"


def test_shift_small_elsewhere_with_independent_draws():
    models, layers, weights = build(differ=(MIDDLE,), shared_elsewhere=False, n_models=6, seed=5)
    memb = split_groups(models).membership.to_dict()
    res = distribution_shift(layers, memb, chunker(weights), procedure="per_bin")
    s = res.table.set_index("depth_bin")["divergence"]
    target = s["(0.4, 0.5]"]
    others = s.drop(["(0.4, 0.5]", ALL])
    assert target > 1.0 and (others > 0).all() and others.max() < 0.2 * target


def test_identical_groups_zero_kl_no_difference():
    models, layers, weights = build(identical=True, n_models=5)
    res = compare(models, layers, chunker(weights), n_boot=500)
    assert (res.shift["divergence"] == 0.0).all() and len(res.shift) == 12
    assert (res.shift_components["kl_sym"] == 0.0).all()
    assert not res.stats["significant"].any()
    assert (res.stats["p_value"] == 1.0).all() and (res.stats["diff"] == 0.0).all()
    assert set(res.claims["verdict"]) <= {"inconclusive", "contradicted"}
    assert not (res.claims["verdict"] == "supported").any()


@pytest.mark.parametrize("range_mode", ["global", "per_component"])
@pytest.mark.parametrize("known_max", [True, False])
def test_streamed_shift_equals_in_memory(range_mode, known_max):
    models, layers, weights = build(differ=(0, MIDDLE), n_models=3, seed=2)
    if not known_max:
        layers = layers.drop(columns=["weight_max_abs"])  # forces the extra max pass
    memb = split_groups(models).membership.to_dict()
    res = distribution_shift(layers, memb, chunker(weights, chunk_size=37), range_mode=range_mode, procedure="per_bin")
    assert not res.notes
    layer_of = {ALL: None, FIRST: "conv0", "(0.4, 0.5]": "conv5", "(0.9, 1.0]": "conv10"}
    for bin_, layer in layer_of.items():
        sel = (lambda k: True) if layer is None else (lambda k, layer=layer: k[1] == layer)
        div, evr, vt, own = reference_shift(weights, memb, sel, range_mode)
        row = res.table[res.table["depth_bin"] == bin_].iloc[0]
        assert abs(row["divergence"] - div) < 1e-9, bin_
        basis = res.bases[("all", bin_)]
        np.testing.assert_allclose(basis.explained_variance_ratio, evr, atol=1e-9)
        np.testing.assert_allclose(basis.matrix, vt, atol=1e-9)
        for g in ("a", "b"):
            cum = res.own_pca[(res.own_pca["depth_bin"] == bin_) & (res.own_pca["group"] == g)]["cum_evr"]
            np.testing.assert_allclose(cum, own[g], atol=1e-9)
        hist = res.histograms[("all", bin_)]
        assert hist.counts.shape == (2, 9, 70)
        assert hist.counts[0].sum(axis=1)[0] == row["n_a"] and hist.counts[1, 0].sum() == row["n_b"]


def test_model_weights_repeat_a_models_filters():
    models, layers, weights = build(differ=(MIDDLE,), n_models=3, seed=4)
    memb = split_groups(models).membership.to_dict()
    rep = {"cifar10-nor0": 3}
    res = distribution_shift(layers, memb, chunker(weights), model_weights=rep, by_bin=False, procedure="per_bin")
    div, *_ = reference_shift(weights, memb, repeat=rep)
    assert len(res.table) == 1 and abs(res.table["divergence"].iloc[0] - div) < 1e-9


def test_shift_edge_cases():
    models, layers, weights = build(n_models=2)
    memb = {"cifar10-rob0": "a", "cifar10-nor0": "b"}
    # group b's first layer is all zero: every filter sparse, the bin cannot be compared
    weights = dict(weights)
    weights[("cifar10-nor0", "conv0")] = np.zeros_like(weights[("cifar10-nor0", "conv0")])
    layers = layers.drop(columns=["weight_max_abs"])
    res = distribution_shift(layers, memb, chunker(weights), procedure="per_bin")
    first = res.table[res.table["depth_bin"] == FIRST].iloc[0]
    assert np.isnan(first["divergence"]) and "group b" in first["note"]
    assert any("the layers table says" in n for n in res.notes)  # stale n_nonsparse spotted
    with pytest.raises(FilterlensError, match="expected"):
        distribution_shift(layers, memb, lambda m, l: iter([np.zeros((4, 5, 5))]))


def test_scaled_nonsparse_chunk_matches_metrics():
    rng = np.random.default_rng(3)
    w = rng.normal(size=(64, 9)).astype(np.float32)
    w[:10] *= 0.005
    linf = np.abs(w).max(axis=1)
    w[10] *= (0.01 * linf.max()) / linf[10]  # exactly on the threshold: sparse (<=)
    m = float(np.abs(w).max())
    pieces = [scaled_nonsparse_chunk(w[i : i + 7], m) for i in range(0, 64, 7)]
    np.testing.assert_array_equal(np.concatenate(pieces), scaled_nonsparse(w))
    assert len(np.concatenate(pieces)) == int((~sparse_mask(w)).sum())
    assert symmetric_kl(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0


def test_per_dataset_scopes():
    models, layers, weights = build(datasets=("cifar10", "cifar100"), n_models=4, differ=(MIDDLE,))
    res = compare(models, layers, chunker(weights), n_boot=300)
    assert list(dict.fromkeys(res.stats["dataset"])) == ["cifar10", "cifar100", "all"]
    assert list(dict.fromkeys(res.shift["dataset"])) == ["cifar10", "cifar100", "all"]
    assert set(res.correlations["dataset"]) == {"cifar10", "cifar100", "all"}
    all_cell = res.stats[(res.stats["dataset"] == "all") & (res.stats["metric"] == "sparsity") & (res.stats["depth_bin"] == ALL)]
    assert all_cell["n_a"].iloc[0] == 8


# ---------------------------------------------------------------------------- claims
def test_claims_on_data_where_first_and_last_layers_differ():
    models, layers, weights = build(differ=(0, 10), n_models=6, seed=11)
    res = compare(models, layers, chunker(weights), pairs="auto", n_boot=500)
    assert res.settings["test"].startswith("wilcoxon")
    v = res.claims.set_index("claim")["verdict"]
    # group b's structured first and last layers are sparser and less diverse
    assert v["fewer_sparse_filters"] == "supported"
    assert v["more_diverse"] == "supported"
    assert v["more_diverse_deepest"] == "supported"
    assert v["first_layer_less_diverse"] == "contradicted"
    assert v["first_layer_sparser"] == "contradicted"
    assert v["shift_last_and_first"] == "supported"
    assert v["more_orthogonal"] == "inconclusive"  # orthogonality differs in 2 of 11 bins at most
    assert v["first_layer_thresholding"] == "inconclusive"
    assert v["shift_by_dataset"] == "inconclusive"  # one dataset only
    row = res.claims.set_index("claim").loc["fewer_sparse_filters"]
    assert "p=" in row["statistic"] and row["p_value"] < 0.05 and row["value"] < 0


def test_claim_shift_in_middle_is_contradicted(middle_differs):
    *_, res = middle_differs
    v = res.claims.set_index("claim")["verdict"]
    assert v["shift_last_and_first"] == "contradicted"


def test_claims_dataset_order_and_correlations():
    stats = pd.DataFrame(columns=["dataset", "metric", "depth_bin", "p_value", "p_adj", "significant", "diff", "test", "note"])
    corr = pd.DataFrame(columns=["dataset", "population", "metric", "accuracy", "n", "rho", "p_value", "note"])
    names = {"a": "robust", "b": "normal"}

    def verdict(divs):
        shift = pd.DataFrame({"dataset": list(divs), "depth_bin": [ALL] * len(divs), "divergence": list(divs.values())})
        c = evaluate_claims(stats, shift, corr, names)
        return c.set_index("claim").loc["shift_by_dataset", "verdict"]

    assert verdict({"CIFAR-10": 3.0, "cifar100": 2.0, "ImageNet-1k": 1.0}) == "supported"
    assert verdict({"cifar10": 1.0, "imagenet": 2.0}) == "contradicted"
    assert verdict({"cifar10": 1.0}) == "inconclusive"

    per_model = pd.DataFrame(
        {"model": list("abcdefgh"), "group": ["a"] * 8, "dataset": ["d"] * 8,
         "variance_entropy": np.arange(8.0), "sparsity": np.arange(8.0), "orthogonality": np.ones(8)}
    )
    models = pd.DataFrame({"model": list("abcdefgh"), "robust_acc": np.arange(8.0)})
    corr = accuracy_correlations(per_model, models, names)
    stats = pd.DataFrame({"dataset": ["d"], "metric": ["sparsity"], "depth_bin": [ALL], "p_value": [np.nan], "p_adj": [np.nan],
                          "significant": [False], "diff": [np.nan], "test": ["x"], "note": ["n/a"], "mean_a": [np.nan],
                          "mean_b": [np.nan], "ci_low": [np.nan], "ci_high": [np.nan], "n_a": [1], "n_b": [0]})
    c = evaluate_claims(stats, None, corr, names).set_index("claim")
    assert c.loc["robust_acc_vs_entropy", "verdict"] == "supported"
    assert c.loc["robust_acc_vs_sparsity", "verdict"] == "contradicted"
    assert c.loc["fewer_sparse_filters", "verdict"] == "inconclusive"
    assert c.loc["shift_by_dataset", "verdict"] == "inconclusive"


def test_to_json_holds_cells(middle_differs):
    *_, res = middle_differs
    data = json.loads(res.to_json())
    assert data["groups"]["a"]["name"] == "robust" and len(data["groups"]["a"]["models"]) == 8
    cell = next(s for s in data["stats"] if s["metric"] == "sparsity" and s["depth_bin"] == "(0.4, 0.5]")
    for key in ("mean_a", "mean_b", "diff", "ci", "p_value", "values_a", "values_b"):
        assert key in cell
    assert len(cell["ci"]) == 2 and cell["ci"][0] <= cell["diff"] <= cell["ci"][1]
    assert data["settings"]["bootstrap"]["n_boot"] == 2000
    assert {c["verdict"] for c in data["claims"]} <= {"supported", "contradicted", "inconclusive"}


def test_compare_without_filters_and_per_pair_counting():
    models, layers, weights = build(n_models=3)
    res = compare(models, layers, n_boot=200)
    assert res.shift.empty and res.shift_result is None
    assert any("not computed" in n for n in res.notes)
    assert (res.claims.set_index("claim").loc["shift_by_dataset", "verdict"]) == "inconclusive"
    res = compare(models, layers, chunker(weights), pairs="auto", count_shared="per_pair", n_boot=200, by_bin=False)
    assert res.settings["shift"]["shared_models_counted"] == "per_pair"
    assert list(res.shift["depth_bin"]) == [ALL]


def test_compare_ignores_other_kernel_sizes_and_transposed():
    models, layers, weights = build(n_models=3)
    extra = layers.iloc[[0]].assign(layer="shortcut", kernel_size="1x1", sparsity=0.99)
    trans = layers.iloc[[1]].assign(layer="up", transposed=True, sparsity=0.99)
    res1 = compare(models, layers, n_boot=200)
    res2 = compare(models, pd.concat([layers, extra, trans], ignore_index=True), n_boot=200)
    pd.testing.assert_frame_equal(res1.per_model, res2.per_model)


def test_compare_degenerate_inputs_do_not_crash():
    models, layers, weights = build(n_models=2)
    one_each = models[["model", "training"]].iloc[:2]  # no dataset, no accuracies, n = 1 per group
    res = compare(one_each, layers, chunker(weights), n_boot=100)
    assert (res.stats["dataset"] == "unknown").all() and res.stats["p_value"].isna().all()
    assert res.stats["note"].str.contains("too few models").all()
    assert res.correlations.empty
    tested = res.claims[~res.claims["claim"].str.startswith("shift")]
    assert (tested["verdict"] == "inconclusive").all()
    # the shift is descriptive and needs filters, not many models: it is still decided
    assert np.isfinite(res.shift["divergence"]).all()
    assert res.claims.set_index("claim").loc["shift_last_and_first", "verdict"] == "contradicted"
    res = compare(models, layers.assign(kernel_size="5x5"), chunker(weights), n_boot=100)
    assert res.stats.empty and res.shift.empty and any("no 3x3 layers" in n for n in res.notes)
    with pytest.raises(FilterlensError, match="lacks column"):
        compare(models, layers.drop(columns=["sparsity"]))


def test_filter_database_shaped_inputs():
    """Chunks as objects with a ``filters`` array and nullable integer columns, as FilterDB gives."""
    from types import SimpleNamespace

    models, layers, weights = build(n_models=3)
    plain = chunker(weights)

    def wrapped(model, layer):
        return (SimpleNamespace(filters=c) for c in plain(model, layer))

    db_layers = layers.assign(
        kernel_size=pd.array([3] * len(layers), dtype="Int64"),
        n_nonsparse=layers["n_nonsparse"].astype("Int64"),
    )
    db_layers.loc[0, "weight_max_abs"] = np.nan  # unknown: the layer maximum is streamed
    res_db = compare(models, db_layers, wrapped, n_boot=100)
    res = compare(models, layers, plain, n_boot=100)
    pd.testing.assert_frame_equal(res_db.shift, res.shift)
    assert not res_db.notes


def test_shuffled_null_separates_sampling_noise_from_real_shift():
    """Few filters inflate the histogram KL; the label-shuffled null measures that inflation."""
    from filterlens.analysis.shift import distribution_shift

    layers = pd.DataFrame({"model": ["a1", "b1"], "layer": ["conv", "conv"], "conv_depth": [0, 0],
                           "conv_depth_norm": [0.0, 0.0]})

    def shift(n, offset, seed=7):
        rng = np.random.default_rng(seed)
        f = {"a1": rng.normal(size=(n, 3, 3)), "b1": rng.normal(size=(n, 3, 3)) + offset * np.eye(3)}
        res = distribution_shift(layers, {"a1": "a", "b1": "b"}, lambda m, l: [f[m]], by_bin=False,
                                 procedure="per_bin")
        return res.table.iloc[0]

    # 48 filters (an RGB first layer of 16 channels) in 70 bins: two samples of ONE distribution
    # already give a divergence near 10, and the null is of the same size.
    small = shift(48, 0.0)
    assert small["divergence"] > 3 and abs(small["excess"]) < 0.3 * small["divergence"]
    # With enough filters the null is small, and a real difference stands far above it.
    same, moved = shift(2000, 0.0), shift(2000, 2.0)
    assert same["divergence_null"] < 0.2 and abs(same["excess"]) < 0.05
    assert moved["excess"] > 0.9 * moved["divergence"] > 1.0


# ------------------------------------------------------------------ the paper's shift (default)
def reference_paper_shift(weights, membership, datasets, repeat, n_bins=70):
    """science.md's procedure the plain way, all filters in memory (numpy only).

    One basis over every model (each once), one scalar range over every projected filter
    (sparse ones included), density histograms with epsilon on that scale, scipy's entropy."""
    import scipy.stats

    def scale(x):
        d = np.abs(x).max(axis=1)
        return x / np.where(d == 0, 1, d)[:, None]

    def nonsparse(w):
        x = w.reshape(-1, 9).astype(np.float64)
        return x[~(np.abs(x).max(axis=1) <= np.abs(x).max() / 100)]

    pooled = np.concatenate([scale(nonsparse(w)) for (m, _), w in weights.items() if m in membership])
    mu, vt, evr = _pca_svd(pooled)
    every = np.concatenate([scale(w.reshape(-1, 9).astype(np.float64)) for (m, _), w in weights.items()
                            if m in membership])
    proj = (every - mu) @ vt.T
    rng_ = (proj.min(), proj.max())
    out = {}
    for ds in set(datasets.values()):
        parts = {"a": [], "b": []}
        for (m, _), w in weights.items():
            if m in membership and datasets[m] == ds:
                parts[membership[m]].append(np.tile(scale(nonsparse(w)), (repeat.get(m, 1), 1)))
        ca, cb = ((np.concatenate(parts[g]) - mu) @ vt.T for g in ("a", "b"))
        kl = 0.0
        for c in range(9):
            p = np.histogram(ca[:, c], n_bins, rng_, density=True)[0]
            q = np.histogram(cb[:, c], n_bins, rng_, density=True)[0]
            p, q = np.where(p == 0, HIST_EPS, p), np.where(q == 0, HIST_EPS, q)
            kl += evr[c] * (scipy.stats.entropy(p / p.sum(), q / q.sum()) + scipy.stats.entropy(q / q.sum(), p / p.sum()))
        out[ds] = kl
    return out, evr


def test_paper_shift_is_the_default_and_equals_plain_reference():
    models, layers, weights = build(differ=(0, MIDDLE), n_models=3, seed=2)
    models = models.copy()
    models.loc[models.index[:2], "dataset"] = "other"  # two datasets: the basis and range stay shared
    memb = split_groups(models).membership.to_dict()
    ds_of = models.set_index("model")["dataset"].to_dict()
    rep = {next(m for m in memb if memb[m] == "b"): 3}
    res = distribution_shift(layers, memb, chunker(weights, chunk_size=29), datasets=ds_of, model_weights=rep)
    ref, evr = reference_paper_shift(weights, memb, ds_of, rep)
    table = res.table.set_index(["dataset", "depth_bin"])
    for ds, kl in ref.items():
        assert abs(table.loc[(ds, ALL), "divergence"] - kl) < 1e-9
    assert res.settings["procedure"] == "paper"
    bases = list(res.bases.values())
    assert all(b is bases[0] for b in bases)  # one basis for every scope
    np.testing.assert_allclose(bases[0].explained_variance_ratio, evr, atol=1e-12)
    assert table["range_low"].nunique() == 1 and table["range_high"].nunique() == 1  # one scalar range
    assert table["divergence_null"].isna().all()  # the null belongs to the per-bin variant


def test_compare_names_its_procedure_and_keeps_the_per_bin_variant():
    models, layers, weights = build(differ=(MIDDLE,), n_models=3, seed=4)
    paper = compare(models, layers, chunker(weights), pairs="auto", n_boot=100)
    assert paper.settings["shift"]["procedure"] == "paper"
    assert paper.settings["shift"]["shared_models_counted"] == "per_pair"
    assert "paper" in paper.settings["shift"]["procedure_name"]
    variant = compare(models, layers, chunker(weights), pairs="auto", n_boot=100, shift_procedure="per_bin",
                      count_shared="once")
    assert variant.settings["shift"]["procedure"] == "per_bin"
    assert np.isfinite(variant.shift["divergence_null"]).all() and "excess" in variant.shift
    with pytest.raises(FilterlensError, match="shift_procedure"):
        compare(models, layers, chunker(weights), shift_procedure="bogus")


def test_compare_reports_the_pca_spectrum_entropy():
    """science.md's pooled PCA spectrum entropy: layers pooled before one PCA, each model once."""
    import scipy.stats

    models, layers, weights = build(differ=(MIDDLE,), n_models=3, seed=6)
    res = compare(models, layers, chunker(weights), n_boot=100)
    memb = split_groups(models).membership.to_dict()

    def plain(ms):
        x = []
        for (m, _), w in weights.items():
            if m in ms:
                f = w.reshape(-1, 9).astype(np.float64)
                d = np.abs(f).max(axis=1)
                keep = ~(d <= np.abs(f).max() / 100)
                x.append(f[keep] / d[keep][:, None])
        return scipy.stats.entropy(_pca_svd(np.concatenate(x))[2], base=10)

    table = res.pca_entropy.set_index(["scope", "name"])
    some = next(iter(memb))
    assert abs(table.loc[("model", some), "pca_entropy"] - plain({some})) < 1e-9
    assert abs(table.loc[("group", "a"), "pca_entropy"] - plain({m for m, g in memb.items() if g == "a"})) < 1e-9
    assert abs(table.loc[("pooled", "all"), "pca_entropy"] - plain(set(memb))) < 1e-9
    assert "pca_entropy" in res.to_dict()
