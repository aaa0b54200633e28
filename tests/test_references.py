"""References that share no code with what they check: constants written out, thresholds hit
exactly in float64, depths counted by hand on drawn graphs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from filterlens.analysis.shift import HIST_EPS, histogram_probabilities, scaled_nonsparse_chunk, symmetric_kl
from filterlens.metrics import measure_weight, scaled_nonsparse, sparse_mask
from filterlens.sources.depth import assign_conv_depths, longest_path_depths, topological_order
from filterlens.types import ConvLayer

# --- constants ----------------------------------------------------------------------------------

FLOAT32_EPS = 1.1920929e-07  # docs/definitions.md: empty bins get float32's machine epsilon, 2**-23


def test_histogram_epsilon_is_float32_machine_epsilon() -> None:
    assert HIST_EPS == pytest.approx(FLOAT32_EPS, rel=1e-7)
    assert HIST_EPS == 2.0**-23


def test_histogram_probabilities_by_hand() -> None:
    # counts 0, 1, 3: p = 0, 1/4, 3/4; the empty bin becomes eps; renormalised by 1 + eps.
    got = histogram_probabilities(np.array([0.0, 1.0, 3.0]))
    want = np.array([FLOAT32_EPS, 0.25, 0.75]) / (1 + FLOAT32_EPS)
    np.testing.assert_allclose(got, want, rtol=1e-7)
    assert got.sum() == pytest.approx(1.0, abs=1e-15)


def test_paper_density_probabilities_by_hand() -> None:
    """The paper's notebook puts epsilon on the density scale (np.histogram density=True)."""
    from filterlens.analysis.paper import density_probabilities

    # counts 0, 2, 6 over bins of width 0.5, 0.5, 1: density = count / width / 8 = 0, 0.5, 0.75;
    # the empty bin becomes eps on that scale, then all are divided by 1.25 + eps.
    got = density_probabilities(np.array([0.0, 2.0, 6.0]), np.array([0.0, 0.5, 1.0, 2.0]))
    want = np.array([FLOAT32_EPS, 0.5, 0.75]) / (1.25 + FLOAT32_EPS)
    np.testing.assert_allclose(got, want, rtol=1e-7)
    # (epsilon on the probability scale would give 0, 0.25, 0.75: a different distribution)
    assert abs(got[1] - 0.25) > 0.1


def test_symmetric_kl_by_hand() -> None:
    # p = (1/2, 1/2), q = (1/4, 3/4): KL(p||q) = 1/2 ln 2 + 1/2 ln(2/3); KL(q||p) = 1/4 ln(1/2) + 3/4 ln(3/2)
    p, q = np.array([0.5, 0.5]), np.array([0.25, 0.75])
    want = 0.5 * math.log(2) + 0.5 * math.log(2 / 3) + 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert float(symmetric_kl(p, q)) == pytest.approx(want, rel=1e-12)
    assert float(symmetric_kl(p, p)) == 0.0


# --- thresholds hit exactly (float64) -------------------------------------------------------------

def _plain_nonsparse(filters: np.ndarray, layer_max: float, threshold: float, inclusive: bool) -> np.ndarray:
    """Loop over filters: keep ``max|w| > t`` (``>=`` when not inclusive), scale by ``max|w|``."""
    t = threshold * layer_max
    rows = []
    for f in filters.reshape(len(filters), -1):
        top = max(abs(float(v)) for v in f)
        if (top > t) if inclusive else (top >= t):
            rows.append([float(v) / top for v in f])
    return np.array(rows, dtype=np.float64).reshape(-1, filters[0].size)


def _layer_on_the_threshold() -> np.ndarray:
    # Layer max 4.0 (a power of two), so 0.01 * 4.0 is float64(0.01) scaled exactly: the filter
    # with max 0.04 below sits on the threshold however the product is formed.
    w = np.zeros((5, 3, 3), dtype=np.float64)
    w[0, 1, 1] = 4.0
    w[1, 0, 0] = -0.01 * 4.0   # on the threshold
    w[1, 2, 2] = 0.003
    w[2, 0, 2] = 0.02          # below
    w[3, 1, 0] = 0.5
    w[3, 2, 1] = -0.25
    w[4, 0, 1] = np.nextafter(0.04, 1.0)  # the next float64 above: never sparse
    return w


@pytest.mark.parametrize("inclusive", [True, False])
def test_scaled_nonsparse_chunk_on_the_threshold(inclusive: bool) -> None:
    w = _layer_on_the_threshold()
    assert abs(w[1]).max() == 0.01 * 4.0
    want = _plain_nonsparse(w, 4.0, 0.01, inclusive)
    # '<=' (the paper) drops the on-threshold filter, '<' keeps it: 3 vs 4 kept of 5.
    assert len(want) == (3 if inclusive else 4)
    np.testing.assert_array_equal(scaled_nonsparse_chunk(w, 4.0, 0.01, inclusive), want)
    # chunked: the layer maximum is passed in, so a chunk without the maximum gives the same rows
    pieces = [scaled_nonsparse_chunk(w[i:i + 2], 4.0, 0.01, inclusive) for i in range(0, 5, 2)]
    np.testing.assert_array_equal(np.concatenate(pieces), want)
    np.testing.assert_array_equal(scaled_nonsparse(w.reshape(5, 9), 0.01, inclusive), want)


def test_sparse_mask_and_layer_metrics_on_the_threshold() -> None:
    w = _layer_on_the_threshold()
    assert sparse_mask(w.reshape(5, 9)).tolist() == [False, True, True, False, False]
    assert sparse_mask(w.reshape(5, 9), inclusive=False).tolist() == [False, False, True, False, False]
    layer = w.reshape(5, 1, 3, 3)
    assert measure_weight(layer)["n_sparse"] == 2
    assert measure_weight(layer, inclusive=False)["n_sparse"] == 1


# --- depth on graphs counted by hand ---------------------------------------------------------------

def test_longest_path_on_a_drawn_graph() -> None:
    #   x -> a -> b -> c -> add -> d
    #   x ---------------> add           (a skip: the longest path wins, add = 4 not 1)
    #   x -> e -> f                      f also reads the weight node w (not from the input)
    preds = {"a": ["x"], "b": ["a"], "c": ["b"], "add": ["c", "x"], "d": ["add"], "e": ["x"], "f": ["e", "w"]}
    order = topological_order(["d", "add", "c", "b", "a", "x", "w", "e", "f"], preds)
    assert order.index("x") < order.index("a") < order.index("add") < order.index("d")
    depth = longest_path_depths(order, preds, ["x"])
    assert depth == {"x": 0, "a": 1, "b": 2, "c": 3, "add": 4, "d": 5, "e": 1, "f": 2}
    with pytest.raises(ValueError, match="cycle"):
        topological_order(["p", "q"], {"p": ["q"], "q": ["p"]})


def test_conv_depth_ranks_distinct_levels() -> None:
    # raw depths 1, 1, 3, 7 and one unused layer: levels {1, 3, 7} -> ranks 0, 0, 1, 2; norm rank / 2
    w = np.zeros((1, 1, 3, 3), np.float32)
    layers = [ConvLayer(n, w, depth=d) for n, d in (("stem", 1), ("short", 1), ("mid", 3), ("last", 7), ("unused", None))]
    assign_conv_depths(layers)
    assert [(l.conv_depth, l.conv_depth_norm) for l in layers] == [(0, 0.0), (0, 0.0), (1, 0.5), (2, 1.0), (None, None)]
    single = [ConvLayer("only", w, depth=5)]
    assign_conv_depths(single)
    assert (single[0].conv_depth, single[0].conv_depth_norm) == (0, 0.0)
