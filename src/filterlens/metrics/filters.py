"""Filter-level building blocks shared by the metrics: views, norms, the sparse mask.

All functions are pure and work on numpy arrays. A layer weight has shape
``(a, b, kh, kw)``; its filters are the ``a * b`` slices ``weight[i, j]``.
"""

from __future__ import annotations

import numpy as np

#: The paper's sparsity threshold: 1 % of the layer's largest absolute weight.
DEFAULT_THRESHOLD = 0.01


def as_filters(weight: np.ndarray) -> np.ndarray:
    """Return the filters of a 4-D layer weight as an ``(n, kh*kw)`` array (a view when possible)."""
    weight = np.asarray(weight)
    if weight.ndim != 4:
        raise ValueError(f"expected a 4-D conv weight, got shape {weight.shape}")
    a, b, kh, kw = weight.shape
    return weight.reshape(a * b, kh * kw)


def filter_linf(filters: np.ndarray) -> np.ndarray:
    """Per-filter l-inf norm ``max |w|`` of an ``(n, k)`` filter matrix.

    Reduces column by column: numpy's reduction along a short last axis is ~15x slower
    than ``k`` element-wise passes over contiguous-stride columns.
    """
    n, k = filters.shape
    if n == 0 or k == 0:
        return np.zeros(n, dtype=filters.dtype)
    out = np.abs(filters[:, 0])
    for j in range(1, k):
        np.maximum(out, np.abs(filters[:, j]), out=out)
    return out


def sparse_mask(
    filters: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    inclusive: bool = True,
    linf: np.ndarray | None = None,
) -> np.ndarray:
    """Boolean mask of the sparse filters of one layer.

    A filter ``w`` is sparse when ``max|w| <= threshold * m`` with ``m = max|W|`` over the
    whole layer (``inclusive=True``, the paper's definition), or ``< threshold * m``
    (``inclusive=False``, torchconvquality's). In a layer whose weights are all zero
    (``m = 0``) every filter is sparse under both rules.

    ``linf`` may pass precomputed per-filter l-inf norms.
    """
    if linf is None:
        linf = filter_linf(filters)
    if linf.size == 0:
        return np.zeros(0, dtype=bool)
    m = float(linf.max())
    if m == 0.0:
        return np.ones(linf.shape, dtype=bool)
    # Compare in float64: a float32 threshold would round 0.01 * m and move the boundary.
    t = np.float64(threshold) * m
    linf = linf.astype(np.float64, copy=False)
    return linf <= t if inclusive else linf < t


def scaled_nonsparse(
    filters: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    inclusive: bool = True,
) -> np.ndarray:
    """The non-sparse filters, each divided by its own l-inf norm, as float64 ``(n, k)``.

    Steps 1-2 of variance entropy and of the distribution-shift measure.
    """
    linf = filter_linf(filters)
    keep = ~sparse_mask(filters, threshold, inclusive, linf=linf)
    kept = filters[keep].astype(np.float64)
    kept /= linf[keep].astype(np.float64)[:, None]
    return kept
