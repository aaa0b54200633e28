"""Orthogonality of a layer's output channels."""

from __future__ import annotations

import numpy as np


def channel_gram(weight: np.ndarray) -> np.ndarray:
    """Gram matrix ``G = V V^T`` of the l2-normalised, flattened output channels.

    Row ``o`` of ``V`` is ``weight[o].ravel() / ||weight[o]||`` (a zero row stays zero).
    Computed in float32 (the weights' precision) for speed; norms in float64.
    """
    w = np.asarray(weight)
    v = w.reshape(w.shape[0], -1).astype(np.float32, copy=False)
    norms = np.sqrt(np.einsum("ij,ij->i", v, v, dtype=np.float64))
    norms[norms == 0] = 1.0
    v = v / norms.astype(np.float32)[:, None]
    return v @ v.T


def orthogonality(weight: np.ndarray) -> float:
    """``1 - sum(|G - I|) / (n (n - 1))`` over the whole Gram matrix of the output channels.

    ``n = weight.shape[0]`` output channels, each flattened over ``c_in/groups * kh * kw``
    raw weights (sparse filters included). 1 means mutually orthogonal channels. The sum
    includes the diagonal, so a zero channel adds 1, as in the paper's code. ``n < 2``: NaN.
    """
    n = int(np.asarray(weight).shape[0])
    if n < 2:
        return float("nan")
    g = channel_gram(weight)
    off = np.abs(g).sum(dtype=np.float64) - np.abs(np.diagonal(g)).sum(dtype=np.float64)
    diag = np.abs(np.diagonal(g).astype(np.float64) - 1.0).sum()
    return float(1.0 - (off + diag) / (n * (n - 1)))
