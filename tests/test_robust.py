"""filterlens.robust: attacks, training (deterministic), evaluation, model files + cards; the CLI;
the zoo recipe."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from filterlens.data import ArrayDataset
from filterlens.errors import FilterlensError
from filterlens.robust import (
    TrainConfig, clean_accuracy, fgsm, load_module_and_card, parse_eps, pgd, pgd_accuracy, read_card, save_model,
    train_model, update_card,
)
from filterlens.robust.attacks import format_eps
from filterlens.robust.card import ModelFileError

ZOO = Path(__file__).resolve().parents[1] / "src" / "filterlens" / "zoo"


# --- a tiny synthetic task: the class is the brightness of the image ---------------------------

def _bright_task(n: int = 256, hw: int = 8, seed: int = 0) -> ArrayDataset:
    """Class 0: pixels around 0.35; class 1: around 0.65 (noise 0.05). An eps of 0.2 flips it."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    base = np.where(y == 1, 0.65, 0.35)[:, None, None, None]
    x = np.clip(base + rng.normal(0, 0.05, (n, hw, hw, 1)), 0, 1)
    return ArrayDataset((x * 255).round().astype(np.uint8), y.astype(np.int64), ("dark", "bright"), "bright", "train")


def _tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, 2))


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=32, lr=0.05, crop_padding=0, flip=True, threads=1, seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    ds = _bright_task()
    model = _tiny_net()
    train_model(model, ds, _cfg(method="normal", epochs=4), progress=False)
    x, y = _bright_task(n=64, seed=1).tensors()
    return model, x, y


# --- budgets ------------------------------------------------------------------------------------

def test_parse_eps() -> None:
    assert parse_eps("8/255") == pytest.approx(8 / 255)
    assert parse_eps("0.03") == pytest.approx(0.03)
    assert parse_eps(0.3) == 0.3
    assert format_eps(8 / 255) == "8/255" and format_eps(0.3) == "0.3"
    for bad in ("eight", "8/0", "2", "-0.1", ""):
        with pytest.raises(FilterlensError):
            parse_eps(bad)


# --- attacks ------------------------------------------------------------------------------------

def test_attacks_respect_eps_ball_and_box(trained) -> None:
    model, x, y = trained
    x = x.clone()
    x[:4] = 0.0  # examples at the edges of the box
    x[4:8] = 1.0
    eps = 0.1
    g = torch.Generator().manual_seed(0)
    for x_adv in (pgd(model, x, y, eps, steps=5, restarts=2, generator=g), fgsm(model, x, y, eps),
                  pgd(model, x, y, eps, steps=3, alpha=0.5, generator=g)):  # huge steps must be projected
        assert x_adv.shape == x.shape
        assert (x_adv - x).abs().max() <= eps + 1e-6
        assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(pgd(model, x, y, 0.0), x)


def test_pgd_lowers_accuracy_and_keeps_the_worst_case(trained) -> None:
    model, x, y = trained
    model.eval()
    assert clean_accuracy(model, x, y) > 0.95
    assert pgd_accuracy(model, x, y, 0.02, steps=10) > 0.9  # far too small a budget to flip the class
    assert pgd_accuracy(model, x, y, 0.25, steps=10) < 0.2
    # More restarts can only help the attacker: the per-example worst case is kept.
    one = pgd_accuracy(model, x, y, 0.12, steps=3, restarts=1, seed=1)
    many = pgd_accuracy(model, x, y, 0.12, steps=3, restarts=4, seed=1)
    assert many <= one
    assert not model.training  # the attack does not switch the mode


def test_pgd_does_not_touch_parameter_gradients(trained) -> None:
    model, x, y = trained
    for p in model.parameters():
        p.grad = None
    pgd(model, x[:8], y[:8], 0.1, steps=2)
    assert all(p.grad is None for p in model.parameters())


def test_autoattack(trained) -> None:
    pytest.importorskip("pyautoattack")
    from filterlens.robust import autoattack

    model, x, y = trained
    model.eval()
    x_adv = autoattack(model, x[:16], y[:16], 0.25, attacks=["apgd-ce"], n_iter=20, n_restarts=1)
    assert (x_adv - x[:16]).abs().max() <= 0.25 + 1e-6
    assert clean_accuracy(model, x_adv, y[:16]) < 0.3


# --- training -----------------------------------------------------------------------------------

def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["normal", "fgsm-rs"])
def test_training_is_deterministic_for_a_seed(method: str) -> None:
    ds = _bright_task(n=128)
    runs = []
    for seed in (7, 7, 8):
        model = _tiny_net(seed)
        train_model(model, ds, _cfg(method=method, eps=0.1, seed=seed, epochs=2), progress=False)
        runs.append(_weights(model))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_other_trainings_run(method: str) -> None:
    ds = _bright_task(n=64)
    model = _tiny_net()
    res = train_model(model, ds, _cfg(method=method, eps=0.1, epochs=1, attack_steps=2), progress=False)
    assert len(res.history) == 1 and np.isfinite(res.history[0]["loss"])
    assert res.images_per_second > 0


def test_adversarial_training_makes_the_model_robust() -> None:
    ds = _bright_task(n=256)
    x, y = _bright_task(n=64, seed=1).tensors()
    eps = 0.12
    normal, robust = _tiny_net(), _tiny_net()
    train_model(normal, ds, _cfg(method="normal", epochs=4), progress=False)
    train_model(robust, ds, _cfg(method="pgd", eps=eps, attack_steps=3, epochs=4), progress=False)
    assert pgd_accuracy(robust, x, y, eps, steps=10) >= pgd_accuracy(normal, x, y, eps, steps=10)
    assert pgd_accuracy(robust, x, y, eps, steps=10) > 0.8


def test_config_defaults_and_errors() -> None:
    assert TrainConfig(method="fgsm-rs", eps=0.1).alpha == pytest.approx(0.125)  # Wong et al.: 1.25 eps
    assert TrainConfig(method="fgsm_rs").method == "fgsm-rs"
    assert TrainConfig(method="pgd", eps=0.1).attack_steps == 7
    with pytest.raises(FilterlensError, match="unknown training"):
        TrainConfig(method="free")
    with pytest.raises(FilterlensError, match="schedule"):
        TrainConfig(schedule="exp")
    with pytest.raises(FilterlensError, match="fewer than one batch"):
        train_model(_tiny_net(), _bright_task(n=8), _cfg(batch_size=32), progress=False)


def test_schedules() -> None:
    from filterlens.robust.train import lr_at

    cfg = TrainConfig(lr=1.0, schedule="onecycle", warmup=0.5)
    lrs = [lr_at(cfg, i, 10, 5) for i in range(10)]
    assert max(lrs) == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.0) and lrs[0] < lrs[3]
    step = TrainConfig(lr=1.0, schedule="step", step_every=2)
    assert [lr_at(step, i, 30, 5) for i in (0, 9, 10, 20)] == pytest.approx([1.0, 1.0, 0.1, 0.01])


# --- model files --------------------------------------------------------------------------------

def test_safetensors_and_card_round_trip(tmp_path: Path) -> None:
    from filterlens.archs import create_arch

    kw = {"width": 4, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2]}
    torch.manual_seed(0)
    model = create_arch("small_resnet14", **kw).eval()
    card = {"name": "m", "arch": "small_resnet14", "arch_kwargs": kw, "dataset": "cifar10",
            "results": {"clean": {"accuracy": 0.5, "n": 10}}}
    path = tmp_path / "m.safetensors"
    save_model(model, path, card)
    assert (tmp_path / "m.json").is_file()
    loaded, card2 = load_module_and_card(path)
    assert card2["arch_kwargs"] == kw and card2["format"].startswith("filterlens-model-card")
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.rand(3, 3, 32, 32)
    assert torch.equal(model(x), loaded(x))  # normalisation buffers come back from the card
    updated = update_card(path, results={"pgd": {"accuracy": 0.1}})
    assert updated["results"]["clean"]["accuracy"] == 0.5 and updated["results"]["pgd"]["accuracy"] == 0.1
    assert read_card(path)["results"]["pgd"]["accuracy"] == 0.1


def test_model_file_errors(tmp_path: Path) -> None:
    from filterlens.archs import create_arch

    path = tmp_path / "m.safetensors"
    with pytest.raises(ModelFileError, match="no such model file"):
        load_module_and_card(path)
    save_model(create_arch("small_vgg8", width=2), path, {"arch": "small_vgg8", "arch_kwargs": {"width": 2}})
    (tmp_path / "m.json").write_text(json.dumps({"arch": "small_vgg8", "arch_kwargs": {"width": 4}}))
    with pytest.raises(ModelFileError, match="do not fit"):
        load_module_and_card(path)
    (tmp_path / "m.json").unlink()
    with pytest.raises(ModelFileError, match="no model card"):
        load_module_and_card(path)
    with pytest.raises(ModelFileError, match=".safetensors"):
        save_model(create_arch("small_vgg8", width=2), tmp_path / "m.pt", {})


def test_small_archs_have_enough_3x3_convs() -> None:
    from filterlens.archs import create_arch

    for name, minimum in (("small_resnet14", 13), ("small_vgg8", 8)):
        m = create_arch(name, width=4, mean=[0.5] * 3, std=[0.25] * 3)
        convs = [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3)]
        assert len(convs) >= minimum
        assert m(torch.rand(2, 3, 32, 32)).shape == (2, 10)
        assert not any(k.startswith("normalize") for k in m.state_dict())  # non-persistent buffers
        torch.fx.symbolic_trace(m)


# --- the CLI end to end on a tiny CIFAR-10 archive ---------------------------------------------

def _tiny_cifar(root: Path) -> None:
    rng = np.random.default_rng(0)
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            blob = pickle.dumps({b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                                 b"labels": [i % 10 for i in range(20)]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def test_cli_train_and_evaluate(tmp_path: Path, monkeypatch) -> None:
    import typer
    from typer.testing import CliRunner

    from filterlens.cli.robust_cmd import register

    _tiny_cifar(tmp_path)
    monkeypatch.setenv("FILTERLENS_CACHE", str(tmp_path / "cache"))
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    runner = CliRunner()
    out = tmp_path / "m.safetensors"
    res = runner.invoke(app, ["train", "--dataset", "cifar10", "--arch", "small_vgg8", "--arch-kw", "width=2",
                              "--training", "fgsm-rs", "--eps", "8/255", "--epochs", "1", "--seed", "3",
                              "--out", str(out), "--data-dir", str(tmp_path), "--n-train", "40",
                              "--batch-size", "20", "--n-attack", "10", "--threads", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    card = read_card(out)
    assert card["arch"] == "small_vgg8" and card["arch_kwargs"]["width"] == 2
    assert card["arch_kwargs"]["mean"] == pytest.approx([0.4914, 0.4822, 0.4465])
    assert card["dataset"] == "cifar10" and card["n_train"] == 40 and card["seed"] == 3
    assert card["training"]["method"] == "fgsm-rs" and card["training"]["eps"] == pytest.approx(8 / 255)
    assert card["training"]["alpha"] == pytest.approx(10 / 255)
    assert card["results"]["pgd"]["n"] == 10 and card["results"]["clean"]["n"] == 20
    assert card["torch_version"] == torch.__version__ and card["training_time_s"] >= 0
    res = runner.invoke(app, ["evaluate", str(out), "--eps", "0.01", "--n", "5", "--steps", "2",
                              "--data-dir", str(tmp_path), "--threads", "1"])
    assert res.exit_code == 0, res.output
    pgd_res = read_card(out)["results"]["pgd"]
    assert pgd_res["n"] == 5 and pgd_res["steps"] == 2 and pgd_res["eps"] == pytest.approx(0.01)
    res = runner.invoke(app, ["train", "--dataset", "cifar10", "--arch", "small_vgg8", "--eps", "lots",
                              "--out", str(out), "--data-dir", str(tmp_path)])
    assert isinstance(res.exception, FilterlensError) and "8/255" in str(res.exception)


def test_cli_train_zoo_preset_and_milestones(tmp_path: Path, monkeypatch) -> None:
    """``--preset zoo`` passes the zoo recipe's CIFAR options; ``--milestones`` sets the decays."""
    import typer
    from typer.testing import CliRunner

    import filterlens.robust.pipeline as pipeline
    from filterlens.cli.robust_cmd import register
    from filterlens.zoo.recipe import CIFAR_OPTIONS

    seen = {}

    def record(**kw):
        seen.update(kw)
        raise FilterlensError("recorded")  # nothing is trained

    monkeypatch.setattr(pipeline, "train_and_save", record)
    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    base = ["train", "-d", "cifar10", "-a", "cifar_resnet20", "-o", str(tmp_path / "m.safetensors")]
    CliRunner().invoke(app, [*base, "--preset", "zoo", "--epochs", "28"])
    assert {k: seen[k] for k in ("lr", "batch_size", "schedule", "weight_decay", "milestones")} == {
        k: CIFAR_OPTIONS[k] for k in ("lr", "batch_size", "schedule", "weight_decay", "milestones")}
    seen.clear()
    CliRunner().invoke(app, [*base, "--schedule", "step", "--milestones", "5,15", "--device", "cpu"])
    assert seen["milestones"] == [5, 15] and seen["device"] == "cpu" and seen["schedule"] == "step"
    res = CliRunner().invoke(app, [*base, "--milestones", "5,x"])
    assert isinstance(res.exception, FilterlensError) and "7,21" in str(res.exception)


# --- the zoo ------------------------------------------------------------------------------------

def test_zoo_recipe() -> None:
    """Zoo v3 (issue 14): matched normal/PGD-2 pairs of one recipe, >= 4 seeds per arm, full training set,
    a paper-family architecture (CIFAR ResNet-20), the MNIST pair, and under 30 MB of weights."""
    from dataclasses import replace

    from filterlens.archs import create_arch
    from filterlens.zoo.recipe import RECIPE

    cifar = [m for m in RECIPE if m.dataset == "cifar10"]
    assert len({m.name for m in RECIPE}) == len(RECIPE)
    assert "cifar_resnet20" in {m.arch for m in cifar}
    for m in cifar:
        assert m.n_train is None and m.training in ("normal", "pgd")
    total_params = 0
    for arch in {m.arch for m in cifar}:
        runs = [m for m in cifar if m.arch == arch]
        normal = {m.seed: m for m in runs if m.training == "normal"}
        robust = {m.seed: m for m in runs if m.training == "pgd"}
        assert len(normal) >= 4 and normal.keys() == robust.keys()
        for seed in normal:  # one recipe: the pairs differ in the training method (and eps) only
            assert robust[seed].options["attack_steps"] == 2
            as_normal = {k: v for k, v in robust[seed].options.items() if k != "attack_steps"}
            assert replace(robust[seed], name=normal[seed].name, training="normal", eps=None, options=as_normal,
                           cost=normal[seed].cost) == normal[seed]
        model = create_arch(arch, **runs[0].arch_kwargs)
        assert sum(isinstance(c, nn.Conv2d) and c.kernel_size == (3, 3) for c in model.modules()) >= 8
        total_params += sum(p.numel() for p in model.parameters()) * len(runs)
    assert all(parse_eps(m.eps) == pytest.approx(8 / 255) for m in cifar if m.training != "normal")
    mnist = [m for m in RECIPE if m.dataset == "mnist"]
    assert {m.training for m in mnist} >= {"normal", "pgd"} and all(m.arch == "lenet5" for m in mnist)
    assert all(parse_eps(m.eps) == pytest.approx(0.3) for m in mnist if m.training != "normal")
    total_params += sum(sum(p.numel() for p in create_arch("lenet5").parameters()) for _ in mnist)
    assert total_params * 4 < 30e6


def test_bundled_zoo_index() -> None:
    index = ZOO / "index.json"
    if not index.is_file():
        pytest.skip("the zoo has not been trained yet (filterlens zoo train)")
    data = json.loads(index.read_text())
    assert data["total_size_bytes"] < 30e6
    rows = data["models"]
    for r in rows:
        assert (index.parent / r["file"]).is_file()
    for ds in ("cifar10", "mnist"):
        normal = [r["pgd_accuracy"] for r in rows if r["dataset"] == ds and not r["robust"]]
        robust = [r["pgd_accuracy"] for r in rows if r["dataset"] == ds and r["robust"]]
        if normal and robust:
            assert min(robust) > max(normal) + 0.15
