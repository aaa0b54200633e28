"""Orthogonality of a layer's output channels."""

from __future__ import annotations

import numpy as np


#: Channel scales (max |w|) for which squared norms stay normal float32 numbers.
_FLOAT32_SAFE = (1e-15, 1e15)


def float32_is_safe(channel_max: np.ndarray) -> bool:
    """Whether every non-zero channel's squared norm is representable in float32 (no underflow
    to a "zero channel", no overflow); trained weights always are."""
    nonzero = channel_max[channel_max > 0]
    if nonzero.size == 0:
        return True
    return bool(nonzero.min() >= _FLOAT32_SAFE[0] and nonzero.max() <= _FLOAT32_SAFE[1])


def raw_channel_gram(weight: np.ndarray, channel_max: np.ndarray | None = None) -> np.ndarray:
    """``R = W W^T`` of the flattened output channels.

    A float32 product (BLAS syrk) when every channel's scale is safe for float32 (see
    :func:`float32_is_safe`; ``channel_max`` = per-channel ``max|w|``, computed if not given),
    else float64, so that tiny or huge weights are not flushed to zero or infinity.
    """
    w = np.asarray(weight)
    v = w.reshape(w.shape[0], -1)
    if channel_max is None:
        channel_max = np.abs(v).max(axis=1) if v.size else np.zeros(v.shape[0])
    dtype = np.float32 if float32_is_safe(np.asarray(channel_max, dtype=np.float64)) else np.float64
    if v.dtype != dtype:
        v = v.astype(dtype)
    return v @ v.T


def normalise_gram(raw: np.ndarray) -> np.ndarray:
    """``G_ij = R_ij / sqrt(R_ii R_jj)``, with zero channels giving zero rows and columns."""
    sq = np.diagonal(raw).astype(np.float64)
    inv = np.zeros_like(sq)
    np.divide(1.0, np.sqrt(sq), out=inv, where=sq > 0)
    inv = inv.astype(raw.dtype)
    g = raw * inv[:, None]
    g *= inv[None, :]
    return g


def channel_gram(weight: np.ndarray) -> np.ndarray:
    """Gram matrix ``G = V V^T`` of the l2-normalised, flattened output channels.

    Row ``o`` of ``V`` is ``weight[o].ravel() / ||weight[o]||`` (a zero row stays zero).
    The product is taken on the raw rows in float32 (the weights' precision) and normalised
    afterwards: O(c_out^2) work instead of a normalised copy of the whole layer.
    """
    return normalise_gram(raw_channel_gram(weight))


def orthogonality_from_gram(g: np.ndarray) -> float:
    """``1 - sum(|G - I|) / (n (n - 1))`` for a normalised Gram matrix ``G`` (``n >= 2``)."""
    n = g.shape[0]
    diag = np.diagonal(g).astype(np.float64)
    total = np.abs(g).sum(dtype=np.float64) - np.abs(diag).sum() + np.abs(diag - 1.0).sum()
    return float(1.0 - total / (n * (n - 1)))


def orthogonality_from_raw_gram(raw: np.ndarray) -> float:
    """:func:`orthogonality_from_gram` of ``normalise_gram(raw)``, without forming it: one
    compiled pass over the upper triangle of the raw Gram matrix, in float64 (``n >= 2``)."""
    from .kernels import gram_deviation  # compiled on first use

    n = raw.shape[0]
    return float(1.0 - gram_deviation(np.ascontiguousarray(raw)) / (n * (n - 1)))


def orthogonality(weight: np.ndarray) -> float:
    """``1 - sum(|G - I|) / (n (n - 1))`` over the whole Gram matrix of the output channels.

    ``n = weight.shape[0]`` output channels, each flattened over ``c_in/groups * kh * kw``
    raw weights (sparse filters included). 1 means mutually orthogonal channels. The sum
    includes the diagonal, so a zero channel adds 1, as in the paper's code. ``n < 2``: NaN.
    """
    n = int(np.asarray(weight).shape[0])
    if n < 2:
        return float("nan")
    return orthogonality_from_raw_gram(raw_channel_gram(weight))
