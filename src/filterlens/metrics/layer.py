"""All per-layer numbers at once, sharing the intermediate results."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .entropy import (
    default_threads,
    entropy_from_variances,
    layer_max_abs,
    linf_and_moments,
    variances_from_moments,
)
from .filters import DEFAULT_THRESHOLD, as_filters
from .orthogonality import orthogonality_from_raw_gram, raw_channel_gram

#: Column order of :func:`measure_weight`'s result.
LAYER_METRIC_COLUMNS = [
    "n_filters",
    "n_sparse",
    "n_nonsparse",
    "sparsity",
    "variance_entropy",
    "orthogonality",
    "weight_max_abs",
    "filter_linf_mean",
    "channel_l2_mean",
    "weight_l2",
    "notes",
]


def _undefined(n_filters: int, note: str) -> dict:
    row = {c: np.nan for c in LAYER_METRIC_COLUMNS}
    row.update(n_filters=n_filters, n_sparse=0, n_nonsparse=0, notes=note)
    return row


@dataclass(frozen=True)
class FilterPass:
    """What one pass over a layer's filters leaves for the rest of :func:`measure_weights`."""

    n_filters: int
    max_abs: float
    n_kept: int
    total: np.ndarray  # column sums of the kept, scaled filters
    xtx: np.ndarray  # X^T X of the kept, scaled filters (float64)
    channel_max: np.ndarray  # max |w| per output channel
    linf_mean: float


def filter_pass(
    weight: np.ndarray, threshold: float = DEFAULT_THRESHOLD, inclusive: bool = True
) -> FilterPass | str:
    """``max|W|``, then the fused pass of :func:`~filterlens.metrics.entropy.linf_and_moments`
    over the filters of one layer. Returns a note instead when the layer cannot be measured."""
    w = np.asarray(weight)
    filters = as_filters(w)
    if filters.shape[0] == 0:
        return "empty layer"
    if np.iscomplexobj(w):  # the real part alone is not the filter: refuse rather than guess
        return f"complex weights ({w.dtype}): not measured"
    m = layer_max_abs(w)
    if not np.isfinite(m):  # any NaN or Inf propagates into the max
        return "non-finite weights (NaN or Inf)"
    # m = 0: every filter is zero, and zero filters are always sparse (see linf_and_moments).
    fm = linf_and_moments(filters, np.float64(threshold) * m, inclusive)
    return FilterPass(
        n_filters=filters.shape[0],
        max_abs=m,
        n_kept=fm.n_kept,
        total=fm.total,
        xtx=fm.xtx,
        channel_max=fm.linf.reshape(w.shape[0], -1).max(axis=1),
        linf_mean=fm.linf_sum / filters.shape[0],
    )


def finish_layer(weight: np.ndarray, fp: FilterPass | str) -> dict:
    """The metrics of one layer from its :func:`filter_pass` and its channel Gram product."""
    w = np.asarray(weight)
    if isinstance(fp, str):
        return _undefined(as_filters(w).shape[0], fp)
    notes = []
    if fp.n_kept >= 2:
        ve = entropy_from_variances(variances_from_moments(fp.n_kept, fp.total, fp.xtx))
    else:
        ve = float("nan")
        notes.append(f"variance_entropy undefined: {fp.n_kept} non-sparse filter(s), need 2")
    raw = raw_channel_gram(w, channel_max=fp.channel_max)
    sq = np.clip(np.diagonal(raw).astype(np.float64), 0.0, None)
    if w.shape[0] >= 2:
        ortho = orthogonality_from_raw_gram(raw)
    else:
        ortho = float("nan")
        notes.append("orthogonality undefined: 1 output channel")
    n, n_sparse = fp.n_filters, fp.n_filters - fp.n_kept
    return {
        "n_filters": n,
        "n_sparse": n_sparse,
        "n_nonsparse": n - n_sparse,
        "sparsity": n_sparse / n,
        "variance_entropy": ve,
        "orthogonality": ortho,
        "weight_max_abs": fp.max_abs,
        "filter_linf_mean": fp.linf_mean,
        "channel_l2_mean": float(np.sqrt(sq).mean()),
        "weight_l2": float(np.sqrt(sq.sum())),
        "notes": "; ".join(notes),
    }


def measure_weights(
    weights: Sequence[np.ndarray],
    threshold: float = DEFAULT_THRESHOLD,
    inclusive: bool = True,
    threads: int | None = None,
) -> list[dict]:
    """:func:`measure_weight` of every layer in ``weights``, in order.

    Two phases: first the filter passes of all layers, spread over ``threads`` (default
    :func:`~filterlens.metrics.entropy.default_threads`) with one layer per task, then the
    Gram products, which BLAS threads itself. Keeping the phases apart matters: BLAS worker
    threads spin for a while after each product and would steal the cores from a filter
    pass started right after one. Each layer is measured by one thread, so the results do
    not depend on the thread count.
    """
    weights = list(weights)
    workers = min(threads or default_threads(), len(weights))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:  # the compiled pass releases the GIL
            passes = list(pool.map(lambda w: filter_pass(w, threshold, inclusive), weights))
    else:
        passes = [filter_pass(w, threshold, inclusive) for w in weights]
    return [finish_layer(w, fp) for w, fp in zip(weights, passes)]


def measure_weight(
    weight: np.ndarray, threshold: float = DEFAULT_THRESHOLD, inclusive: bool = True
) -> dict:
    """Sparsity, variance entropy, orthogonality, norms and counts of one layer.

    Same definitions as :func:`~filterlens.metrics.sparsity`,
    :func:`~filterlens.metrics.variance_entropy` and :func:`~filterlens.metrics.orthogonality`,
    sharing the work: ``max|W|`` first (a fast contiguous reduction, so the sparsity threshold
    is known), then one fused, cache-blocked pass gives the per-filter l-inf norms, the sparse
    count and the float64 moments of the scaled non-sparse filters (:func:`filter_pass`), and
    one Gram product gives orthogonality and, from its diagonal, the channel norms
    (:func:`finish_layer`).

    Norms: ``weight_max_abs = max|W|``, ``filter_linf_mean`` = mean over filters of ``max|w|``,
    ``channel_l2_mean`` = mean over output channels of ``||W[o]||_2``, ``weight_l2 = ||W||_F``.
    Undefined values are NaN and ``notes`` says why (``;``-separated). A weight with NaN or
    Inf values is not measured at all.
    """
    return finish_layer(weight, filter_pass(weight, threshold, inclusive))
