"""Layer sparsity: the share of a layer's filters that are (near) zero."""

from __future__ import annotations

import numpy as np

from .filters import DEFAULT_THRESHOLD, as_filters, sparse_mask


def sparsity(weight: np.ndarray, threshold: float = DEFAULT_THRESHOLD, inclusive: bool = True) -> float:
    """Share of sparse filters in one layer.

    ``sparsity = #{filters w : max|w| <= threshold * max|W|} / #filters``
    (``<`` instead of ``<=`` when ``inclusive=False``). An empty layer is NaN.
    Aggregates over several layers must divide summed counts, never average these ratios.
    """
    filters = as_filters(weight)
    if filters.shape[0] == 0:
        return float("nan")
    return float(sparse_mask(filters, threshold, inclusive).mean())
