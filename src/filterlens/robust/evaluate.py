"""Clean and adversarial accuracy of a classifier on inputs in [0, 1]."""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn as nn

from .attacks import autoattack, format_eps, pgd


def _batches(n: int, batch_size: int):
    for s in range(0, n, batch_size):
        yield slice(s, min(s + batch_size, n))


def _prep(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def _is_channels_last(model: nn.Module) -> bool:
    for p in model.parameters():
        if p.dim() == 4:
            return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    return False


def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 500) -> float:
    """Top-1 accuracy in eval mode, under ``torch.inference_mode``."""
    was_training = model.training
    model.eval()
    cl = _is_channels_last(model)
    correct = 0
    with torch.inference_mode():
        for sl in _batches(len(x), batch_size):
            correct += int((model(_prep(x[sl], cl)).argmax(1) == y[sl]).sum())
    model.train(was_training)
    return correct / max(len(x), 1)


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 250,
    progress: Callable[[int], None] | None = None,
) -> float:
    """Accuracy on ``attack(model, x, y)`` (eval mode); examples already misclassified are not attacked."""
    was_training = model.training
    model.eval()
    cl = _is_channels_last(model)
    correct = 0
    for sl in _batches(len(x), batch_size):
        xb, yb = _prep(x[sl], cl), y[sl]
        with torch.inference_mode():
            ok = model(xb).argmax(1) == yb
        if ok.any():
            xa = attack(model, xb[ok].clone(), yb[ok])
            with torch.inference_mode():
                correct += int((model(_prep(xa, cl)).argmax(1) == yb[ok]).sum())
        if progress:
            progress(sl.stop - sl.start)
    model.train(was_training)
    return correct / max(len(x), 1)


def pgd_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    steps: int = 20,
    alpha: float | None = None,
    restarts: int = 1,
    seed: int = 0,
    batch_size: int = 250,
    progress: Callable[[int], None] | None = None,
) -> float:
    g = torch.Generator().manual_seed(seed)  # on the CPU: the same random starts on every device
    return robust_accuracy(
        model, x, y, lambda m, xb, yb: pgd(m, xb, yb, eps, alpha=alpha, steps=steps, restarts=restarts, generator=g),
        batch_size=batch_size, progress=progress,
    )


def autoattack_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, version: str = "standard",
    batch_size: int = 250, seed: int = 0,
) -> float:
    was_training = model.training
    model.eval()
    x_adv = autoattack(model, x, y, eps, version=version, batch_size=batch_size, seed=seed)
    acc = clean_accuracy(model, x_adv, y, batch_size=batch_size)
    model.train(was_training)
    return acc


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    attack: str = "pgd",
    n_attack: int | None = 1000,
    steps: int = 20,
    restarts: int = 1,
    alpha: float | None = None,
    seed: int = 0,
    version: str = "standard",
) -> dict:
    """Clean accuracy on all of ``(x, y)`` and robust accuracy on its first ``n_attack`` examples.

    Returns ``{"clean": {...}, attack: {...}}`` ready for a model card (``attack`` = ``pgd`` or
    ``autoattack``). Pass a shuffled, class-balanced subset (``ArrayDataset.subset``) so the first
    ``n_attack`` examples are representative.
    """
    n = len(x) if n_attack is None else min(n_attack, len(x))
    return {"clean": _clean_result(model, x, y),
            attack: attack_result(model, x[:n], y[:n], eps, attack=attack, steps=steps, restarts=restarts,
                                  alpha=alpha, seed=seed, version=version)}


def _clean_result(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    t = time.perf_counter()
    return {"accuracy": clean_accuracy(model, x, y), "n": len(x), "seconds": round(time.perf_counter() - t, 2)}


def attack_result(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    attack: str = "pgd",
    steps: int = 20,
    restarts: int = 1,
    alpha: float | None = None,
    seed: int = 0,
    version: str = "standard",
) -> dict:
    """Robust accuracy on all of ``(x, y)`` under ``attack`` (``pgd`` or ``autoattack``), with its settings."""
    t = time.perf_counter()
    common = {"n": len(x), "eps": eps, "eps_str": format_eps(eps), "norm": "Linf", "seed": seed}
    if attack == "pgd":
        alpha_v = 2.5 * eps / max(steps, 1) if alpha is None else alpha
        acc = pgd_accuracy(model, x, y, eps, steps=steps, alpha=alpha_v, restarts=restarts, seed=seed)
        result = {"accuracy": acc, **common, "steps": steps, "alpha": alpha_v, "restarts": restarts}
    elif attack == "autoattack":
        acc = autoattack_accuracy(model, x, y, eps, version=version, seed=seed)
        result = {"accuracy": acc, **common, "version": version}
    else:
        from .attacks import AttackError

        raise AttackError(f"unknown attack {attack!r}; use pgd or autoattack")
    result["seconds"] = round(time.perf_counter() - t, 2)
    return result


def evaluate_dataset(
    model: nn.Module,
    test,
    eps: float,
    *,
    attack: str = "pgd",
    n_clean: int | None = None,
    n_attack: int = 1000,
    subset_seed: int = 0,
    steps: int = 20,
    restarts: int = 1,
    alpha: float | None = None,
    seed: int = 0,
    version: str = "standard",
) -> dict:
    """:func:`evaluate` on an :class:`~filterlens.data.ArrayDataset` (usually the test split), on the model's device.

    Clean accuracy uses ``test.subset(n_clean)`` (all of it by default); the attack uses the fixed,
    class-balanced ``test.subset(n_attack, seed=subset_seed)``.
    """
    dev = next(model.parameters()).device  # evaluate where the model is
    clean_ds = test.subset(n_clean, seed=subset_seed)
    x, y = (t.to(dev) for t in clean_ds.tensors())
    out = {"clean": _clean_result(model, x, y)}
    xa, ya = (t.to(dev) for t in test.subset(n_attack, seed=subset_seed).tensors())
    res = attack_result(model, xa, ya, eps, attack=attack, steps=steps, restarts=restarts, alpha=alpha,
                        seed=seed, version=version)
    out[attack] = {**res, "subset_seed": subset_seed, "split": test.split}
    out["clean"]["split"] = test.split
    return out
