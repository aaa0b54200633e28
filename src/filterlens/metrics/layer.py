"""All per-layer numbers at once, sharing the intermediate results."""

from __future__ import annotations

import numpy as np

from .entropy import entropy_from_variances, layer_max_abs, linf_and_moments, variances_from_moments
from .filters import DEFAULT_THRESHOLD, as_filters
from .orthogonality import normalise_gram, orthogonality_from_gram, raw_channel_gram

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


def measure_weight(
    weight: np.ndarray, threshold: float = DEFAULT_THRESHOLD, inclusive: bool = True
) -> dict:
    """Sparsity, variance entropy, orthogonality, norms and counts of one layer.

    Same definitions as :func:`~filterlens.metrics.sparsity`,
    :func:`~filterlens.metrics.variance_entropy` and :func:`~filterlens.metrics.orthogonality`,
    sharing the work: ``max|W|`` first (a fast contiguous reduction, so the sparsity threshold
    is known), then one fused, cache-blocked pass gives the per-filter l-inf norms, the sparse
    count and the float64 moments of the scaled non-sparse filters, and one Gram product gives
    orthogonality and, from its diagonal, the channel norms.

    Norms: ``weight_max_abs = max|W|``, ``filter_linf_mean`` = mean over filters of ``max|w|``,
    ``channel_l2_mean`` = mean over output channels of ``||W[o]||_2``, ``weight_l2 = ||W||_F``.
    Undefined values are NaN and ``notes`` says why (``;``-separated). A weight with NaN or
    Inf values is not measured at all.
    """
    w = np.asarray(weight)
    filters = as_filters(w)
    n = filters.shape[0]
    if n == 0:
        return _undefined(0, "empty layer")
    m = layer_max_abs(w)
    if not np.isfinite(m):  # any NaN or Inf propagates into the max
        return _undefined(n, "non-finite weights (NaN or Inf)")

    notes = []
    # m = 0: every filter is sparse under both rules (threshold 0, inclusive).
    t = np.float64(threshold) * m
    linf, n_kept, total, xtx = linf_and_moments(filters, t, inclusive or m == 0)
    n_sparse = n - n_kept
    if n_kept >= 2:
        ve = entropy_from_variances(variances_from_moments(n_kept, total, xtx))
    else:
        ve = float("nan")
        notes.append(f"variance_entropy undefined: {n_kept} non-sparse filter(s), need 2")

    raw = raw_channel_gram(w, channel_max=linf.reshape(w.shape[0], -1).max(axis=1))
    sq = np.clip(np.diagonal(raw).astype(np.float64), 0.0, None)
    if w.shape[0] >= 2:
        ortho = orthogonality_from_gram(normalise_gram(raw))
    else:
        ortho = float("nan")
        notes.append("orthogonality undefined: 1 output channel")
    return {
        "n_filters": n,
        "n_sparse": n_sparse,
        "n_nonsparse": n - n_sparse,
        "sparsity": n_sparse / n,
        "variance_entropy": ve,
        "orthogonality": ortho,
        "weight_max_abs": m,
        "filter_linf_mean": float(linf.mean(dtype=np.float64)),
        "channel_l2_mean": float(np.sqrt(sq).mean()),
        "weight_l2": float(np.sqrt(sq.sum())),
        "notes": "; ".join(notes),
    }
