"""Variance entropy, the paper's measure of filter diversity."""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import numpy as np

from .filters import DEFAULT_THRESHOLD, as_filters

# Below this total variance the scaled filters (entries in [-1, 1]) are one pattern up to
# float32 rounding; the spectrum is then noise and the entropy is defined as 0.
_SAME_PATTERN_VARIANCE = 1e-14


#: Filters per block of the fused pass: its float64 scratch block (10 x 4096) stays in L2.
CHUNK_ROWS = 4096


def default_threads() -> int:
    """Threads for the filter passes of :func:`filterlens.metrics.measure_weights`:
    ``FILTERLENS_NUM_THREADS``, else ``OMP_NUM_THREADS`` (as BLAS reads it), else the CPUs
    this process may run on."""
    for var in ("FILTERLENS_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


#: Integer view and sign-clearing mask per float dtype (see :func:`layer_max_abs`).
_MAGNITUDE_BITS = {
    np.dtype(np.float32): (np.int32, np.int32(0x7FFF_FFFF)),
    np.dtype(np.float64): (np.int64, np.int64(0x7FFF_FFFF_FFFF_FFFF)),
}


def layer_max_abs(weight: np.ndarray) -> float:
    """``max |W|`` over a whole array; NaN or Inf when any value is NaN or Inf.

    For contiguous float32 / float64 weights, one compiled integer pass over the bit patterns
    (:func:`filterlens.metrics.kernels.max_magnitude_bits`); otherwise two numpy reductions.
    """
    w = np.asarray(weight)
    if w.size == 0:
        return 0.0
    spec = _MAGNITUDE_BITS.get(w.dtype)
    if spec is None or not w.flags.c_contiguous:
        return float(np.maximum(w.max(), -w.min()))  # NaN-propagating, unlike max()
    from .kernels import max_magnitude_bits  # compiled on first use

    int_type, mask = spec
    bits = max_magnitude_bits(w.reshape(-1).view(int_type), mask)
    return float(np.array(bits, dtype=int_type).view(w.dtype))


def _kernel_dtype(filters: np.ndarray) -> np.ndarray:
    """float32 and float64 go to the kernel as they are; float16 widens exactly to float32."""
    if filters.dtype in (np.float32, np.float64):
        return filters
    if filters.dtype == np.float16:
        return filters.astype(np.float32)
    return filters.astype(np.float64)


class FilterMoments(NamedTuple):
    """Result of :func:`linf_and_moments`."""

    linf: np.ndarray  #: per-filter l-inf norms, in the filters' precision
    linf_sum: float  #: their sum, in float64
    n_kept: int  #: non-sparse filters
    total: np.ndarray  #: column sums of the kept filters, each scaled by its l-inf norm
    xtx: np.ndarray  #: ``X^T X`` of the kept, scaled filters (float64)


def linf_and_moments(
    filters: np.ndarray,
    threshold_abs: float,
    inclusive: bool = True,
    chunk: int = CHUNK_ROWS,
) -> FilterMoments:
    """One pass over ``filters`` (``n x k``) for everything variance entropy needs.

    Returns the per-filter l-inf norms and their sum, and the count, column sums and
    ``X^T X`` (float64) of the non-sparse filters scaled by their own l-inf norm. A filter is
    sparse when its norm is ``<= threshold_abs`` (``<`` when not ``inclusive``) or 0.

    A compiled kernel (:func:`filterlens.metrics.kernels.linf_moments`) transposes blocks of
    ``chunk`` filters to one row per tap, takes the norms, scales in float64 and accumulates
    ``Y Y^T`` in float64, where ``Y`` carries a row of keep flags so that one product gives
    ``X^T X``, the sums and the count.
    """
    from . import kernels  # compiled on first use

    filters = _kernel_dtype(np.ascontiguousarray(filters))
    n, k = filters.shape
    linf = np.empty(n, dtype=filters.dtype)
    rows = kernels.padded_rows(k)
    acc = np.zeros((rows, rows))
    linf_sum = 0.0
    if n:
        flat = filters.reshape(-1)
        linf_sum = kernels.linf_moments(flat, k, float(threshold_abs), not inclusive, linf, acc, chunk)
    full = np.triu(acc) + np.triu(acc, 1).T
    n_kept = int(round(full[k, k]))
    return FilterMoments(linf, float(linf_sum), n_kept, full[:k, k].copy(), full[:k, :k].copy())


def variances_from_moments(n: int, total: np.ndarray, xtx: np.ndarray) -> np.ndarray:
    """Principal variances (descending) from the moments of :func:`linf_and_moments`.

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
    return variances_from_moments(x.shape[0], x.sum(axis=0), x.T @ x)


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
    m = layer_max_abs(filters)
    # m = 0: every filter is zero, and zero filters are always sparse (see linf_and_moments).
    fm = linf_and_moments(filters, np.float64(threshold) * m, inclusive)
    if fm.n_kept < 2:
        return float("nan")
    return entropy_from_variances(variances_from_moments(fm.n_kept, fm.total, fm.xtx))


def max_variance_entropy(kernel_elements: int = 9) -> float:
    """Upper bound ``log10(k)`` of variance entropy for ``k`` weights per filter."""
    return math.log10(kernel_elements)
