"""The first layer: do robust first-layer filters eliminate adversarial perturbations?

Gavrikov & Keuper (2022) observed that adversarially trained CNNs learn centre-weighted,
"thresholding" first-layer filters whose activations change less when an adversarial
perturbation is added to the input; they showed a figure and measured nothing. This module
measures it.

For each model: craft L-inf PGD perturbations ``d`` against the model itself (or transfer them
from another model), feed ``x`` and ``x + d`` through the model's first conv and its activation,
and measure per output channel ("filter" in the tables below) and per model:

1. **relative activation change** ``||a(x+d) - a(x)||_2 / ||a(x)||_2`` (see
   :func:`relative_change`); also without the sparse channels (``rel_change_nonsparse``) and
   before the activation (``rel_change_pre``, on the conv output);
2. **pass ratio**: how much of the perturbation the real filters let through, against random
   filter banks with the same per-kernel l2 norms (see :func:`pass_ratio`); > 1 passes more
   than random filters would, < 1 suppresses;
3. **a frequency and shape view of the kernels**: the low-frequency share
   (:func:`low_freq_share`), the spectral centroid (:func:`spectral_centroid`), the share of
   centre-peaked ("thresholding") kernels (:func:`centre_peaked`), the share of single-tap
   kernels anywhere in the window (:func:`single_tap`; with a bias and a ReLU these are Madry
   et al.'s thresholding filters) and the energy share of the largest tap
   (:func:`peak_energy_share`). Kernel shares count the non-sparse kernels only (the paper's
   1 % rule); frequency measures of a channel or model are energy-weighted over its kernels.

The pass ratio looks at the linear filter alone (no bias, no BN): a thresholding filter is a
delta, which passes a perturbation like any filter of its norm (ratio about 1); it removes the
perturbation through its bias and the ReLU, which ``rel_change`` (after the activation) sees and
``rel_change_pre`` does not.

**Where the first layer is and what its activation is** (:func:`find_first_conv`): the first
``nn.Conv2d`` *in execution order* (found with forward hooks during one forward pass, so the
input normalisation a model carries inside runs first and the conv sees normalised inputs,
which is what the filters act on). What follows the conv is read from the ``torch.fx`` graph:
a chain of single users made of an optional ``BatchNorm2d`` module and a ReLU (``nn.ReLU``,
``F.relu``, ``torch.relu`` or ``.relu()``). When the model cannot be traced, forward hooks give
the fallback: a ``BatchNorm2d`` / ``nn.ReLU`` module whose input is exactly the previous
output tensor. Anything else (pooling, another non-linearity) ends the chain; the activation
``a`` is then the conv output after the recognised part (``activation`` says which:
``"relu"``, ``"bn-relu"``, ``"bn"`` or ``"none"``). The forward pass is cut short after the
first conv (a hook raises), so the measurement costs one conv per batch.

Everything below the study is a pure function of tensors or arrays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import FilterlensError
from ..jsonable import to_jsonable

#: Group labels.
ROBUST, NORMAL, UNKNOWN = "robust", "normal", "unknown"
#: Per-model metrics compared between the groups.
FIRST_LAYER_METRICS = (
    "rel_change", "rel_change_nonsparse", "rel_change_pre", "pass_ratio", "low_freq_share", "spectral_centroid",
    "centre_peaked_share", "single_tap_share", "peak_energy_share",
)
#: The per-filter (output channel) metrics that are also compared, pooled over the models.
FILTER_METRICS = ("rel_change", "rel_change_pre", "pass_ratio", "low_freq_share", "spectral_centroid",
                  "centre_peaked_share", "single_tap_share", "peak_energy_share")
#: A kernel is "single-tap" when its largest tap carries at least this share of its energy.
SINGLE_TAP_SHARE = 0.9

_NORMAL_NAMES = {"normal", "standard", "clean", "natural", "none", "erm", "nominal"}


class FirstLayerError(FilterlensError):
    """The first layer could not be found or measured."""


def training_group(training: str | None) -> str:
    """``"normal"`` for normal training (``normal``, ``standard``, ``clean``...), ``"unknown"`` for
    ``None``/empty/``unknown``, else ``"robust"`` (``robust``, ``pgd``, ``fgsm-rs``, ``trades``...)."""
    if training is None:
        return UNKNOWN
    t = str(training).strip().lower()
    if not t or t == UNKNOWN:
        return UNKNOWN
    return NORMAL if t in _NORMAL_NAMES else ROBUST


# ---------------------------------------------------------------------------------------------
# Kernel shape and frequency measures (numpy, over (n, kh, kw) stacks)
# ---------------------------------------------------------------------------------------------


def _kernels(w: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(w, torch.Tensor):
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


def low_freq_share(kernels: np.ndarray | torch.Tensor, radius: int = 0) -> np.ndarray:
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


def spectral_centroid(kernels: np.ndarray | torch.Tensor, size: int = 32) -> np.ndarray:
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


def peak_energy_share(kernels: np.ndarray | torch.Tensor) -> np.ndarray:
    """``max_p w_p^2 / ||w||^2``: the energy share of the largest tap (anywhere); ``1/(kh kw)``
    for a constant kernel, 1 for a single-tap kernel; NaN for an all-zero kernel."""
    w = _kernels(kernels)
    e = (w**2).reshape(len(w), -1)
    total = e.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, e.max(axis=1, initial=0.0) / total, np.nan)


def single_tap(kernels: np.ndarray | torch.Tensor, min_share: float = SINGLE_TAP_SHARE) -> np.ndarray:
    """Kernels dominated by one tap anywhere: ``peak_energy_share >= min_share`` (default 0.9).

    Followed by a bias and a ReLU such a kernel is a (shifted) thresholding filter,
    ``relu(w_p x_p + b)``: on one input channel it passes a pixel only above ``-b / w_p``, the
    filters Madry et al. (2018) found in the first layer of PGD-trained MNIST models. Unlike
    :func:`centre_peaked` the tap need not sit at the centre. All-zero kernels are ``False``.
    """
    share = peak_energy_share(kernels)
    return np.nan_to_num(share, nan=0.0) >= min_share


def centre_peaked(kernels: np.ndarray | torch.Tensor, min_centre_share: float = 1 / 3) -> np.ndarray:
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


def sparse_kernels(weight: np.ndarray | torch.Tensor, threshold: float = 0.01) -> np.ndarray:
    """The paper's sparse kernels of one layer: ``max|w| <= threshold * max|W|`` (``(n,)`` bool)."""
    w = _kernels(weight)
    if not len(w):
        return np.zeros(0, dtype=bool)
    m = float(np.abs(w).max())
    return np.abs(w).reshape(len(w), -1).max(axis=1) <= threshold * m


# ---------------------------------------------------------------------------------------------
# Activation and perturbation measures (torch)
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Finding the first conv and its activation
# ---------------------------------------------------------------------------------------------


class _Stop(Exception):
    pass


@dataclass
class FirstConv:
    """The first conv of a model (in execution order) and what follows it.

    ``post`` holds the steps applied to the conv output to get the activation: ``BatchNorm``
    modules and the string ``"relu"``. ``activation`` names them (``"bn-relu"``, ``"relu"``,
    ``"bn"``, ``"none"``); ``found_by`` is ``"fx"`` or ``"hooks"``.
    """

    name: str
    conv: nn.Conv2d
    post: list = field(default_factory=list)
    activation: str = "none"
    found_by: str = "hooks"

    def activate(self, z: torch.Tensor) -> torch.Tensor:
        """The activation of conv output ``z`` (a new tensor; ``z`` is not changed)."""
        for step in self.post:
            z = F.relu(z) if step == "relu" else step(z)
        return z


_RELU_FUNCS = {F.relu, torch.relu}
_RELU_METHODS = {"relu"}


def _is_relu(node, modules: Mapping[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCS or getattr(node.target, "__name__", "") in ("relu", "relu_")
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return False


def _post_from_fx(model: nn.Module, conv_name: str) -> list | None:
    import torch.fx

    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception:
        return None
    modules = dict(gm.named_modules())
    node = next((n for n in gm.graph.nodes if n.op == "call_module" and n.target == conv_name), None)
    if node is None:
        return None
    post: list = []
    while len(node.users) == 1:
        (user,) = node.users
        is_bn = user.op == "call_module" and isinstance(modules.get(user.target), nn.modules.batchnorm._BatchNorm)
        if is_bn and not post:
            post.append(dict(model.named_modules())[user.target])
            node = user
            continue
        if _is_relu(user, modules):
            post.append("relu")
        break
    return post


def _first_conv_by_hooks(model: nn.Module, example: torch.Tensor) -> tuple[str, list]:
    """Run ``model`` on ``example`` and record the leaf modules in execution order with their
    input and output tensor ids; returns the first Conv2d's name and the BN/ReLU chain after it."""
    names = {m: n for n, m in model.named_modules()}
    order: list[tuple[str, nn.Module, int, int]] = []
    handles = []

    def hook(module, inputs, output):
        inp = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        order.append((names[module], module, id(inp) if inp is not None else -1, id(output)))

    for m in model.modules():
        if not list(m.children()):
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    except Exception as e:
        raise FirstLayerError(f"the model does not run on inputs of shape {tuple(example.shape[1:])}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
    finally:
        for h in handles:
            h.remove()
    first = next((i for i, (_, m, _, _) in enumerate(order) if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise FirstLayerError("the model has no nn.Conv2d that runs in its forward pass")
    post: list = []
    last_out = order[first][3]
    for name, m, inp, outp in order[first + 1:]:
        if inp != last_out:
            break
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not post:
            post.append(m)
            last_out = outp
            continue
        if isinstance(m, nn.ReLU):
            post.append("relu")
        break
    return order[first][0], post


def find_first_conv(model: nn.Module, example: torch.Tensor) -> FirstConv:
    """The first ``nn.Conv2d`` in execution order and the BN/ReLU that follow it (see the
    module docstring). ``example``: a batch (one image is enough) the model accepts."""
    name, post = _first_conv_by_hooks(model, example[:1])
    conv = dict(model.named_modules())[name]
    found_by = "hooks"
    fx_post = _post_from_fx(model, name)
    if fx_post is not None:
        post, found_by = fx_post, "fx"
    parts = ["bn" if step != "relu" else "relu" for step in post]
    return FirstConv(name, conv, post, "-".join(parts) if parts else "none", found_by)


def _capture(model: nn.Module, fc: FirstConv, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(conv input, conv output) for ``x``: hooks copy them and stop the forward pass."""
    box: dict[str, torch.Tensor] = {}

    def pre(_m, inputs):
        box["in"] = inputs[0].detach().clone()

    def post(_m, _inputs, output):
        box["out"] = output.detach().clone()
        raise _Stop

    h1 = fc.conv.register_forward_pre_hook(pre)
    h2 = fc.conv.register_forward_hook(post)
    try:
        with torch.no_grad():
            model(x)
    except _Stop:
        pass
    finally:
        h1.remove()
        h2.remove()
    if "out" not in box:
        raise FirstLayerError(f"the first conv {fc.name} did not run")
    return box["in"], box["out"]


# ---------------------------------------------------------------------------------------------
# The study
# ---------------------------------------------------------------------------------------------


@dataclass
class FirstLayerExample:
    """One image through one model's first layer, for the paper's figure."""

    model: str
    group: str
    weight: np.ndarray  # (c_out, c_in, kh, kw)
    x: np.ndarray  # (C, H, W) in [0, 1]
    x_adv: np.ndarray
    a_clean: np.ndarray  # (c_out, H', W')
    a_adv: np.ndarray
    label: int
    activation: str


@dataclass
class FirstLayerResult:
    """The outcome of :func:`first_layer_study`.

    - ``per_model``: one row per model (group, layer, accuracies on the images, the metrics);
    - ``per_filter``: one row per model and output channel of the first conv;
    - ``per_kernel``: one row per model and kernel ``W[o, i]`` (shape and frequency measures);
    - ``stats``: robust vs normal, per metric, at the model level (Mann-Whitney, bootstrap CI,
      Cohen's d over the models) and at the filter level (output channels pooled over the models
      of each group: descriptive, the filters of one model are not independent samples);
    - ``examples``: per model the first image through the layer (for the figure);
    - ``settings``, ``notes``.
    """

    per_model: pd.DataFrame
    per_filter: pd.DataFrame
    per_kernel: pd.DataFrame
    stats: pd.DataFrame
    examples: dict[str, FirstLayerExample]
    settings: dict
    notes: list[str] = field(default_factory=list)

    def to_dict(self, filters: bool = True) -> dict:
        """JSON-ready: settings, per-model rows, statistics, claim verdicts (and per-filter rows);
        NaN -> None."""
        out = {
            "settings": self.settings,
            "per_model": self.per_model.to_dict("records"),
            "stats": self.stats.to_dict("records"),
            "claims": first_layer_claims(self.stats).to_dict("records"),
            "notes": self.notes,
        }
        if filters:
            out["per_filter"] = self.per_filter.to_dict("records")
        return to_jsonable(out)

    def to_json(self, path: str | PathLike | None = None, indent: int = 2, filters: bool = True) -> str:
        text = json.dumps(self.to_dict(filters), indent=indent, allow_nan=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    def save(self, out_dir: str | PathLike) -> list[Path]:
        """Write ``per_model.csv``, ``per_filter.csv``, ``per_kernel.csv``, ``stats.csv`` and
        ``first_layer.json`` into ``out_dir`` (created); returns the paths."""
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, df in (("per_model", self.per_model), ("per_filter", self.per_filter),
                         ("per_kernel", self.per_kernel), ("stats", self.stats)):
            p = d / f"{name}.csv"
            df.to_csv(p, index=False)
            paths.append(p)
        p = d / "first_layer.json"
        self.to_json(p)
        paths.append(p)
        return paths


def _norm_models(models: Iterable) -> list[tuple[str, nn.Module, str | None, dict]]:
    out = []
    seen = set()
    for item in models:
        if not isinstance(item, (tuple, list)) or len(item) not in (3, 4):
            raise FirstLayerError("models are (name, module, training) or (name, module, training, extra columns)")
        name, module, training = item[0], item[1], item[2]
        extra = dict(item[3]) if len(item) == 4 and item[3] else {}
        if not isinstance(module, nn.Module):
            raise FirstLayerError(f"{name}: not a torch module")
        if str(name) in seen:
            raise FirstLayerError(f"the model name {name!r} is given twice")
        seen.add(str(name))
        out.append((str(name), module, training, extra))
    if not out:
        raise FirstLayerError("no models to study")
    return out


def _perturb(attacker: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, alpha: float | None,
             restarts: int, seed: int, batch_size: int) -> torch.Tensor:
    from ..robust.attacks import pgd

    gen = torch.Generator().manual_seed(seed)
    parts = []
    for s in range(0, len(x), batch_size):
        parts.append(pgd(attacker, x[s:s + batch_size], y[s:s + batch_size], eps, alpha=alpha, steps=steps,
                         restarts=restarts, generator=gen))
    return torch.cat(parts) if parts else x.clone()


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    correct = 0
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            correct += int((model(x[s:s + batch_size]).argmax(1) == y[s:s + batch_size]).sum())
    return correct / max(1, len(x))


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

    Returns a dict: ``first`` (:class:`FirstConv`), per-channel arrays ``rel_change``,
    ``rel_change_pre``, ``pass_ratio``, ``dead_share`` (share of images on which the channel's
    clean activation is all zero), the per-model scalars ``rel_change``/``rel_change_pre``/
    ``pass_ratio`` under ``model_*`` keys, and the example activations (when ``example_index``).
    ``model_rel_change_nonsparse`` leaves out the sparse channels (every kernel of ``W[o]`` has
    ``max|w| <= sparse_threshold * max|W|``): such a channel is its bias alone, a constant
    activation that no perturbation changes and that would only inflate ``||a(x)||``.
    """
    fc = first or find_first_conv(model, x[:1])
    gen = torch.Generator().manual_seed(seed)
    banks = [random_bank(fc.conv.weight, gen, match) for _ in range(n_banks)]
    num, den, num_pre, den_pre = [], [], [], []
    real = 0.0
    rand = 0.0
    example = None
    for s in range(0, len(x), batch_size):
        zin, zout = _capture(model, fc, x[s:s + batch_size])
        zin_adv, zout_adv = _capture(model, fc, x_adv[s:s + batch_size])
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


def kernel_table(weight: torch.Tensor | np.ndarray, *, radius: int = 0, centroid_size: int = 32,
                 min_centre_share: float = 1 / 3, single_tap_share: float = SINGLE_TAP_SHARE,
                 sparse_threshold: float = 0.01) -> pd.DataFrame:
    """One row per kernel ``W[o, i]``: ``out_channel, in_channel, l2, sparse, low_freq_share,
    spectral_centroid, centre_peaked, single_tap, peak_energy_share``."""
    w = weight.detach().cpu().double().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight, float)
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


def _kernel_aggregates(kt: pd.DataFrame, by: str | None) -> pd.DataFrame:
    """Energy-weighted frequency measures and non-sparse shares, per ``by`` or overall."""
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


def first_layer_stats(
    per_model: pd.DataFrame,
    per_filter: pd.DataFrame | None = None,
    metrics: Sequence[str] = FIRST_LAYER_METRICS,
    n_boot: int = 10_000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Robust (a) vs normal (b) per metric: model level, and filter level when ``per_filter``.

    Uses :func:`filterlens.analysis.stats.compare_values` (Mann-Whitney U, rank-biserial r,
    percentile bootstrap CI of the difference of the means, Cohen's d). Models of group
    ``unknown`` are left out. Columns: ``level, metric, n_robust, n_normal, mean_robust,
    mean_normal, diff, ci_low, ci_high, p_value, rank_biserial, cohens_d, note``.
    """
    from .stats import compare_values

    rows = []
    levels = [("model", per_model, "model")]
    if per_filter is not None and len(per_filter):
        pf = per_filter.assign(_key=per_filter["model"].astype(str) + "/" + per_filter["out_channel"].astype(str))
        levels.append(("filter", pf, "_key"))
    for level, table, key in levels:
        for metric in metrics:
            if metric not in table.columns:
                continue
            values = table.set_index(key)[metric].astype(float)
            group = table.set_index(key)["group"]
            res = compare_values(values[group == ROBUST], values[group == NORMAL], False, n_boot, ci, seed)
            note = res["note"]
            if level == "filter":
                note = "; ".join(x for x in ("filters pooled over models (not independent samples)", note) if x)
            rows.append({
                "level": level, "metric": metric, "n_robust": res["n_a"], "n_normal": res["n_b"],
                "mean_robust": res["mean_a"], "mean_normal": res["mean_b"], "diff": res["diff"],
                "ci_low": res["ci_low"], "ci_high": res["ci_high"], "p_value": res["p_value"],
                "rank_biserial": res["rank_biserial"], "cohens_d": res["cohens_d"], "note": note,
            })
    return pd.DataFrame(rows, columns=["level", "metric", "n_robust", "n_normal", "mean_robust", "mean_normal",
                                       "diff", "ci_low", "ci_high", "p_value", "rank_biserial", "cohens_d", "note"])


#: The parts of the paper's first-layer claim: (id, statement, metric, expected sign of robust - normal).
CLAIM_PARTS = (
    ("activations_change_less", "Robust first-layer activations change less under attack.", "rel_change", -1),
    ("centre_weighted", "Robust first layers have more centre-peaked filters.", "centre_peaked_share", +1),
    ("thresholding", "Robust first layers have more single-tap (thresholding) filters.", "single_tap_share", +1),
)


def first_layer_claims(stats: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Verdicts on the paper's first-layer claim from :func:`first_layer_stats`.

    Each part is decided at the model level when both groups have at least 2 models with a
    p-value, else at the filter level (filters pooled; weaker evidence, ``level`` says which):
    ``supported`` when the difference has the expected sign and ``p < alpha``,
    ``contradicted`` when it has the other sign and ``p < alpha``, else ``inconclusive``.
    """
    rows = []
    for cid, statement, metric, sign in CLAIM_PARTS:
        cells = stats[stats["metric"] == metric].set_index("level") if len(stats) else pd.DataFrame()
        cell, level = None, None
        for lv in ("model", "filter"):
            if lv in cells.index and np.isfinite(float(cells.loc[lv, "p_value"])):
                cell, level = cells.loc[lv], lv
                break
        if cell is None:
            rows.append({"claim": cid, "statement": statement, "metric": metric, "level": None,
                         "verdict": "inconclusive", "diff": float("nan"), "p_value": float("nan"),
                         "detail": "no test possible (too few models or filters per group)"})
            continue
        diff, p = float(cell["diff"]), float(cell["p_value"])
        verdict = "inconclusive" if not p < alpha else ("supported" if np.sign(diff) == sign else "contradicted")
        rows.append({"claim": cid, "statement": statement, "metric": metric, "level": level, "verdict": verdict,
                     "diff": diff, "p_value": p,
                     "detail": f"robust {float(cell['mean_robust']):.4g} vs normal {float(cell['mean_normal']):.4g}"
                     + (" (filters pooled over models)" if level == "filter" else "")})
    return pd.DataFrame(rows, columns=["claim", "statement", "metric", "level", "verdict", "diff", "p_value", "detail"])


def first_layer_study(
    models: Sequence[tuple],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    steps: int = 10,
    alpha: float | None = None,
    restarts: int = 1,
    transfer_from: nn.Module | tuple[str, nn.Module] | None = None,
    x_adv: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
    n_banks: int = 8,
    match: str = "kernel",
    radius: int = 0,
    centroid_size: int = 32,
    min_centre_share: float = 1 / 3,
    single_tap_share: float = SINGLE_TAP_SHARE,
    sparse_threshold: float = 0.01,
    seed: int = 0,
    batch_size: int = 256,
    example_index: int = 0,
    n_boot: int = 10_000,
    ci: float = 0.95,
    dataset: str | None = None,
) -> FirstLayerResult:
    """Do the first-layer filters of ``models`` eliminate adversarial perturbations?

    ``models``: ``(name, module, training)`` tuples (a 4th element, a dict, adds columns to the
    per-model row); ``training`` is ``"robust"``/``"normal"`` or a training method (see
    :func:`training_group`). Modules take ``x`` in [0, 1] (``(N, C, H, W)``) and are used in
    their current mode (put them in ``eval()``). For each model, L-inf PGD (``steps``,
    ``alpha``, ``restarts``; :func:`filterlens.robust.attacks.pgd`) crafts ``x_adv`` within
    ``eps`` against the model itself, or against ``transfer_from`` for all models, or
    ``x_adv`` is given (one tensor for all, or per model name). ``eps=0`` leaves the inputs
    unchanged. Then :func:`measure_first_layer` and :func:`kernel_table`; the statistics
    compare the robust with the normal models (:func:`first_layer_stats`).
    """
    entries = _norm_models(models)
    if x.dim() != 4 or len(x) != len(y):
        raise FirstLayerError(f"x must be (N, C, H, W) with one label each, got {tuple(x.shape)} and {len(y)} labels")
    if not 0 <= eps <= 1:
        raise FirstLayerError(f"eps must lie in [0, 1], got {eps}")
    source_name = None
    if isinstance(transfer_from, tuple):
        source_name, transfer_from = transfer_from
    elif transfer_from is not None:
        source_name = type(transfer_from).__name__
    shared_adv = None
    if isinstance(x_adv, torch.Tensor):
        shared_adv = x_adv
    elif transfer_from is not None:
        shared_adv = _perturb(transfer_from, x, y, eps, steps, alpha, restarts, seed, batch_size)
    example_index = min(max(0, int(example_index)), len(x) - 1)
    model_rows, filter_rows, kernel_frames, examples = [], [], [], {}
    notes: list[str] = []
    for name, module, training, extra in entries:
        group = training_group(training)
        if shared_adv is not None:
            adv, attack_src = shared_adv, (f"transfer:{source_name}" if transfer_from is not None else "given")
        elif isinstance(x_adv, Mapping) and name in x_adv:
            adv, attack_src = x_adv[name], "given"
        else:
            adv, attack_src = _perturb(module, x, y, eps, steps, alpha, restarts, seed, batch_size), "self"
        m = measure_first_layer(module, x, adv, n_banks=n_banks, seed=seed, match=match, batch_size=batch_size,
                                example_index=example_index, sparse_threshold=sparse_threshold)
        fc: FirstConv = m["first"]
        w = fc.conv.weight.detach()
        kt = kernel_table(w, radius=radius, centroid_size=centroid_size, min_centre_share=min_centre_share,
                          single_tap_share=single_tap_share, sparse_threshold=sparse_threshold)
        kagg = _kernel_aggregates(kt, None).iloc[0]
        kch = _kernel_aggregates(kt, "out_channel")
        linf = float((adv - x).abs().max()) if len(x) else 0.0
        model_rows.append({
            "model": name, "group": group, "training": training if training is not None else UNKNOWN,
            **extra,
            "dataset": dataset, "layer": fc.name, "activation": fc.activation, "found_by": fc.found_by,
            "in_channels": int(w.shape[1]) * fc.conv.groups, "out_channels": int(w.shape[0]),
            "kernel": f"{w.shape[-2]}x{w.shape[-1]}", "n_images": int(len(x)), "eps": float(eps),
            "attack": attack_src, "linf": linf,
            "clean_acc": _accuracy(module, x, y, batch_size), "adv_acc": _accuracy(module, adv, y, batch_size),
            "rel_change": m["model_rel_change"], "rel_change_nonsparse": m["model_rel_change_nonsparse"],
            "rel_change_pre": m["model_rel_change_pre"],
            "rel_change_channel_mean": m["model_rel_change_channel_mean"],
            "pass_ratio": m["model_pass_ratio"],
            "low_freq_share": kagg["low_freq_share"], "spectral_centroid": kagg["spectral_centroid"],
            "centre_peaked_share": kagg["centre_peaked_share"], "single_tap_share": kagg["single_tap_share"],
            "peak_energy_share": kagg["peak_energy_share"],
            "sparse_share": kagg["sparse_share"], "dead_share": float(np.mean(m["dead_share"])),
        })
        pf = pd.DataFrame({
            "model": name, "group": group, "out_channel": np.arange(w.shape[0]),
            "l2": w.double().flatten(1).norm(dim=1).numpy(),
            "rel_change": m["rel_change"], "rel_change_pre": m["rel_change_pre"], "pass_ratio": m["pass_ratio"],
            "dead_share": m["dead_share"], "sparse_channel": m["sparse_channel"],
        }).merge(kch, on="out_channel", how="left")
        filter_rows.append(pf)
        kernel_frames.append(kt.assign(model=name, group=group)[["model", "group", *kt.columns]])
        if m["example"] is not None:
            examples[name] = FirstLayerExample(
                name, group, w.double().numpy(), x[example_index].double().numpy(),
                adv[example_index].double().numpy(), m["example"][0], m["example"][1],
                int(y[example_index]), fc.activation)
        if fc.activation == "none":
            notes.append(f"{name}: no BN/ReLU recognised after {fc.name}; its activation is the conv output")
        if group == UNKNOWN:
            notes.append(f"{name}: training unknown, left out of the group statistics")
    per_model = pd.DataFrame(model_rows)
    per_filter = pd.concat(filter_rows, ignore_index=True)
    per_kernel = pd.concat(kernel_frames, ignore_index=True)
    stats = first_layer_stats(per_model, per_filter, n_boot=n_boot, ci=ci, seed=seed)
    settings = {
        "eps": float(eps), "attack": "pgd-linf", "steps": int(steps), "alpha": alpha, "restarts": int(restarts),
        "transfer_from": source_name, "n_images": int(len(x)), "n_banks": int(n_banks), "match": match,
        "radius": int(radius), "centroid_size": int(centroid_size), "min_centre_share": float(min_centre_share),
        "single_tap_share": float(single_tap_share), "sparse_threshold": float(sparse_threshold),
        "seed": int(seed), "n_boot": int(n_boot), "ci": float(ci),
        "dataset": dataset, "example_index": int(example_index),
    }
    return FirstLayerResult(per_model, per_filter, per_kernel, stats, examples, settings, notes)


__all__ = [
    "CLAIM_PARTS", "FILTER_METRICS", "FIRST_LAYER_METRICS", "first_layer_claims", "FirstConv", "FirstLayerError", "FirstLayerExample",
    "FirstLayerResult", "centre_peaked", "find_first_conv", "first_layer_stats", "first_layer_study",
    "kernel_table", "low_freq_share", "measure_first_layer", "pass_energies", "pass_ratio", "peak_energy_share",
    "random_bank", "relative_change", "single_tap", "sparse_kernels", "spectral_centroid", "training_group",
]
