"""Variance entropy, the paper's measure of filter diversity."""

from __future__ import annotations

import math

import numpy as np

from .filters import DEFAULT_THRESHOLD, as_filters, filter_linf, sparse_mask

# Below this total variance the scaled filters (entries in [-1, 1]) are one pattern up to
# float32 rounding; the spectrum is then noise and the entropy is defined as 0.
_SAME_PATTERN_VARIANCE = 1e-14


def scaled_moments(
    filters: np.ndarray, linf: np.ndarray, keep: np.ndarray | None = None, chunk: int = 16384
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
        x = f.astype(np.float64)
        x /= scale.astype(np.float64)[:, None]
        xtx += x.T @ x
        total += x.sum(axis=0)
        count += x.shape[0]
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
