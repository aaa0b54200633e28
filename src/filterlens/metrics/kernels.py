"""Compiled inner loops of the per-layer metrics (numba).

Measuring a layer is one pass over its filters plus the channel Gram product (BLAS). The
pass (per-filter l-inf norm, sparse test, float64 moments of the scaled filters) is a chain
of tiny per-filter operations that numpy can only express as several whole-array passes; here
it runs once per cache-sized block. Kernels are compiled on first use and cached on disk.

Floating-point flags: re-association and fused multiply-add only (``reassoc``, ``contract``,
``nsz``), so that the reductions vectorise. No approximate reciprocals, no assumption that
values are finite: callers reject NaN and Inf before calling.
"""

from __future__ import annotations

import numba
import numpy as np

_FASTMATH = {"reassoc", "contract", "nsz"}


def _jit(fastmath: bool = True):
    """``numba.njit`` without the GIL or bounds checks, cached on disk where numba finds a
    writable place (next to this file, or the user's cache directory); where it finds none
    (a read-only install and no writable home), compiled anew in each process instead."""

    def decorate(fn):
        options = dict(nogil=True, boundscheck=False, fastmath=_FASTMATH if fastmath else False)
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(**options)(fn)

    return decorate

def padded_rows(k: int) -> int:
    """Rows of the float64 scratch block for ``k``-element filters: ``k`` scaled taps and one
    keep flag, plus a zero row when that count is odd (tiles are 4 or 2 rows high)."""
    return k + 1 + (k + 1) % 2


@_jit()
def _tile44(y, ta, tb, m, acc):  # pragma: no cover - compiled
    """``acc[ta:ta+4, tb:tb+4] += y[ta:ta+4, :m] @ y[tb:tb+4, :m].T``: 8 loads per 16
    multiply-adds, in registers, instead of 2 loads per 1 for separate dot products."""
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = 0.0
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = 0.0
    for r in range(m):
        a0 = y[ta, r]
        a1 = y[ta + 1, r]
        a2 = y[ta + 2, r]
        a3 = y[ta + 3, r]
        b0 = y[tb, r]
        b1 = y[tb + 1, r]
        b2 = y[tb + 2, r]
        b3 = y[tb + 3, r]
        s00 += a0 * b0
        s01 += a0 * b1
        s02 += a0 * b2
        s03 += a0 * b3
        s10 += a1 * b0
        s11 += a1 * b1
        s12 += a1 * b2
        s13 += a1 * b3
        s20 += a2 * b0
        s21 += a2 * b1
        s22 += a2 * b2
        s23 += a2 * b3
        s30 += a3 * b0
        s31 += a3 * b1
        s32 += a3 * b2
        s33 += a3 * b3
    acc[ta, tb] += s00
    acc[ta, tb + 1] += s01
    acc[ta, tb + 2] += s02
    acc[ta, tb + 3] += s03
    acc[ta + 1, tb] += s10
    acc[ta + 1, tb + 1] += s11
    acc[ta + 1, tb + 2] += s12
    acc[ta + 1, tb + 3] += s13
    acc[ta + 2, tb] += s20
    acc[ta + 2, tb + 1] += s21
    acc[ta + 2, tb + 2] += s22
    acc[ta + 2, tb + 3] += s23
    acc[ta + 3, tb] += s30
    acc[ta + 3, tb + 1] += s31
    acc[ta + 3, tb + 2] += s32
    acc[ta + 3, tb + 3] += s33


@_jit()
def _tile42(y, ta, tb, m, acc):  # pragma: no cover - compiled
    """``acc[ta:ta+4, tb:tb+2] += y[ta:ta+4, :m] @ y[tb:tb+2, :m].T``."""
    s00 = s01 = s10 = s11 = s20 = s21 = s30 = s31 = 0.0
    for r in range(m):
        b0 = y[tb, r]
        b1 = y[tb + 1, r]
        a0 = y[ta, r]
        a1 = y[ta + 1, r]
        a2 = y[ta + 2, r]
        a3 = y[ta + 3, r]
        s00 += a0 * b0
        s01 += a0 * b1
        s10 += a1 * b0
        s11 += a1 * b1
        s20 += a2 * b0
        s21 += a2 * b1
        s30 += a3 * b0
        s31 += a3 * b1
    acc[ta, tb] += s00
    acc[ta, tb + 1] += s01
    acc[ta + 1, tb] += s10
    acc[ta + 1, tb + 1] += s11
    acc[ta + 2, tb] += s20
    acc[ta + 2, tb + 1] += s21
    acc[ta + 3, tb] += s30
    acc[ta + 3, tb + 1] += s31


@_jit()
def _tile22(y, t, m, acc):  # pragma: no cover - compiled
    """The upper triangle of ``acc[t:t+2, t:t+2] += y[t:t+2, :m] @ y[t:t+2, :m].T``."""
    s00 = s01 = s11 = 0.0
    for r in range(m):
        a0 = y[t, r]
        a1 = y[t + 1, r]
        s00 += a0 * a0
        s01 += a0 * a1
        s11 += a1 * a1
    acc[t, t] += s00
    acc[t, t + 1] += s01
    acc[t + 1, t + 1] += s11


@_jit()
def _block(bt, m, t, keep_equal, linf, inv, y, acc):  # pragma: no cover - compiled
    """One block of :func:`linf_moments`; returns the sum of the block's l-inf norms.

    ``bt`` holds ``m`` filters transposed (``k x >= m``, one row per tap). Writes their l-inf
    norms to ``linf[:m]``; a filter is kept when its norm is ``> t`` (``>= t`` with
    ``keep_equal``) and ``> 0``. Row ``a < k`` of ``y`` becomes tap ``a`` of the kept filters
    scaled by ``1 / linf`` in float64 (0 for dropped ones), row ``k`` the keep flag, a padding
    row stays 0. ``acc`` (``K x K``, ``K = y.shape[0]``) gains ``y y^T``: every entry
    ``(a, b)`` with ``a <= b``, and some below the diagonal.
    """
    k = bt.shape[0]
    rows = y.shape[0]
    for r in range(m):
        linf[r] = abs(bt[0, r])
    for a in range(1, k):  # tap by tap: vectorises over filters
        for r in range(m):
            linf[r] = max(linf[r], abs(bt[a, r]))
    linf_sum = 0.0
    for r in range(m):
        md = np.float64(linf[r])
        linf_sum += md
        keep = (md >= t) if keep_equal else (md > t)
        if keep and md > 0.0:
            inv[r] = 1.0 / md
            y[k, r] = 1.0
        else:
            inv[r] = 0.0
            y[k, r] = 0.0
    for a in range(k):
        for r in range(m):
            y[a, r] = bt[a, r] * inv[r]
    # Register tiles over groups of 4 rows; an even remainder of 2 rows gets narrower tiles.
    full = rows - rows % 4
    for ta in range(0, full, 4):
        for tb in range(ta, full, 4):
            _tile44(y, ta, tb, m, acc)
        if full < rows:
            _tile42(y, ta, full, m, acc)
    if full < rows:
        _tile22(y, full, m, acc)
    return linf_sum


@_jit()
def linf_moments(flat, k, t, keep_equal, linf, acc, block):  # pragma: no cover - compiled
    """Per-filter l-inf norms and float64 moments of the kept, scaled filters; returns the
    float64 sum of the norms.

    ``flat`` holds ``n = flat.size // k`` filters of ``k`` taps one after another (C order of
    an ``n x k`` array). Writes the norms to ``linf`` and adds the moments to ``acc``
    (``K x K`` with ``K = padded_rows(k)``, see :func:`_block`), ``block`` filters at a time:
    each block is first transposed to one row per tap so that every later loop runs along
    contiguous memory.
    """
    n = flat.size // k
    rows = acc.shape[0]
    size = min(block, n)
    bt = np.empty((k, size), dtype=flat.dtype)
    y = np.zeros((rows, size))
    inv = np.empty(size)
    linf_sum = 0.0
    for start in range(0, n, block):
        m = min(block, n - start)
        base = start * k
        for a in range(k):
            for r in range(m):
                bt[a, r] = flat[base + r * k + a]
        linf_sum += _block(bt, m, t, keep_equal, linf[start : start + m], inv, y, acc)
    return linf_sum


@_jit(fastmath=False)
def max_magnitude_bits(bits, mask):  # pragma: no cover - compiled
    """``max(bits & mask)`` over an integer view of float data.

    With ``mask`` clearing the sign bit, the integer order of IEEE-754 bit patterns is the
    order of magnitudes, so this is the bit pattern of ``max |x|``; NaN and Inf patterns lie
    above every finite one, so one vectorised integer pass gives the maximum and tells
    whether all values are finite.
    """
    m = bits.dtype.type(0)
    for i in range(bits.size):
        v = bits[i] & mask
        if v > m:
            m = v
    return m


@_jit()
def gram_deviation(raw):  # pragma: no cover - compiled
    """``sum |G - I|`` over all entries, for ``G_ij = R_ij / sqrt(R_ii R_jj)``.

    ``raw`` is the symmetric ``n x n`` Gram matrix ``R`` of the raw channels (only its upper
    triangle is read); a zero channel (``R_ii = 0``) gives a zero row and column of ``G``.
    Products and sums in float64.
    """
    n = raw.shape[0]
    inv = np.empty(n)
    total = 0.0
    for i in range(n):
        d = max(np.float64(raw[i, i]), 0.0)
        inv[i] = 1.0 / np.sqrt(d) if d > 0.0 else 0.0
        total += abs(d * inv[i] * inv[i] - 1.0)
    off = 0.0
    for i in range(n):
        row = 0.0
        for j in range(i + 1, n):
            row += abs(np.float64(raw[i, j])) * inv[j]
        off += row * inv[i]
    return total + 2.0 * off
