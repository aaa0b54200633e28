"""How a first layer responds to a perturbation (torch): the activation and pass measures.

Per output channel ("filter") and per model, for clean inputs ``x`` and perturbed ``x + d``:

1. **relative activation change** ``||a(x+d) - a(x)||_2 / ||a(x)||_2`` (see
   :func:`relative_change`); also without the sparse channels (``rel_change_nonsparse``) and
   before the activation (``rel_change_pre``, on the conv output);
2. **pass ratio**: how much of the perturbation the real filters let through, against random
   filter banks with the same per-kernel l2 norms (see :func:`pass_ratio`); > 1 passes more
   than random filters would, < 1 suppresses.

The pass ratio looks at the linear filter alone (no bias, no BN): a thresholding filter is a
delta, which passes a perturbation like any filter of its norm (ratio about 1); it removes the
perturbation through its bias and the ReLU, which ``rel_change`` (after the activation) sees and
``rel_change_pre`` does not.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from .tracing import FirstConv, capture, find_first_conv


def _sq_per_channel(t: torch.Tensor) -> torch.Tensor:
    """Sum of squares over everything but the batch and channel dims: ``(N, C)`` float64."""
    return t.double().pow(2).flatten(2).sum(-1)


def relative_change(a_clean: torch.Tensor, a_adv: torch.Tensor) -> tuple[np.ndarray, float]:
    """Relative activation change, per channel and per model.

    ``a_clean``/``a_adv``: activations ``(N, C, H, W)`` of the clean and perturbed inputs. For
    image ``n`` and channel ``c``: ``r[n, c] = ||a_adv[n, c] - a_clean[n, c]||_2 /
    ||a_clean[n, c]||_2`` (norms over the spatial positions); a channel whose clean activation
    is all zero on an image (a dead ReLU) has no ratio there (NaN, left out of the mean).
    Returns ``(per_channel, per_model)``: ``per_channel[c]`` is the mean of ``r[:, c]`` over the
    images; ``per_model`` is the mean over the images of ``||a_adv[n] - a_clean[n]|| /
    ||a_clean[n]||`` with the norms over all channels and positions. ``a_adv == a_clean`` gives 0.
    """
    num = _sq_per_channel(a_adv - a_clean)
    den = _sq_per_channel(a_clean)
    return _rel_from_sums(num.numpy(), den.numpy())


def _rel_from_sums(num: np.ndarray, den: np.ndarray) -> tuple[np.ndarray, float]:
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, np.sqrt(num / np.where(den > 0, den, 1.0)), np.nan)
        per_image = np.where(den.sum(1) > 0, np.sqrt(num.sum(1) / np.where(den.sum(1) > 0, den.sum(1), 1.0)), np.nan)
    per_channel = np.array([np.nanmean(col) if np.isfinite(col).any() else np.nan for col in r.T])
    per_model = float(np.nanmean(per_image)) if np.isfinite(per_image).any() else float("nan")
    return per_channel, per_model


def random_bank(weight: torch.Tensor, generator: torch.Generator | None = None, match: str = "kernel") -> torch.Tensor:
    """A random filter bank shaped like ``weight`` with matched l2 norms.

    Gaussian directions, each rescaled so that its norm equals the real one's: per kernel
    ``W[o, i]`` (``match="kernel"``, the default: the colour/input-channel weighting of each
    output channel is kept, the spatial pattern and sign are random), or per output channel
    ``W[o]`` (``match="channel"``). A zero kernel stays zero.
    """
    w = weight.detach().double()
    g = torch.randn(w.shape, generator=generator, dtype=torch.float64)
    dims = (-2, -1) if match == "kernel" else tuple(range(1, w.dim()))
    if match not in ("kernel", "channel"):
        raise ValueError(f"match must be 'kernel' or 'channel', got {match!r}")
    target = w.pow(2).sum(dims, keepdim=True).sqrt()
    norm = g.pow(2).sum(dims, keepdim=True).sqrt().clamp_min(1e-300)
    return (g / norm * target).to(weight.dtype)


def _conv_nobias(conv: nn.Conv2d, d: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    # _conv_forward handles padding modes other than zeros; no bias: the perturbation's image.
    return conv._conv_forward(d, weight.to(d.dtype), None)


def pass_energies(
    conv: nn.Conv2d, d: torch.Tensor, banks: Sequence[torch.Tensor]
) -> tuple[np.ndarray, np.ndarray]:
    """Energies ``sum ||conv(d)||^2`` per output channel for the real weight and for each bank.

    ``d``: the perturbation as the conv sees it ``(N, C_in, H, W)``. Returns ``(real (C,),
    random (K, C))`` summed over the images and positions (float64), without bias.
    """
    with torch.no_grad():
        real = _sq_per_channel(_conv_nobias(conv, d, conv.weight)).sum(0).numpy()
        rand = [_sq_per_channel(_conv_nobias(conv, d, b)).sum(0).numpy() for b in banks]
    return real, (np.stack(rand) if rand else np.zeros((0, len(real))))


def _ratio_from_energies(real: np.ndarray, rand: np.ndarray) -> tuple[np.ndarray, float]:
    with np.errstate(invalid="ignore", divide="ignore"):
        ref_c = np.sqrt(rand).mean(axis=0)
        per_channel = np.where(ref_c > 0, np.sqrt(real) / np.where(ref_c > 0, ref_c, 1.0), np.nan)
        ref = np.sqrt(rand.sum(axis=1)).mean()
        per_model = float(np.sqrt(real.sum()) / ref) if ref > 0 else float("nan")
    return per_channel, per_model


def pass_ratio(
    conv: nn.Conv2d | torch.Tensor,
    d: torch.Tensor,
    n_banks: int = 8,
    seed: int = 0,
    match: str = "kernel",
    banks: Sequence[torch.Tensor] | None = None,
) -> tuple[np.ndarray, float]:
    """How much of the perturbation the filters pass, against random filters of the same norms.

    ``||W * d|| / mean_k ||R_k * d||``: the l2 norm of the conv's response to the perturbation
    ``d`` (no bias, norm over the images and positions) divided by the mean of the same norm
    over ``n_banks`` random banks ``R_k`` (:func:`random_bank`, seeded by ``seed``). Per channel
    the norms run over that channel's response; per model over all channels. 1: the filters
    pass as much of ``d`` as random filters of the same strength would; < 1: they suppress it
    (e.g. a low-pass filter against a high-frequency perturbation); > 1: they pass more (a
    perturbation crafted against the model aligns with its filters). ``conv`` may be a weight
    tensor (stride 1, zero padding ``k // 2``). Returns ``(per_channel, per_model)``.
    """
    if isinstance(conv, torch.Tensor):
        w = conv.detach()
        conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[-2:]), padding=(w.shape[-2] // 2, w.shape[-1] // 2),
                         bias=False).to(w.dtype)
        with torch.no_grad():
            conv.weight.copy_(w)
    if banks is None:
        gen = torch.Generator().manual_seed(seed)
        banks = [random_bank(conv.weight, gen, match) for _ in range(n_banks)]
    real, rand = pass_energies(conv, d.to(conv.weight.dtype), banks)
    return _ratio_from_energies(real, rand)


def measure_first_layer(
    model: nn.Module,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    *,
    n_banks: int = 8,
    seed: int = 0,
    match: str = "kernel",
    batch_size: int = 256,
    first: FirstConv | None = None,
    example_index: int | None = 0,
    sparse_threshold: float = 0.01,
) -> dict:
    """The activation and pass measures of ``model``'s first layer for given clean/perturbed inputs.

    Parameters
    ----------
    model : nn.Module
        The model, in the mode to measure it in.
    x, x_adv : Tensor
        Clean and perturbed images ``(N, C, H, W)``, as the model takes them.
    n_banks, seed, match
        The random banks of :func:`pass_ratio`.
    batch_size : int
        Images per forward pass (each pass stops after the first conv).
    first : FirstConv, optional
        The first conv, when already found (default: :func:`find_first_conv`).
    example_index : int, optional
        The image whose activations are returned for the figure (None: none).
    sparse_threshold : float
        The sparse-channel rule of ``model_rel_change_nonsparse``.

    Returns
    -------
    dict
        ``first`` (:class:`FirstConv`); per-channel arrays ``rel_change``, ``rel_change_pre``,
        ``pass_ratio``, ``dead_share`` (share of images on which the channel's clean
        activation is all zero) and ``sparse_channel``; the per-model scalars under
        ``model_*`` keys; ``example``, the activations of image ``example_index``.
        ``model_rel_change_nonsparse`` leaves out the sparse channels (every kernel of ``W[o]``
        has ``max|w| <= sparse_threshold * max|W|``): such a channel is its bias alone, a
        constant activation that no perturbation changes and that would only inflate
        ``||a(x)||``.
    """
    fc = first or find_first_conv(model, x[:1])
    gen = torch.Generator().manual_seed(seed)
    banks = [random_bank(fc.conv.weight, gen, match) for _ in range(n_banks)]
    num, den, num_pre, den_pre = [], [], [], []
    real = 0.0
    rand = 0.0
    example = None
    for s in range(0, len(x), batch_size):
        zin, zout = capture(model, fc, x[s:s + batch_size])
        zin_adv, zout_adv = capture(model, fc, x_adv[s:s + batch_size])
        with torch.no_grad():
            a, a_adv = fc.activate(zout), fc.activate(zout_adv)
        num.append(_sq_per_channel(a_adv - a).numpy())
        den.append(_sq_per_channel(a).numpy())
        num_pre.append(_sq_per_channel(zout_adv - zout).numpy())
        den_pre.append(_sq_per_channel(zout).numpy())
        r, k = pass_energies(fc.conv, zin_adv - zin, banks)
        real = real + r
        rand = rand + k
        if example_index is not None and example is None and s <= example_index < s + len(zin):
            i = example_index - s
            example = (a[i].double().numpy(), a_adv[i].double().numpy())
    num_a, den_a = np.concatenate(num), np.concatenate(den)
    rel_c, rel_m = _rel_from_sums(num_a, den_a)
    pre_c, pre_m = _rel_from_sums(np.concatenate(num_pre), np.concatenate(den_pre))
    wabs = fc.conv.weight.detach().abs().flatten(1).amax(1).double().numpy()
    active = wabs > sparse_threshold * (wabs.max() if len(wabs) else 0.0)
    _, ns_m = _rel_from_sums(num_a[:, active], den_a[:, active]) if active.any() else (None, float("nan"))
    pass_c, pass_m = _ratio_from_energies(np.asarray(real), np.asarray(rand))
    return {
        "first": fc,
        "rel_change": rel_c, "rel_change_pre": pre_c, "pass_ratio": pass_c,
        "dead_share": (den_a == 0).mean(axis=0),
        "model_rel_change": rel_m, "model_rel_change_pre": pre_m, "model_pass_ratio": pass_m,
        "model_rel_change_nonsparse": ns_m, "sparse_channel": ~active,
        "model_rel_change_channel_mean": float(np.nanmean(rel_c)) if np.isfinite(rel_c).any() else float("nan"),
        "example": example,
    }


__all__ = ["measure_first_layer", "pass_energies", "pass_ratio", "random_bank", "relative_change"]
