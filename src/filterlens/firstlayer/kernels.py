"""Shape and frequency measures of convolution kernels (numpy only).

Each function takes a stack of kernels ``(n, kh, kw)``, a 4-D weight ``(c_out, c_in, kh, kw)``
(flattened to its kernels) or one 2-D kernel, as a numpy array or a torch tensor, and returns
one value per kernel. :func:`kernel_table` puts them in one row per kernel of a layer and
:func:`kernel_aggregates` summarises a table per output channel or per layer. Definitions and
their edge cases are in each docstring and in ``docs/definitions.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: Kernels as numpy or torch (a tensor is detached and copied to float64 numpy).
Kernels = Union[np.ndarray, "torch.Tensor"]

#: A kernel is "single-tap" when its largest tap carries at least this share of its energy.
SINGLE_TAP_SHARE = 0.9


def _kernels(w: Kernels) -> np.ndarray:
    if hasattr(w, "detach"):  # a torch tensor; duck-typed so that this module needs no torch
        w = w.detach().cpu().double().numpy()
    w = np.asarray(w, dtype=np.float64)
    if w.ndim == 2:
        w = w[None]
    if w.ndim == 4:
        w = w.reshape(-1, *w.shape[-2:])
    if w.ndim != 3:
        raise ValueError(f"expected kernels (n, kh, kw), a weight (c_out, c_in, kh, kw) or one kernel, got {w.shape}")
    return w


def _centred_index(k: int) -> np.ndarray:
    """Integer frequency indices of a k-point DFT in fftshift order (e.g. k=3: -1, 0, 1)."""
    return np.fft.fftshift(np.fft.fftfreq(k) * k).round().astype(int)


def low_freq_share(kernels: Kernels, radius: int = 0) -> np.ndarray:
    """Share of each kernel's energy at low spatial frequency.

    Definition: take the ``kh x kw`` 2-D DFT of the kernel *at its own size* (no padding), so
    the frequencies are ``(u / kh, v / kw)`` cycles per pixel with integer ``u, v`` centred on
    DC (for 3x3: ``u, v in {-1, 0, 1}``). The low band is ``max(|u|, |v|) <= radius``; the share
    is ``sum_low |DFT|^2 / sum_all |DFT|^2`` (= ``sum_low |DFT|^2 / (kh kw ||w||^2)`` by
    Parseval). With the default ``radius=0`` the low band is DC alone and the share is
    ``(sum w)^2 / (kh kw ||w||_2^2)``, the squared cosine between the kernel and a constant
    kernel: 1 for a constant (pure-DC) kernel, ``1/9`` for a 3x3 delta (centre tap only), 0
    for any zero-mean kernel, ``1/81`` for a 3x3 checkerboard. For 3x3 the DC plus the lowest
    ring (``radius=1``) is the whole spectrum, so ``radius=1`` is only useful for 5x5 and up.
    An all-zero kernel gives NaN. ``kernels``: ``(n, kh, kw)``, a 4-D weight (flattened to its
    kernels) or one 2-D kernel; returns ``(n,)``.
    """
    w = _kernels(kernels)
    n, kh, kw = w.shape
    spec = np.fft.fftshift(np.abs(np.fft.fft2(w)) ** 2, axes=(-2, -1))
    uu, vv = np.meshgrid(_centred_index(kh), _centred_index(kw), indexing="ij")
    low = (np.abs(uu) <= radius) & (np.abs(vv) <= radius)
    total = spec.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = spec[:, low].sum(axis=-1) / total
    return np.where(total > 1e-30 * max(1.0, float(np.max(total, initial=0.0))), out, np.nan)


def spectral_centroid(kernels: Kernels, size: int = 32) -> np.ndarray:
    """Power-weighted mean radial frequency (cycles/pixel) of each kernel, on a fine grid.

    The kernel is zero-padded to ``size x size`` and transformed; with ``P = |DFT|^2`` and
    ``r = sqrt(fu^2 + fv^2)`` (``numpy.fft.fftfreq`` frequencies in cycles per pixel), the
    centroid is ``sum r P / sum P``, in ``[0, sqrt(0.5) = 0.707]``. Low for smooth (blob,
    constant) kernels, high for checkerboards, about 0.38 for a delta (flat spectrum).
    All-zero kernels give NaN.
    """
    w = _kernels(kernels)
    n, kh, kw = w.shape
    size = max(int(size), kh, kw)
    spec = np.abs(np.fft.fft2(w, s=(size, size))) ** 2
    fu, fv = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    r = np.sqrt(fu**2 + fv**2)
    total = spec.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (spec * r).sum(axis=(-2, -1)) / total
    return np.where(total > 0, out, np.nan)


def peak_energy_share(kernels: Kernels) -> np.ndarray:
    """``max_p w_p^2 / ||w||^2``: the energy share of the largest tap (anywhere); ``1/(kh kw)``
    for a constant kernel, 1 for a single-tap kernel; NaN for an all-zero kernel."""
    w = _kernels(kernels)
    e = (w**2).reshape(len(w), -1)
    total = e.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, e.max(axis=1, initial=0.0) / total, np.nan)


def single_tap(kernels: Kernels, min_share: float = SINGLE_TAP_SHARE) -> np.ndarray:
    """Kernels dominated by one tap anywhere: ``peak_energy_share >= min_share`` (default 0.9).

    Followed by a bias and a ReLU such a kernel is a (shifted) thresholding filter,
    ``relu(w_p x_p + b)``: on one input channel it passes a pixel only above ``-b / w_p``, the
    filters Madry et al. (2018) found in the first layer of PGD-trained MNIST models. Unlike
    :func:`centre_peaked` the tap need not sit at the centre. All-zero kernels are ``False``.
    """
    share = peak_energy_share(kernels)
    return np.nan_to_num(share, nan=0.0) >= min_share


def centre_peaked(kernels: Kernels, min_centre_share: float = 1 / 3) -> np.ndarray:
    """Which kernels are centre-peaked ("thresholding") filters.

    A kernel ``w`` (odd ``kh`` and ``kw``) is centre-peaked when all three hold:

    1. the centre tap holds the largest magnitude: ``|w_c| >= |w_p|`` for every tap ``p``;
    2. the profile is centre-weighted: the mean ``|w|`` over the taps at Chebyshev distance
       ``r`` from the centre does not increase with ``r`` (for 3x3 this is implied by 1.);
    3. the centre carries at least ``min_centre_share`` of the energy: ``w_c^2 / ||w||_2^2 >=
       min_centre_share`` (default 1/3, i.e. ``w_c^2 >= 0.5 * sum of the other taps' squares``).

    A delta at the centre, or a Gaussian blob narrow enough, qualifies; a random Gaussian 3x3
    kernel does so with probability about 0.05. Even-sized or all-zero kernels are ``False``.
    Returns a boolean array ``(n,)``.
    """
    w = _kernels(kernels)
    n, kh, kw = w.shape
    if kh % 2 == 0 or kw % 2 == 0 or n == 0:
        return np.zeros(n, dtype=bool)
    a = np.abs(w)
    ch, cw = kh // 2, kw // 2
    centre = a[:, ch, cw]
    total = (w**2).sum(axis=(1, 2))
    cond_max = centre >= a.reshape(n, -1).max(axis=1) - 1e-12
    with np.errstate(invalid="ignore", divide="ignore"):
        cond_share = np.where(total > 0, centre**2 / np.where(total > 0, total, 1.0), 0.0) >= min_centre_share
    ii, jj = np.meshgrid(np.arange(kh) - ch, np.arange(kw) - cw, indexing="ij")
    dist = np.maximum(np.abs(ii), np.abs(jj))
    ring_means = np.stack([a[:, dist == r].mean(axis=1) for r in range(int(dist.max()) + 1)], axis=1)
    cond_profile = np.all(np.diff(ring_means, axis=1) <= 1e-12, axis=1)
    return cond_max & cond_share & cond_profile & (total > 0)


def sparse_kernels(weight: Kernels, threshold: float = 0.01) -> np.ndarray:
    """The paper's sparse kernels of one layer: ``max|w| <= threshold * max|W|`` (``(n,)`` bool)."""
    w = _kernels(weight)
    if not len(w):
        return np.zeros(0, dtype=bool)
    m = float(np.abs(w).max())
    return np.abs(w).reshape(len(w), -1).max(axis=1) <= threshold * m


def kernel_table(weight: Kernels, *, radius: int = 0, centroid_size: int = 32,
                 min_centre_share: float = 1 / 3, single_tap_share: float = SINGLE_TAP_SHARE,
                 sparse_threshold: float = 0.01) -> pd.DataFrame:
    """Every kernel measure of one layer, one row per kernel ``W[o, i]``.

    Parameters
    ----------
    weight : ndarray or Tensor
        The layer's weight ``(c_out, c_in, kh, kw)``.
    radius : int
        Low band of :func:`low_freq_share`.
    centroid_size : int
        DFT size of :func:`spectral_centroid`.
    min_centre_share : float
        Least centre energy share of :func:`centre_peaked`.
    single_tap_share : float
        Least largest-tap energy share of :func:`single_tap`.
    sparse_threshold : float
        The sparse rule of :func:`sparse_kernels`.

    Returns
    -------
    DataFrame
        Columns ``out_channel, in_channel, l2, sparse, low_freq_share, spectral_centroid,
        centre_peaked, single_tap, peak_energy_share``.
    """
    w = weight.detach().cpu().double().numpy() if hasattr(weight, "detach") else np.asarray(weight, float)
    c_out, c_in = w.shape[:2]
    k = w.reshape(-1, *w.shape[-2:])
    return pd.DataFrame({
        "out_channel": np.repeat(np.arange(c_out), c_in),
        "in_channel": np.tile(np.arange(c_in), c_out),
        "l2": np.sqrt((k**2).sum(axis=(1, 2))),
        "sparse": sparse_kernels(k, sparse_threshold),
        "low_freq_share": low_freq_share(k, radius),
        "spectral_centroid": spectral_centroid(k, centroid_size),
        "centre_peaked": centre_peaked(k, min_centre_share),
        "single_tap": single_tap(k, single_tap_share),
        "peak_energy_share": peak_energy_share(k),
    })


def kernel_aggregates(kt: pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """Per ``by`` (e.g. ``"out_channel"``) or over the whole table: the energy-weighted
    frequency measures and the non-sparse kernel shares.

    With ``e = l2^2`` per kernel: ``low_freq_share`` and ``spectral_centroid`` are
    ``sum e v / sum e`` over the kernels with a finite value and ``e > 0``;
    ``centre_peaked_share``, ``single_tap_share`` and ``peak_energy_share`` (mean) count the
    non-sparse kernels only (the paper's 1 % rule); ``sparse_share`` is over all kernels. A
    group without any such kernel gets NaN. One row per group (or one row without ``by``).
    """
    def agg(g: pd.DataFrame) -> pd.Series:
        e = g["l2"].to_numpy() ** 2
        ns = ~g["sparse"].to_numpy()
        lf = g["low_freq_share"].to_numpy()
        sc = g["spectral_centroid"].to_numpy()
        ok = np.isfinite(lf) & (e > 0)
        return pd.Series({
            "low_freq_share": float((lf[ok] * e[ok]).sum() / e[ok].sum()) if ok.any() else float("nan"),
            "spectral_centroid": float((sc[ok] * e[ok]).sum() / e[ok].sum()) if ok.any() else float("nan"),
            "centre_peaked_share": float(g["centre_peaked"].to_numpy()[ns].mean()) if ns.any() else float("nan"),
            "single_tap_share": float(g["single_tap"].to_numpy()[ns].mean()) if ns.any() else float("nan"),
            "peak_energy_share": float(np.nanmean(g["peak_energy_share"].to_numpy()[ns])) if ns.any() else float("nan"),
            "sparse_share": float(g["sparse"].mean()) if len(g) else float("nan"),
        })

    if by is None:
        return agg(kt).to_frame().T
    return pd.DataFrame({k: agg(g) for k, g in kt.groupby(by, sort=True)}).T.rename_axis(by).reset_index()


__all__ = [
    "SINGLE_TAP_SHARE", "centre_peaked", "kernel_aggregates", "kernel_table", "low_freq_share", "peak_energy_share",
    "single_tap", "sparse_kernels", "spectral_centroid",
]
