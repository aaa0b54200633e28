"""The first-layer study: do robust first-layer filters eliminate adversarial perturbations?

Gavrikov & Keuper (2022) observed that adversarially trained CNNs learn centre-weighted,
"thresholding" first-layer filters whose activations change less when an adversarial
perturbation is added to the input; they showed a figure and measured nothing.
:func:`first_layer_study` measures it: for each model it crafts L-inf PGD perturbations ``d``
against the model itself (or transfers them from another model), feeds ``x`` and ``x + d``
through the model's first conv and its activation (:mod:`.tracing`), measures the response
(:mod:`.response`) and the kernels (:mod:`.kernels`), and compares the robust with the normal
models (:mod:`.stats`). The definitions are in ``docs/definitions.md``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from ..errors import FirstLayerError
from ..robust.attacks import pgd
from ..training import TrainingLabelError
from .kernels import kernel_aggregates, kernel_table
from .response import measure_first_layer
from .result import FirstLayerExample, FirstLayerResult
from .settings import FirstLayerSettings
from .stats import UNKNOWN, first_layer_stats, training_group
from .tracing import FirstConv

#: ``(name, module, training)`` or ``(name, module, training, extra per-model columns)``.
StudyModel = tuple


def first_layer_study(
    models: Sequence[StudyModel],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    settings: FirstLayerSettings | None = None,
    *,
    transfer_from: nn.Module | tuple[str, nn.Module] | None = None,
    x_adv: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
    dataset: str | None = None,
    **overrides,
) -> FirstLayerResult:
    """Do the first-layer filters of ``models`` eliminate adversarial perturbations?

    For each model, L-inf PGD crafts ``x_adv`` within ``eps`` against the model itself (or
    against ``transfer_from`` for all models, or ``x_adv`` is given); then
    :func:`~filterlens.firstlayer.response.measure_first_layer` and
    :func:`~filterlens.firstlayer.kernels.kernel_table`; the statistics compare the robust with
    the normal models (:func:`~filterlens.firstlayer.stats.first_layer_stats`).

    Parameters
    ----------
    models : sequence of tuple
        ``(name, module, training)``; a 4th element, a dict, adds columns to the model's
        per-model row. ``training`` is any word :func:`filterlens.training.training_label`
        accepts (``robust``, ``pgd``, ``normal`` ...) or None (unknown: measured, left out of
        the statistics). Modules take ``x`` in [0, 1] and are used in their current mode (put
        them in ``eval()``).
    x, y : Tensor
        Images ``(N, C, H, W)`` in [0, 1] and their labels ``(N,)``.
    eps : float
        The L-inf budget in [0, 1]; 0 leaves the inputs unchanged.
    settings : FirstLayerSettings, optional
        Attack, measure and statistics settings (default: ``FirstLayerSettings()``).
    transfer_from : nn.Module or (name, nn.Module), optional
        Craft the perturbations against this model and feed them to every model.
    x_adv : Tensor or mapping of name to Tensor, optional
        Given perturbed inputs: one tensor for all models, or per model name (the others are
        attacked).
    dataset : str, optional
        Recorded in the per-model rows and the settings.
    **overrides
        Fields of :class:`FirstLayerSettings` that replace those of ``settings``, e.g.
        ``steps=5, n_boot=2000``.

    Returns
    -------
    FirstLayerResult
        Per-model, per-filter and per-kernel tables, the robust-vs-normal statistics, one
        example image per model, the settings and notes.
    """
    s = replace(settings or FirstLayerSettings(), **overrides) if overrides else (settings or FirstLayerSettings())
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
        shared_adv = _perturb(transfer_from, x, y, eps, s.steps, s.alpha, s.restarts, s.seed, s.batch_size)
    example_index = min(max(0, int(s.example_index)), len(x) - 1)
    model_rows, filter_rows, kernel_frames, examples = [], [], [], {}
    notes: list[str] = []
    for name, module, training, extra in entries:
        if shared_adv is not None:
            adv, attack_src = shared_adv, (f"transfer:{source_name}" if transfer_from is not None else "given")
        elif isinstance(x_adv, Mapping) and name in x_adv:
            adv, attack_src = x_adv[name], "given"
        else:
            adv = _perturb(module, x, y, eps, s.steps, s.alpha, s.restarts, s.seed, s.batch_size)
            attack_src = "self"
        row, pf, kt, example, fc = _study_model(name, module, training, x, y, adv, s, example_index)
        lead = {k: row[k] for k in ("model", "group", "training")}  # extra columns follow these
        model_rows.append({**lead, **extra, **row, "dataset": dataset, "eps": float(eps), "attack": attack_src})
        filter_rows.append(pf)
        kernel_frames.append(kt)
        if example is not None:
            examples[name] = example
        if fc.activation == "none":
            notes.append(f"{name}: no BN/ReLU recognised after {fc.name}; its activation is the conv output")
        if row["group"] == UNKNOWN:
            notes.append(f"{name}: training unknown, left out of the group statistics")
    per_model = pd.DataFrame(model_rows)
    per_filter = pd.concat(filter_rows, ignore_index=True)
    per_kernel = pd.concat(kernel_frames, ignore_index=True)
    stats = first_layer_stats(per_model, per_filter, n_boot=s.n_boot, ci=s.ci, seed=s.seed)
    recorded = {
        "eps": float(eps), "attack": "pgd-linf", "steps": int(s.steps), "alpha": s.alpha, "restarts": int(s.restarts),
        "transfer_from": source_name, "n_images": int(len(x)), "n_banks": int(s.n_banks), "match": s.match,
        "radius": int(s.radius), "centroid_size": int(s.centroid_size), "min_centre_share": float(s.min_centre_share),
        "single_tap_share": float(s.single_tap_share), "sparse_threshold": float(s.sparse_threshold),
        "seed": int(s.seed), "n_boot": int(s.n_boot), "ci": float(s.ci),
        "dataset": dataset, "example_index": int(example_index),
    }
    return FirstLayerResult(per_model, per_filter, per_kernel, stats, examples, recorded, notes)


def _study_model(name: str, module: nn.Module, training, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor,
                 s: FirstLayerSettings, example_index: int):
    """One model's per-model row, per-filter and per-kernel tables, example and first conv."""
    group = training_group(training)
    m = measure_first_layer(module, x, adv, n_banks=s.n_banks, seed=s.seed, match=s.match,
                            batch_size=s.batch_size, example_index=example_index,
                            sparse_threshold=s.sparse_threshold)
    fc: FirstConv = m["first"]
    w = fc.conv.weight.detach()
    kt = kernel_table(w, radius=s.radius, centroid_size=s.centroid_size, min_centre_share=s.min_centre_share,
                      single_tap_share=s.single_tap_share, sparse_threshold=s.sparse_threshold)
    kagg = kernel_aggregates(kt).iloc[0]
    row = {
        "model": name, "group": group, "training": training if training is not None else UNKNOWN,
        "dataset": None, "layer": fc.name, "activation": fc.activation, "found_by": fc.found_by,
        "in_channels": int(w.shape[1]) * fc.conv.groups, "out_channels": int(w.shape[0]),
        "kernel": f"{w.shape[-2]}x{w.shape[-1]}", "n_images": int(len(x)), "eps": None,
        "attack": None, "linf": float((adv - x).abs().max()) if len(x) else 0.0,
        "clean_acc": _accuracy(module, x, y, s.batch_size), "adv_acc": _accuracy(module, adv, y, s.batch_size),
        "rel_change": m["model_rel_change"], "rel_change_nonsparse": m["model_rel_change_nonsparse"],
        "rel_change_pre": m["model_rel_change_pre"],
        "rel_change_channel_mean": m["model_rel_change_channel_mean"],
        "pass_ratio": m["model_pass_ratio"],
        "low_freq_share": kagg["low_freq_share"], "spectral_centroid": kagg["spectral_centroid"],
        "centre_peaked_share": kagg["centre_peaked_share"], "single_tap_share": kagg["single_tap_share"],
        "peak_energy_share": kagg["peak_energy_share"],
        "sparse_share": kagg["sparse_share"], "dead_share": float(np.mean(m["dead_share"])),
    }
    pf = pd.DataFrame({
        "model": name, "group": group, "out_channel": np.arange(w.shape[0]),
        "l2": w.double().flatten(1).norm(dim=1).numpy(),
        "rel_change": m["rel_change"], "rel_change_pre": m["rel_change_pre"], "pass_ratio": m["pass_ratio"],
        "dead_share": m["dead_share"], "sparse_channel": m["sparse_channel"],
    }).merge(kernel_aggregates(kt, "out_channel"), on="out_channel", how="left")
    kernels = kt.assign(model=name, group=group)[["model", "group", *kt.columns]]
    example = None
    if m["example"] is not None:
        example = FirstLayerExample(
            name, group, w.double().numpy(), x[example_index].double().numpy(),
            adv[example_index].double().numpy(), m["example"][0], m["example"][1],
            int(y[example_index]), fc.activation)
    return row, pf, kernels, example, fc


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
        try:
            training_group(training)
        except TrainingLabelError as exc:
            raise FirstLayerError(f"{name}: {exc}") from None
        seen.add(str(name))
        out.append((str(name), module, training, extra))
    if not out:
        raise FirstLayerError("no models to study")
    return out


def _perturb(attacker: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, alpha: float | None,
             restarts: int, seed: int, batch_size: int) -> torch.Tensor:
    """L-inf PGD against ``attacker``, batch by batch, from one seeded generator."""
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


__all__ = ["StudyModel", "first_layer_study"]
