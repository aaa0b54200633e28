"""Variance entropy, the paper's measure of filter diversity."""

from __future__ import annotations

import math

import numpy as np

from .filters import DEFAULT_THRESHOLD, as_filters, filter_linf, sparse_mask

# Below this total variance the scaled filters (entries in [-1, 1]) are one pattern up to
# float32 rounding; the spectrum is then noise and the entropy is defined as 0.
_SAME_PATTERN_VARIANCE = 1e-14


#: Rows per block in the fused passes: a float64 block of 3x3 filters stays in L2 cache.
CHUNK_ROWS = 16384


def _accumulate(x: np.ndarray, scale: np.ndarray, xtx: np.ndarray, total: np.ndarray) -> None:
    """Add the moments of ``x / scale[:, None]`` (computed in float64) to ``xtx`` and ``total``."""
    y = x.astype(np.float64)
    y /= scale.astype(np.float64)[:, None]
    xtx += y.T @ y
    total += y.sum(axis=0)


def layer_max_abs(weight: np.ndarray) -> float:
    """``max |W|`` over a whole array: two contiguous reductions, no absolute-value copy."""
    w = np.asarray(weight)
    if w.size == 0:
        return 0.0
    return float(np.maximum(w.max(), -w.min()))  # NaN-propagating, unlike max()


def linf_and_moments(
    filters: np.ndarray,
    threshold_abs: float,
    inclusive: bool = True,
    chunk: int = CHUNK_ROWS,
) -> tuple[np.ndarray, int, np.ndarray, np.ndarray]:
    """One pass over ``filters`` (``n x k``) for everything variance entropy needs.

    Returns the per-filter l-inf norms, and the count, column sums and ``X^T X`` (float64) of
    the non-sparse filters scaled by their own l-inf norm. A filter is sparse when its norm is
    ``<= threshold_abs`` (``<`` when not ``inclusive``); sparse filters get scale 0.

    Each block is transposed once (``k x rows``, in the weights' precision) so that every
    reduction runs along contiguous memory, then widened to float64 and scaled in one pass into
    a ``(k + 1) x rows`` block whose last row is 1 for kept filters: one symmetric product
    ``Y Y^T`` gives ``X^T X``, the sums and the count together.
    """
    n, k = filters.shape
    linf = np.empty(n, dtype=filters.dtype)
    acc = np.zeros((k + 1, k + 1))
    t = np.float64(threshold_abs)
    rows = min(chunk, n)
    narrow = np.empty((k, rows), dtype=filters.dtype)  # buffers reused by every block
    wide = np.empty((k + 1, rows))
    for start in range(0, n, chunk):
        block = filters[start : start + chunk]
        m = block.shape[0]
        bt = narrow[:, :m]
        bt[...] = block.T  # transposed, still in the weights' precision (half the bytes of float64)
        lc = np.maximum(bt.max(axis=0), -bt.min(axis=0))
        linf[start : start + m] = lc
        lc = lc.astype(np.float64)
        keep = lc > t if inclusive else lc >= t
        keep &= lc > 0
        inv = np.divide(1.0, lc, out=np.zeros_like(lc), where=keep)
        y = wide[:, :m]
        np.multiply(bt, inv, out=y[:k])  # widen to float64 and scale in one pass
        y[k] = keep
        acc += y @ y.T
    return linf, int(round(acc[k, k])), acc[k, :k].copy(), acc[:k, :k].copy()


def scaled_moments(
    filters: np.ndarray, linf: np.ndarray, keep: np.ndarray | None = None, chunk: int = CHUNK_ROWS
) -> tuple[int, np.ndarray, np.ndarray]:
    """Count, column sums and ``X^T X`` (float64) of the rows of ``filters`` scaled by ``linf``.

    ``X`` is ``filters[keep] / linf[keep, None]``; it is built chunk by chunk (cache-sized
    float64 blocks) and never materialised whole.
    """
    k = filters.shape[1]
    xtx = np.zeros((k, k))
    total = np.zeros(k)
    count = 0
    for start in range(0, filters.shape[0], chunk):
        f = filters[start : start + chunk]
        scale = linf[start : start + chunk]
        if keep is not None:
            sel = keep[start : start + chunk]
            if not sel.all():
                f, scale = f[sel], scale[sel]
        _accumulate(f, scale, xtx, total)
        count += f.shape[0]
    return count, total, xtx


def variances_from_moments(n: int, total: np.ndarray, xtx: np.ndarray) -> np.ndarray:
    """Principal variances (descending) from the moments of :func:`scaled_moments`.

    ``cov = (X^T X - n mu mu^T) / (n - 1)``; its eigenvalues equal ``s**2 / (n - 1)`` for the
    singular values ``s`` of the centred matrix. Negative round-off is clipped to 0.
    """
    mu = total / n
    cov = (xtx - n * np.outer(mu, mu)) / (n - 1)
    return np.clip(np.linalg.eigvalsh(cov)[::-1], 0.0, None)


def principal_variances(x: np.ndarray) -> np.ndarray:
    """Variances along the principal axes of the rows of ``x`` (``n x k``), descending.

    Equal to ``s**2 / (n - 1)`` for the singular values ``s`` of the centred matrix, computed
    through the ``k x k`` covariance matrix in float64. Needs ``n >= 2``.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] < 2:
        raise ValueError("principal variances need at least 2 rows")
    n, total, xtx = scaled_moments(x, np.ones(x.shape[0]))
    return variances_from_moments(n, total, xtx)


def entropy10(values: np.ndarray) -> float:
    """Shannon entropy in base 10 of non-negative ``values`` normalised to sum to 1 (0 log 0 = 0).

    All-zero values give 0.
    """
    v = np.asarray(values, dtype=np.float64)
    total = v.sum()
    if total <= 0:
        return 0.0
    p = v[v > 0] / total
    return float(-(p * np.log10(p)).sum())


def entropy_from_variances(var: np.ndarray) -> float:
    """Variance entropy from principal variances: 0 for one pattern, else ``entropy10``."""
    if var.sum() <= _SAME_PATTERN_VARIANCE:
        return 0.0
    return entropy10(var)


def variance_entropy_of_scaled(scaled: np.ndarray) -> float:
    """Variance entropy of already scaled, non-sparse filters (``n x k``); NaN when ``n < 2``."""
    if scaled.shape[0] < 2:
        return float("nan")
    return entropy_from_variances(principal_variances(scaled))


def variance_entropy(
    weight: np.ndarray, threshold: float = DEFAULT_THRESHOLD, inclusive: bool = True
) -> float:
    """Variance entropy of one layer (Gavrikov & Keuper 2022).

    1. drop the sparse filters (see :func:`filterlens.metrics.sparsity`);
    2. scale each remaining filter by its l-inf norm;
    3. centre the ``n x k`` matrix (``k = kh*kw``) and take the variances along its principal
       axes, ``lambda_i = s_i**2 / (n - 1)``;
    4. ``H = -sum p_i log10 p_i`` with ``p_i = lambda_i / sum lambda``.

    Range ``[0, log10(k)]`` (``log10 9 = 0.9542`` for 3x3). Fewer than two non-sparse
    filters: NaN. Filters that are all one pattern (zero total variance): 0.
    """
    filters = as_filters(weight)
    linf = filter_linf(filters)
    keep = ~sparse_mask(filters, threshold, inclusive, linf=linf)
    n, total, xtx = scaled_moments(filters, linf, keep)
    if n < 2:
        return float("nan")
    return entropy_from_variances(variances_from_moments(n, total, xtx))


def max_variance_entropy(kernel_elements: int = 9) -> float:
    """Upper bound ``log10(k)`` of variance entropy for ``k`` weights per filter."""
    return math.log10(kernel_elements)
