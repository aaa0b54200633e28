"""Variance entropy, the paper's measure of filter diversity."""

from __future__ import annotations

import math

import numpy as np

from .filters import DEFAULT_THRESHOLD, as_filters, scaled_nonsparse

# Below this total variance the scaled filters (entries in [-1, 1]) are one pattern up to
# float32 rounding; the spectrum is then noise and the entropy is defined as 0.
_SAME_PATTERN_VARIANCE = 1e-14


def principal_variances(x: np.ndarray) -> np.ndarray:
    """Variances along the principal axes of the rows of ``x`` (``n x k``), descending.

    Equal to ``s**2 / (n - 1)`` for the singular values ``s`` of the centred matrix, computed
    through the ``k x k`` covariance matrix in float64. Negative round-off is clipped to 0.
    Needs ``n >= 2``.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        raise ValueError("principal variances need at least 2 rows")
    centred = x - x.mean(axis=0)
    cov = centred.T @ centred / (n - 1)
    eig = np.linalg.eigvalsh(cov)[::-1]
    return np.clip(eig, 0.0, None)


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


def variance_entropy_of_scaled(scaled: np.ndarray) -> float:
    """Variance entropy of already scaled, non-sparse filters (``n x k``); NaN when ``n < 2``."""
    if scaled.shape[0] < 2:
        return float("nan")
    var = principal_variances(scaled)
    if var.sum() <= _SAME_PATTERN_VARIANCE:
        return 0.0
    return entropy10(var)


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
    return variance_entropy_of_scaled(scaled_nonsparse(as_filters(weight), threshold, inclusive))


def max_variance_entropy(kernel_elements: int = 9) -> float:
    """Upper bound ``log10(k)`` of variance entropy for ``k`` weights per filter."""
    return math.log10(kernel_elements)
