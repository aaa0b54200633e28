"""Attacks and adversarial training do what they are for, not just something bounded and finite.

Every attack must raise the loss it maximises and lower the accuracy of a small trained model;
each kind of adversarial training must make a model more robust than normal training with the
same seed. A sign flipped anywhere (the attack descends instead of ascending) fails these tests.

The task (a classic robust/non-robust feature split, after Tsipras et al. 2019): 8x8 grey
images of two classes. The 2x2 top-left corner is 0.5 +- 0.2 (a *robust* feature: an L-inf
budget of 0.1 cannot flip it) and the other 60 pixels are 0.5 +- 0.05 (a *non-robust* feature:
each pixel is weak but together they are the strongest signal in L2, and 0.1 flips them all).
Pixel noise 0.05. A linear model trained normally leans on the 60 pixels and falls to about 0 %
under PGD at eps 0.1; adversarial training must move its weight to the corner (about 100 %).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from filterlens.data import ArrayDataset
from filterlens.robust import TrainConfig, clean_accuracy, fgsm, pgd, pgd_accuracy, train_model
from filterlens.robust.train import _fgsm_rs, _pgd_train, _trades_adv

EPS = 0.1


def _split_task(n: int, seed: int) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    s = np.where(y == 1, 1.0, -1.0)[:, None, None]
    x = 0.5 + 0.05 * s + rng.normal(0, 0.05, (n, 8, 8))
    x[:, :2, :2] = 0.5 + 0.2 * s + rng.normal(0, 0.05, (n, 2, 2))
    x = np.clip(x, 0, 1)[..., None]
    return ArrayDataset((x * 255).round().astype(np.uint8), y.astype(np.int64), ("minus", "plus"), "split", "train")


class _Centre(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) / 0.1


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(_Centre(), nn.Flatten(), nn.Linear(64, 2))


def _train(method: str, seed: int = 0, **kw) -> nn.Module:
    model = _linear(seed)
    cfg = dict(method=method, eps=EPS, epochs=4, batch_size=32, lr=0.02, crop_padding=0, flip=False,
               threads=1, seed=seed)
    if method in ("pgd", "trades"):
        cfg["attack_steps"] = 3
    cfg.update(kw)
    train_model(model, _split_task(512, 0), TrainConfig(**cfg), progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    return _split_task(256, 1).tensors()


@pytest.fixture(scope="module")
def normal_model() -> nn.Module:
    return _train("normal")


def _ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def _kl(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> float:
    with torch.no_grad():
        p = F.softmax(model(x), 1)
        return float(F.kl_div(F.log_softmax(model(x_adv), 1), p, reduction="batchmean"))


def _in_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> bool:
    return bool((x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1)


# --- the evaluation attacks ---------------------------------------------------------------------

def test_the_normal_model_is_accurate_and_not_robust(normal_model, test_set) -> None:
    x, y = test_set
    assert clean_accuracy(normal_model, x, y) > 0.98
    assert pgd_accuracy(normal_model, x, y, EPS, steps=10) < 0.1


def test_fgsm_raises_the_loss_of_every_example_and_lowers_accuracy(normal_model, test_set) -> None:
    x, y = test_set
    x_adv = fgsm(normal_model, x, y, EPS)
    assert _in_ball(x_adv, x, EPS)
    clean, adv = _ce(normal_model, x, y), _ce(normal_model, x_adv, y)
    # For a linear model one signed-gradient step is the exact worst case: no example may gain.
    assert bool((adv > clean).all())
    assert float(adv.mean()) > float(clean.mean()) + 1.0
    assert clean_accuracy(normal_model, x_adv, y) < 0.1
    # A budget too small to flip the non-robust pixels leaves the accuracy where it was.
    assert clean_accuracy(normal_model, fgsm(normal_model, x, y, 0.005), y) > 0.9


@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_raises_the_loss_and_lowers_accuracy(normal_model, test_set, random_start: bool) -> None:
    x, y = test_set
    g = torch.Generator().manual_seed(0)
    x_adv = pgd(normal_model, x, y, EPS, steps=10, random_start=random_start, generator=g)
    assert _in_ball(x_adv, x, EPS)
    clean, adv = _ce(normal_model, x, y), _ce(normal_model, x_adv, y)
    assert bool((adv > clean).all())
    # PGD ends at a corner of the ball for a linear model: at least as strong as FGSM.
    assert float(adv.mean()) >= float(_ce(normal_model, fgsm(normal_model, x, y, EPS), y).mean()) - 1e-4
    assert clean_accuracy(normal_model, x_adv, y) < 0.1


def test_pgd_finds_no_more_than_the_budget_allows(normal_model, test_set) -> None:
    """At a small budget PGD must not reach the accuracy of a large one (a wrong projection would)."""
    x, y = test_set
    assert pgd_accuracy(normal_model, x, y, 0.005, steps=10) > 0.9


def test_autoattack_raises_the_loss(normal_model, test_set) -> None:
    pytest.importorskip("pyautoattack")
    from filterlens.robust import autoattack

    x, y = test_set
    x, y = x[:32], y[:32]
    x_adv = autoattack(normal_model, x, y, EPS, attacks=["apgd-ce"], n_iter=10, n_restarts=1)
    assert _in_ball(x_adv, x, EPS)
    assert float(_ce(normal_model, x_adv, y).mean()) > float(_ce(normal_model, x, y).mean())
    assert clean_accuracy(normal_model, x_adv, y) < 0.1


# --- the training inner maximisations -----------------------------------------------------------

def test_fgsm_rs_inner_attack_raises_the_loss(normal_model, test_set) -> None:
    x, y = test_set
    x_adv = _fgsm_rs(normal_model, x, y, EPS, 1.25 * EPS, torch.Generator().manual_seed(0))
    assert _in_ball(x_adv, x, EPS)
    assert float(_ce(normal_model, x_adv, y).mean()) > float(_ce(normal_model, x, y).mean()) + 1.0
    # From a uniform start, a step of 1.25 eps reaches the ball's face on about 5/8 of the pixels.
    assert clean_accuracy(normal_model, x_adv, y) < 0.5


def test_training_attacks_start_uniformly_in_the_ball(normal_model, test_set) -> None:
    """FGSM-RS and PGD training start at a uniform point of the eps-ball (Wong et al. 2020; Madry
    et al. 2018): with no step taken, the start is all that is left. |U(-eps, eps)| has mean eps/2."""
    x, y = test_set
    x = x.clamp(EPS, 1 - EPS)  # no pixel near the box, so no clipping
    for attack in (lambda g: _fgsm_rs(normal_model, x, y, EPS, 0.0, g),
                   lambda g: _pgd_train(normal_model, x, y, EPS, EPS / 4, 0, g)):
        d1 = attack(torch.Generator().manual_seed(0)) - x
        d2 = attack(torch.Generator().manual_seed(1)) - x
        assert float(d1.abs().max()) <= EPS + 1e-6
        assert float(d1.abs().mean()) == pytest.approx(EPS / 2, rel=0.05)
        assert float(d1.mean()) == pytest.approx(0.0, abs=0.01 * EPS)  # symmetric
        assert not torch.equal(d1, d2)


def test_pgd_inner_attack_raises_the_loss(normal_model, test_set) -> None:
    x, y = test_set
    x_adv = _pgd_train(normal_model, x, y, EPS, 2.5 * EPS / 3, 3, torch.Generator().manual_seed(0))
    assert _in_ball(x_adv, x, EPS)
    assert bool((_ce(normal_model, x_adv, y) > _ce(normal_model, x, y)).all())
    assert clean_accuracy(normal_model, x_adv, y) < 0.1


def test_trades_inner_attack_raises_the_kl(normal_model, test_set) -> None:
    x, y = test_set
    normal_model.train()  # TRADES switches to eval for its attack and must restore the mode
    x_adv = _trades_adv(normal_model, x, EPS, EPS / 4, 5, torch.Generator().manual_seed(0))
    assert normal_model.training
    normal_model.eval()
    assert _in_ball(x_adv, x, EPS)
    # The KL from the clean prediction grows far beyond that of the tiny random start.
    start = (x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert _kl(normal_model, x, x_adv) > 1.0 > 100 * _kl(normal_model, x, start)
    # The KL's gradient vanishes at the start, so the first step is nearly random: a looser bound.
    assert clean_accuracy(normal_model, x_adv, y) < 0.6


# --- adversarial training makes the model robust ------------------------------------------------

@pytest.mark.parametrize("method", ["fgsm-rs", "pgd", "trades"])
def test_adversarial_training_raises_robust_accuracy_over_normal_training(method, normal_model, test_set) -> None:
    x, y = test_set
    robust = _train(method)  # same seed, data, schedule and epochs as ``normal_model``
    normal_acc = pgd_accuracy(normal_model, x, y, EPS, steps=10)
    robust_acc = pgd_accuracy(robust, x, y, EPS, steps=10)
    assert clean_accuracy(robust, x, y) > 0.9
    assert robust_acc > 0.7 > 0.1 > normal_acc, (method, robust_acc, normal_acc)


def test_eps_warmup_still_ends_robust(normal_model, test_set) -> None:
    x, y = test_set
    robust = _train("pgd", eps_warmup=0.5)
    assert pgd_accuracy(robust, x, y, EPS, steps=10) > 0.7
