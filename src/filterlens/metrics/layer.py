"""All per-layer numbers at once, sharing the intermediate results."""

from __future__ import annotations

import numpy as np

from .entropy import variance_entropy_of_scaled
from .filters import DEFAULT_THRESHOLD, as_filters, filter_linf, sparse_mask
from .orthogonality import orthogonality

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
    "filter_l2_mean",
    "notes",
]


def _undefined(n_filters: int, note: str) -> dict:
    return {
        "n_filters": n_filters,
        "n_sparse": 0,
        "n_nonsparse": 0,
        "sparsity": np.nan,
        "variance_entropy": np.nan,
        "orthogonality": np.nan,
        "weight_max_abs": np.nan,
        "filter_linf_mean": np.nan,
        "filter_l2_mean": np.nan,
        "notes": note,
    }


def measure_weight(
    weight: np.ndarray, threshold: float = DEFAULT_THRESHOLD, inclusive: bool = True
) -> dict:
    """Sparsity, variance entropy, orthogonality, filter norms and counts of one layer.

    Same definitions as :func:`~filterlens.metrics.sparsity`,
    :func:`~filterlens.metrics.variance_entropy` and :func:`~filterlens.metrics.orthogonality`,
    computed in one pass over the weight. Undefined values are NaN and ``notes`` says why
    (``;``-separated). A weight with NaN or Inf values is not measured at all.
    """
    filters = as_filters(weight)
    n = filters.shape[0]
    if n == 0:
        return _undefined(0, "empty layer")
    if not np.isfinite(filters).all():
        return _undefined(n, "non-finite weights (NaN or Inf)")

    notes = []
    linf = filter_linf(filters)
    sparse = sparse_mask(filters, threshold, inclusive, linf=linf)
    n_sparse = int(sparse.sum())
    keep = ~sparse
    scaled = filters[keep].astype(np.float64)
    scaled /= linf[keep].astype(np.float64)[:, None]
    ve = variance_entropy_of_scaled(scaled)
    if np.isnan(ve):
        notes.append(f"variance_entropy undefined: {n - n_sparse} non-sparse filter(s), need 2")
    ortho = orthogonality(weight)
    if np.isnan(ortho):
        notes.append("orthogonality undefined: 1 output channel")
    l2 = np.sqrt(np.einsum("ij,ij->i", filters, filters, dtype=np.float64))
    return {
        "n_filters": n,
        "n_sparse": n_sparse,
        "n_nonsparse": n - n_sparse,
        "sparsity": n_sparse / n,
        "variance_entropy": ve,
        "orthogonality": ortho,
        "weight_max_abs": float(linf.max()),
        "filter_linf_mean": float(linf.mean(dtype=np.float64)),
        "filter_l2_mean": float(l2.mean()),
        "notes": "; ".join(notes),
    }
