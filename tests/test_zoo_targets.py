"""The bundled CIFAR-10 zoo meets the targets it is shipped for (issue #14), checked on its files.

- every card's numbers come from the recipe's evaluation (whole test split, PGD-20 at 8/255 on 1000);
- normal models >= 85 % clean, robust models >= 35 % under PGD-20;
- the weights are the ones the cards describe: clean accuracy on the package's 500-image sample
  agrees with the card's test-set accuracy (binomial tolerance);
- the pooled PCA spectrum entropy, computed here in plain numpy from the weights, equals what
  ``filterlens compare`` reports, and separates the groups as the README says.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from filterlens import zoo
from filterlens.robust.attacks import parse_eps

CIFAR = [m for m in zoo.list_models() if m.get("dataset") == "cifar10"]
NORMAL = [m for m in CIFAR if m["training"] == "normal"]
ROBUST = [m for m in CIFAR if m["training"] != "normal"]

pytestmark = pytest.mark.skipif(len(NORMAL) < 4 or len(ROBUST) < 4,
                                reason="the bundled zoo has fewer than 4 CIFAR-10 models per arm")


def _cards() -> dict[str, dict]:
    from filterlens.robust.card import read_card

    return {m["name"]: read_card(zoo.model_path(m["name"]).with_suffix(".json")) for m in CIFAR}


def plain_pooled_entropy(weights: dict[str, np.ndarray], threshold: float = 0.01) -> float:
    """science.md's pooled PCA spectrum entropy, written out: per 3x3 layer drop the filters with
    max|w| <= 1 % of the layer's max, scale the rest by their l-inf norm, pool all layers, and take
    the base-10 entropy of the normalised eigenvalues of the 9x9 covariance."""
    rows = []
    for w in weights.values():
        if w.ndim != 4 or w.shape[2:] != (3, 3):
            continue
        f = w.reshape(-1, 9).astype(np.float64)
        peak = np.abs(f).max(axis=1)
        f = f[peak > threshold * peak.max()]
        rows.append(f / np.abs(f).max(axis=1, keepdims=True))
    x = np.concatenate(rows)
    ev = np.clip(np.linalg.eigvalsh(np.cov(x, rowvar=False)), 0, None)
    p = ev[ev > 0] / ev.sum()
    return float(-(p * np.log10(p)).sum())


def _weights(name: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(zoo.model_path(name))


def test_cards_record_the_recipes_evaluation_and_meet_the_accuracy_targets():
    cards = _cards()
    for name, card in cards.items():
        res = card["results"]
        assert res["clean"]["n"] == 10000, name  # the whole test split
        if card["robust"]:
            pgd = res["pgd"]
            assert pgd["steps"] == 20 and pgd["n"] == 1000 and parse_eps(pgd["eps_str"]) == pytest.approx(8 / 255)
            assert pgd["accuracy"] >= 0.35, name
        else:
            assert res["clean"]["accuracy"] >= 0.85, name


def test_cards_record_their_recipe_entry_and_device():
    """Each bundled model was trained by the recipe's entry of its name, on a device its card names."""
    from dataclasses import asdict

    from filterlens.zoo.recipe import get

    for name, card in _cards().items():
        assert card["recipe"] == asdict(get(name)), name
        assert card["device"].split(":")[0] in ("cpu", "cuda"), name
        assert {h.get("device", "cpu") for h in card["history"]} <= {"cpu", "cuda"}, name


def test_weights_are_the_ones_the_cards_describe():
    from filterlens.data.sample import load_cifar10_sample
    from filterlens.robust import clean_accuracy, load_module_and_card

    sample = load_cifar10_sample()
    x, y = sample.tensors()
    torch.set_num_threads(1)
    for m in CIFAR:
        module, card = load_module_and_card(zoo.model_path(m["name"]))
        acc = clean_accuracy(module.eval(), x, y)
        p = card["results"]["clean"]["accuracy"]
        tolerance = 4 * np.sqrt(p * (1 - p) / len(y))  # 4 sigma of a 500-image estimate
        assert abs(acc - p) <= tolerance, (m["name"], acc, p)


def test_pooled_entropy_matches_compare_and_separates_the_groups(tmp_path):
    from filterlens.analysis import compare_db
    from filterlens.demo import build_zoo_db

    db = build_zoo_db(tmp_path / "zoo.db")
    res = compare_db(db, n_boot=50)
    per_model = res.pca_entropy[res.pca_entropy.scope == "model"].set_index("name").pca_entropy
    plain = {m["name"]: plain_pooled_entropy(_weights(m["name"])) for m in CIFAR}
    for name, value in plain.items():
        assert per_model[name] == pytest.approx(value, abs=1e-9), name
    normal = [plain[m["name"]] for m in NORMAL]
    robust = [plain[m["name"]] for m in ROBUST]
    assert max(normal) <= 0.86  # trained filters, far from the random-init 0.954
    assert min(robust) >= max(normal) + 0.03  # every robust model 0.03 above every normal one
