"""A plain, independent implementation of docs/definitions.md, written for clarity, not speed.

Loops over filters, the SVD route for variance entropy (as in the paper's code), and the
explicit ``G - I`` for orthogonality. The tests compare filterlens against it.
"""

from __future__ import annotations

import math

import numpy as np


def ref_sparse_flags(weight: np.ndarray, threshold: float = 0.01, inclusive: bool = True) -> list[bool]:
    w = np.asarray(weight, dtype=np.float64)
    m = max(abs(float(x)) for x in w.ravel())
    flags = []
    for a in range(w.shape[0]):
        for b in range(w.shape[1]):
            fmax = max(abs(float(x)) for x in w[a, b].ravel())
            if m == 0:
                flags.append(True)
            else:
                flags.append(fmax <= threshold * m if inclusive else fmax < threshold * m)
    return flags


def ref_sparsity(weight, threshold=0.01, inclusive=True) -> float:
    flags = ref_sparse_flags(weight, threshold, inclusive)
    return sum(flags) / len(flags)


def ref_variance_entropy(weight, threshold=0.01, inclusive=True) -> float:
    w = np.asarray(weight, dtype=np.float64)
    flags = ref_sparse_flags(weight, threshold, inclusive)
    rows = []
    i = 0
    for a in range(w.shape[0]):
        for b in range(w.shape[1]):
            if not flags[i]:
                f = w[a, b].ravel()
                rows.append(f / np.abs(f).max())
            i += 1
    if len(rows) < 2:
        return float("nan")
    x = np.array(rows)
    x = x - x.mean(axis=0)
    s = np.linalg.svd(x, compute_uv=False)
    var = s**2 / (len(rows) - 1)
    if var.sum() <= 1e-14:
        return 0.0
    p = var / var.sum()
    return -sum(float(pi) * math.log10(float(pi)) for pi in p if pi > 0)


def ref_orthogonality(weight) -> float:
    w = np.asarray(weight, dtype=np.float64)
    n = w.shape[0]
    if n < 2:
        return float("nan")
    v = w.reshape(n, -1).copy()
    for o in range(n):
        norm = np.sqrt((v[o] ** 2).sum())
        if norm > 0:
            v[o] /= norm
    g = v @ v.T
    return 1.0 - np.abs(g - np.eye(n)).sum() / (n * (n - 1))
