"""L-inf adversarial attacks on models that take inputs in [0, 1]: FGSM, PGD, and AutoAttack.

The attacks never change the model's mode (``train``/``eval``): callers decide. They compute
gradients with respect to the input only (``torch.autograd.grad``), so parameter gradients are
left untouched.
"""

from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F

from ..budget import parse_fraction
from ..errors import FilterlensError


class AttackError(FilterlensError):
    """An attack could not be set up (bad budget, missing optional dependency)."""


def parse_eps(value: str | float | int) -> float:
    """``"8/255"`` -> 0.0313..., ``"0.03"`` -> 0.03; a budget must lie in [0, 1]."""
    try:
        eps = parse_fraction(value)
    except ValueError:
        raise AttackError(f"cannot read the budget {value!r}; write it as 8/255 or 0.03") from None
    if not (0.0 <= eps <= 1.0):
        raise AttackError(f"the budget {value!r} is outside [0, 1] (inputs are in [0, 1])")
    return eps


def format_eps(eps: float) -> str:
    """``0.0313...`` -> ``"8/255"`` when it is a whole number of 255ths, else the decimal."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) > 0:
        return f"{round(k)}/255"
    return f"{eps:g}"


def _check(eps: float, x: torch.Tensor) -> None:
    if eps < 0:
        raise AttackError(f"the budget must be >= 0, got {eps}")
    if x.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise AttackError(f"inputs must be floating point in [0, 1], got {x.dtype}")


def _input_grad(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gradient of the summed CE loss w.r.t. the input, per-example loss, logits)."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), x_adv)
    return grad, loss.detach(), logits.detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Fast gradient sign method: one step of size ``eps`` from ``x``, clipped to [0, 1]."""
    _check(eps, x)
    grad, _, _ = _input_grad(model, x, y)
    return (x + eps * grad.sign()).clamp_(0.0, 1.0).detach()


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    alpha: float | None = None,
    steps: int = 10,
    restarts: int = 1,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L-inf projected gradient descent (Madry et al. 2018) on the cross-entropy loss.

    ``alpha`` defaults to ``2.5 * eps / steps``. With ``random_start`` each restart begins at a
    uniform point of the eps-ball. Every iterate is scored, and each example keeps its worst case
    over all steps and restarts: a misclassified point beats a correctly classified one, and
    among equals the higher loss wins. The result lies in the eps-ball around ``x`` and in [0, 1].
    """
    _check(eps, x)
    if steps < 0 or restarts < 1:
        raise AttackError("PGD needs steps >= 0 and restarts >= 1")
    if eps == 0:
        return x.detach().clone()
    alpha = 2.5 * eps / max(steps, 1) if alpha is None else float(alpha)
    x = x.detach()
    lo = (x - eps).clamp_(min=0.0)
    hi = (x + eps).clamp_(max=1.0)
    best = x.clone()
    best_wrong = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    best_loss = torch.full((len(x),), -float("inf"), device=x.device)

    def keep(cand: torch.Tensor, loss: torch.Tensor, logits: torch.Tensor) -> None:
        wrong = logits.argmax(1) != y
        better = (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
        if better.any():
            best[better] = cand[better]
            best_loss[better] = loss[better]
            best_wrong[better] = wrong[better]

    for _ in range(restarts):
        if random_start:
            # drawn on the generator's device, so a CPU generator gives the same starts on any device
            gdev = generator.device if generator is not None else x.device
            noise = torch.rand(x.shape, generator=generator, device=gdev, dtype=x.dtype).to(x.device)
            x_adv = torch.max(torch.min(x + (2 * noise - 1) * eps, hi), lo)
        else:
            x_adv = x.clone()
        for _ in range(steps):
            grad, loss, logits = _input_grad(model, x_adv, y)
            keep(x_adv, loss, logits)
            x_adv = torch.max(torch.min(x_adv + alpha * grad.sign(), hi), lo)
        with torch.no_grad():
            logits = model(x_adv)
            keep(x_adv, F.cross_entropy(logits, y, reduction="none"), logits)
    return best.detach()


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    version: str = "standard",
    attacks: list[str] | None = None,
    batch_size: int = 250,
    seed: int = 0,
    verbose: bool = False,
    n_iter: int | None = None,
    n_restarts: int | None = None,
) -> torch.Tensor:
    """AutoAttack (Croce & Hein 2020) through ``pyautoattack``; returns the adversarial inputs.

    ``version`` is ``standard`` (APGD-CE, APGD-T, FAB-T, Square), ``plus``, ``rand`` or, with
    ``attacks`` (e.g. ``["apgd-ce", "apgd-t"]``), ``custom``. ``n_iter``/``n_restarts`` override the
    iterations and restarts of the APGD attacks (for quick checks; the published numbers use the defaults).
    """
    _check(eps, x)
    try:
        from pyautoattack import AutoAttack
    except ImportError:
        raise AttackError("AutoAttack needs the package pyautoattack: pip install 'filterlens[attack]'") from None
    if attacks:
        version = "custom"
    aa = AutoAttack(model, attacks=list(attacks) if attacks else None, device=x.device, eps=float(eps),
                    norm="Linf", seed=seed, version=version)
    aa.verbose = verbose
    for attack in (aa.apgd, aa.apgd_targeted):
        if n_iter is not None:
            attack.n_iter = int(n_iter)
        if n_restarts is not None:
            attack.n_restarts = int(n_restarts)
    x_adv, _ = aa.run_standard_evaluation(x.detach(), y.detach(), batch_size=batch_size)
    return x_adv.detach()
