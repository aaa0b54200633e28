"""Orthogonality of a layer's output channels."""

from __future__ import annotations

import numpy as np


def raw_channel_gram(weight: np.ndarray) -> np.ndarray:
    """``R = W W^T`` of the flattened output channels, a float32 product (BLAS syrk)."""
    w = np.asarray(weight)
    v = w.reshape(w.shape[0], -1)
    if v.dtype != np.float32:
        v = v.astype(np.float32)
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


def orthogonality(weight: np.ndarray) -> float:
    """``1 - sum(|G - I|) / (n (n - 1))`` over the whole Gram matrix of the output channels.

    ``n = weight.shape[0]`` output channels, each flattened over ``c_in/groups * kh * kw``
    raw weights (sparse filters included). 1 means mutually orthogonal channels. The sum
    includes the diagonal, so a zero channel adds 1, as in the paper's code. ``n < 2``: NaN.
    """
    n = int(np.asarray(weight).shape[0])
    if n < 2:
        return float("nan")
    return orthogonality_from_gram(channel_gram(weight))
