"""robustbench:NAME sources: offline, without the robustbench package.

For each architecture family, a checkpoint in the container layout RobustBench's loader
expects for a real entry of that family is made from random weights, saved where RobustBench
keeps it, loaded by filterlens and measured; the per-layer values must equal a plain numpy
computation on the very tensors in the file. Big families are tested on a small member of
the same code (the entry's rules kept, a smaller size of its architecture), except where
the family has one size only.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import filterlens.sources.robustbench as rb
from filterlens.archs import create_arch
from filterlens.cli.main import main
from filterlens.errors import ArchitectureError, SourceError
from filterlens.measure import measure_model
from filterlens.sources import load_model
from filterlens.sources.robustbench import find_entry, load_robustbench, paper_pairs, resolve_paper_pairs


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    root = tmp_path / "models"
    monkeypatch.setenv("FILTERLENS_ROBUSTBENCH_DIR", str(root))
    return root


def run_cli(capsys, *args) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    got = capsys.readouterr()
    return code, got.out, got.err


# ---------------------------------------------------------------------------------------
# A plain computation of science.md's per-layer metrics (float64, no filterlens code)


def plain_metrics(w: np.ndarray) -> dict:
    w = w.astype(np.float64)
    f = w.reshape(-1, w.shape[2] * w.shape[3])
    fmax = np.abs(f).max(axis=1)
    m = np.abs(w).max()
    sparse = fmax <= 0.01 * m
    kept = f[~sparse] / fmax[~sparse, None]
    if len(kept) >= 2:
        c = kept - kept.mean(axis=0)
        s = np.linalg.svd(c, compute_uv=False) ** 2 / (len(kept) - 1)
        p = s / s.sum()
        p = p[p > 0]
        entropy = float(-(p * np.log10(p)).sum())
    else:
        entropy = math.nan
    v = w.reshape(w.shape[0], -1)
    norms = np.linalg.norm(v, axis=1)
    v = np.divide(v, norms[:, None], out=np.zeros_like(v), where=norms[:, None] > 0)
    n = v.shape[0]
    ortho = 1 - np.abs(v @ v.T - np.eye(n)).sum() / (n * (n - 1))
    return {"sparsity": float(sparse.mean()), "variance_entropy": entropy, "orthogonality": float(ortho)}


def check_measures(mf, tensors: dict[str, torch.Tensor]) -> pd.DataFrame:
    """Every 3x3 layer measured as the plain computation on the tensor saved in the file."""
    df = measure_model(mf)
    assert len(df) > 0
    unused = df[df["unused"]]  # listed, never measured (science.md, "Depth")
    assert unused["sparsity"].isna().all() and unused["notes"].str.startswith("not measured (unused").all()
    df = df[~df["unused"]]
    assert len(df) > 0
    for row in df.itertuples():
        want = plain_metrics(tensors[row.layer].numpy())
        assert row.sparsity == pytest.approx(want["sparsity"], abs=0)
        assert row.variance_entropy == pytest.approx(want["variance_entropy"], rel=1e-9, abs=1e-12)
        # the Gram product runs in the weights' float32 (filterlens's documented precision)
        assert row.orthogonality == pytest.approx(want["orthogonality"], rel=1e-6)
    layers = {l.name for l in mf.layers}
    assert layers == set(tensors)
    return df


def random_state(module: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights (some filters near zero, so sparsity is not trivially 0)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in module.state_dict().items():
        if v.dtype.is_floating_point:
            t = torch.randn(v.shape, generator=g)
            if k.endswith("running_var"):
                t = t.abs() + 0.5
            if v.dim() == 4:
                t[torch.rand(v.shape[:2], generator=g) < 0.2] *= 1e-4
            out[k] = t
        else:
            out[k] = v.clone()
    return out


def conv_tensors(state: dict[str, torch.Tensor], module: torch.nn.Module, prefix: str = "") -> dict:
    convs = [n for n, m in module.named_modules() if isinstance(m, torch.nn.Conv2d)]
    return {prefix + n: state[f"{n}.weight"] for n in convs}


def use_entry(monkeypatch, entry) -> None:
    """Make ``find_entry`` return ``entry`` (a smaller size of a real entry's architecture)."""
    monkeypatch.setattr(rb, "find_entry", lambda *a, **k: entry)


def save(model_dir: Path, entry, obj, filename: str | None = None) -> Path:
    path = model_dir / entry.dataset / entry.threat_model / (filename or entry.files[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


# ---------------------------------------------------------------------------------------
# Families, each in the container layout RobustBench expects of the entry


def test_trades_wrn_with_unused_sub_block1(model_dir, monkeypatch):
    """Carmon2019Unlabeled: {'state_dict': {'module.' + key}}, sub_block1 in the file and unused."""
    entry = dataclasses.replace(find_entry("Carmon2019Unlabeled"), arch="wrn-16-2")
    assert entry.arch_kwargs == {"sub_block1": True}
    use_entry(monkeypatch, entry)
    module = create_arch(entry.arch, **entry.arch_kwargs)
    state = random_state(module)
    save(model_dir, entry, {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 100})
    mf = load_robustbench("robustbench:Carmon2019Unlabeled")
    check_measures(mf, conv_tensors(state, module))
    unused = [l for l in mf.layers if l.name.startswith("sub_block1.")]
    assert unused and all(l.unused and l.depth is None and l.conv_depth is None for l in unused)
    assert not any(l.unused for l in mf.layers if not l.name.startswith("sub_block1."))
    assert all(l.conv_depth is not None for l in mf.layers if not l.name.startswith("sub_block1."))
    assert any("never used" in w for w in mf.warnings)
    assert mf.metadata["extra"]["unused_layers"] == [l.name for l in unused]
    md = mf.metadata
    assert (md["clean_acc"], md["robust_acc"], md["eps"]) == (0.8969, 0.5953, 8 / 255)
    assert md["arch"] == "WideResNet-28-10" and "extra_data" in md["tags"]


def test_wrn_missing_mu_sigma_is_tolerated_only_as_declared(model_dir, monkeypatch):
    """Rice2020Overfitting: a plain state dict without the mu/sigma buffers (RobustBench loads it
    non-strictly); the statistics keep the architecture's values. Anything else missing: error."""
    entry = dataclasses.replace(find_entry("Rice2020Overfitting"), arch="wrn-16-2")
    assert entry.missing_ok == ("mu", "sigma")
    use_entry(monkeypatch, entry)
    module = create_arch(entry.arch, **entry.arch_kwargs)
    state = {k: v for k, v in random_state(module).items() if k not in ("mu", "sigma")}
    path = save(model_dir, entry, state)
    mf = load_robustbench("robustbench:Rice2020Overfitting")
    check_measures(mf, conv_tensors(state, module))
    loaded = rb.load_entry_module(entry)
    torch.testing.assert_close(loaded.mu.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    del state["fc.weight"]
    state["stray.weight"] = torch.zeros(1)
    torch.save(state, path)
    with pytest.raises(ArchitectureError, match=r"missing: fc\.weight; unexpected: stray\.weight"):
        load_robustbench("robustbench:Rice2020Overfitting")


@pytest.mark.parametrize("name", ["Pang2020Boosting", "Ding2020MMA"])
def test_wrn_variants(model_dir, monkeypatch, name):
    """Hypersphere head (no fc.bias, sub_block1) and per-image standardisation."""
    entry = find_entry(name)
    entry = dataclasses.replace(entry, arch="wrn-16-2")
    use_entry(monkeypatch, entry)
    module = create_arch(entry.arch, **entry.arch_kwargs)
    state = random_state(module)
    save(model_dir, entry, {"state_dict": state})
    check_measures(load_robustbench(f"robustbench:{name}"), conv_tensors(state, module))
    out = rb.load_entry_module(entry)(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_dm_wide_resnet(model_dir, monkeypatch):
    """Gowal2020Uncovering_28_10_extra: DeepMind coding, swish, statistics not in the file."""
    entry = dataclasses.replace(find_entry("Gowal2020Uncovering_28_10_extra"), arch="dm-wrn-16-2")
    assert entry.arch_kwargs == {"activation": "swish"} and entry.missing_ok == ()
    use_entry(monkeypatch, entry)
    module = create_arch(entry.arch, **entry.arch_kwargs)
    state = random_state(module)
    assert "mean" not in state
    save(model_dir, entry, state)
    check_measures(load_robustbench("robustbench:Gowal2020Uncovering_28_10_extra"), conv_tensors(state, module))


def test_dm_preact_resnet18_full_size(model_dir):
    """Gowal2021Improving_R18_ddpm_100m (its one size): the 3x3 conv shortcut reads the block's raw
    input, so it sits above the first conv (which reads it after BN and activation)."""
    entry = find_entry("Gowal2021Improving_R18_ddpm_100m")
    module = create_arch(entry.arch, **entry.arch_kwargs)
    state = random_state(module)
    save(model_dir, entry, state)
    mf = load_robustbench("robustbench:Gowal2021Improving_R18_ddpm_100m")
    check_measures(mf, conv_tensors(state, module))
    depth = {l.name: l.conv_depth for l in mf.layers}
    assert depth["layer_0.1.conv_2d_2"] < depth["layer_1.0.shortcut"] < depth["layer_1.0.conv_2d_1"]


def test_preact_resnet18_last_container_and_stray_key(model_dir):
    """Andriushchenko2020Understanding: {'last': ..., 'best': ...} with model_preact_hl1.1.weight."""
    entry = find_entry("Andriushchenko2020Understanding")
    module = create_arch(entry.arch, **entry.arch_kwargs)
    state, best = random_state(module, 1), random_state(module, 2)
    state["model_preact_hl1.1.weight"] = torch.zeros(3)
    save(model_dir, entry, {"last": state, "best": best})
    mf = load_robustbench("robustbench:Andriushchenko2020Understanding")
    check_measures(mf, conv_tensors(state, module))  # the 'last' weights, not 'best'


def test_cifar_resnet_module_model_prefixes(model_dir, monkeypatch):
    """Engstrom2019Robustness: keys 'module.model.<key>' (both prefixes removed), no mu/sigma."""
    entry = dataclasses.replace(find_entry("Engstrom2019Robustness"), arch="resnet18")
    use_entry(monkeypatch, entry)
    module = create_arch(entry.arch, **entry.arch_kwargs)
    state = {k: v for k, v in random_state(module).items() if k not in ("mu", "sigma")}
    save(model_dir, entry, {"state_dict": {f"module.model.{k}": v for k, v in state.items()}})
    check_measures(load_robustbench("robustbench:Engstrom2019Robustness"), conv_tensors(state, module))


def test_robust_wide_resnet_and_pssilu(model_dir, monkeypatch):
    for name, kwargs in (("Huang2021Exploring", {"channel_configs": [16, 32, 64, 48], "depth_configs": [2, 1, 1]}),
                         ("Dai2021Parameterizing", {"depth": 10, "widen_factor": 2})):
        entry = find_entry(name)
        entry = dataclasses.replace(entry, arch_kwargs={**entry.arch_kwargs, **kwargs})
        use_entry(monkeypatch, entry)
        module = create_arch(entry.arch, **entry.arch_kwargs)
        state = random_state(module)
        save(model_dir, entry, {"state_dict": state})
        check_measures(load_robustbench(f"robustbench:{name}"), conv_tensors(state, module))


def test_ensemble_members_from_their_own_files(model_dir, monkeypatch):
    """Chen2020Adversarial: <name>.pt_m{i}.pt, one member each; layers named by member, each
    member's depth from its own graph."""
    entry = find_entry("Chen2020Adversarial")
    assert entry.files == tuple(f"Chen2020Adversarial.pt_m{i}.pt" for i in range(3))
    entry = dataclasses.replace(entry, arch_kwargs={"num_blocks": [1, 1, 1, 1]})
    use_entry(monkeypatch, entry)
    module = create_arch(entry.arch, **entry.arch_kwargs)
    tensors = {}
    for i, (member, sub) in enumerate(module.members):
        state = random_state(sub, i)
        save(model_dir, entry, {"state_dict": {f"module.{k}": v for k, v in state.items()}}, entry.files[i])
        tensors.update(conv_tensors(state, sub, f"{member}."))
    mf = load_robustbench("robustbench:Chen2020Adversarial")
    check_measures(mf, tensors)
    by_member = {}
    for l in mf.layers:
        member, rest = l.name.split(".", 1)
        by_member.setdefault(member, {})[rest] = l.conv_depth
    own_graph = {l.name: l.conv_depth for l in load_model(module.members[0][1]).layers}
    assert by_member["branch1"] == by_member["branch2"] == by_member["branch3"] == own_graph
    assert by_member["branch1"]["conv1"] == 0 and max(by_member["branch1"].values()) > 0
    (model_dir / "cifar10" / "Linf" / entry.files[2]).unlink()
    with pytest.raises(SourceError, match=r"Chen2020Adversarial\.pt_m2\.pt"):
        load_robustbench("robustbench:Chen2020Adversarial")


def test_imagenet_resnet18_behind_the_wrapper(model_dir):
    """Salman2020Do_R18: a torchvision state dict without normalize.* keys; 'model.' added."""
    entry = find_entry("Salman2020Do_R18", "imagenet")
    net = create_arch("tv-resnet18")
    state = random_state(net)
    save(model_dir, entry, {"model": None, "state_dict": {f"module.{k}": v for k, v in state.items()}})
    mf = load_robustbench("robustbench:imagenet/Salman2020Do_R18")  # the data set in the spec
    check_measures(mf, conv_tensors(state, net, "model."))
    first = [l for l in mf.layers if l.conv_depth == 0]
    assert [l.name for l in first] == ["model.conv1"] and first[0].kernel_size == (7, 7)
    assert mf.metadata["eps"] == 4 / 255 and mf.metadata["dataset"] == "imagenet"
    wrapped = create_arch("tv-resnet18", wrap=True, mean=[0.5] * 3, std=[0.25] * 3)
    wrapped.load_state_dict({**{f"model.{k}": v for k, v in state.items()},
                             "normalize.mean": torch.full((1, 3, 1, 1), 0.5), "normalize.std": torch.full((1, 3, 1, 1), 0.25)})
    torch.save(wrapped.state_dict(), model_dir / "imagenet" / "Linf" / "Salman2020Do_R18.pt")  # saved from the wrapper
    loaded = rb.load_entry_module(entry)
    torch.testing.assert_close(loaded.normalize.std, torch.full((1, 3, 1, 1), 0.25))
    check_measures(load_robustbench("robustbench:imagenet/Salman2020Do_R18"), conv_tensors(state, net, "model."))


# ---------------------------------------------------------------------------------------
# One clear line for each user mistake


def test_saved_web_page(model_dir, capsys):
    entry = find_entry("Wong2020Fast")
    path = model_dir / "cifar10" / "Linf" / "Wong2020Fast.pt"
    path.parent.mkdir(parents=True)
    path.write_text("\n<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>")
    code, out, err = run_cli(capsys, "extract", "robustbench:Wong2020Fast", "--db", model_dir.parent / "db")
    assert code == 1 and err.count("\n") == 1
    assert "saved web page" in err and "download failed" in err and "Delete the file" in err
    assert path.exists()  # the user's file is left alone
    path.write_bytes(b"<html>" + b"x" * 100)
    with pytest.raises(SourceError, match="invalid load key '<'"):
        rb.load_entry_module(entry)


@pytest.mark.parametrize("name, message", [
    ("Carmon2019Unlabeled", r"weights not found at .*Carmon2019Unlabeled\.pt; run 'filterlens robustbench download "
                            r"Carmon2019Unlabeled --dataset cifar10' or open https://drive\.google\.com/"),
    ("NoSuch2099Model", r"no such model on the Linf cifar10 leaderboard; 'filterlens robustbench list'"),
    ("Carmon2019Unlabled", r"did you mean Carmon2019Unlabeled\?"),
    ("Cui2020Learnable_34_10_LBGAT0", r"it is on cifar100 \(use --dataset cifar100\)"),
    ("Debenedetti2022Light_XCiT-S12", r"timm model .*filterlens cannot load it"),
])
def test_one_line_errors(model_dir, capsys, name, message):
    code, out, err = run_cli(capsys, "extract", f"robustbench:{name}", "--db", model_dir.parent / "db")
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ")
    import re

    assert re.search(message, err), err


def test_extract_cifar100_offline_fills_the_models_table(tmp_path, capsys, monkeypatch):
    """The issue's command, with --model-dir; no robustbench package anywhere."""
    import importlib.util

    assert importlib.util.find_spec("robustbench") is None
    entry = dataclasses.replace(find_entry("Rice2020Overfitting", "cifar100"))
    module = create_arch(entry.arch, **entry.arch_kwargs)
    state = random_state(module)
    save(tmp_path / "weights", entry, state)
    monkeypatch.delenv("FILTERLENS_ROBUSTBENCH_DIR", raising=False)
    code, out, err = run_cli(capsys, "extract", "robustbench:Rice2020Overfitting", "--dataset", "cifar100",
                             "--threat-model", "Linf", "--db", tmp_path / "db", "--model-dir", tmp_path / "weights")
    assert code == 0, err
    code, out, err = run_cli(capsys, "db", "models", "--db", tmp_path / "db", "-f", "json")
    row = json.loads(out)[0]
    assert (row["model"], row["dataset"], row["training"], row["threat_model"]) == (
        "Rice2020Overfitting", "cifar100", "adversarial", "Linf")
    assert (row["clean_acc"], row["robust_acc"]) == (0.5383, 0.1895)  # RobustBench's 53.83 / 18.95 %
    assert row["arch"] == "PreActResNet-18" and row["eps"] == pytest.approx(8 / 255)
    assert json.loads(row["extra"])["paper_normal"] == "hso_normal_training_robustbench_Rice2020Overfitting_cifar100_13"


# ---------------------------------------------------------------------------------------
# list, download, pairs


def test_list_paper(capsys, model_dir):
    code, out, err = run_cli(capsys, "robustbench", "list", "--paper", "-f", "json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == 71
    assert sum(r["dataset"] == "cifar10" for r in rows) == 49
    assert all(r["normal"] and r["arch"] and r["present"] is False for r in rows)
    carmon = next(r for r in rows if r["name"] == "Carmon2019Unlabeled")
    assert carmon["normal"] == "hso_normal_training_robustbench_Carmon2019Unlabeled_cifar10_13"
    code, out, err = run_cli(capsys, "robustbench", "list", "--dataset", "imagenet")
    assert code == 0 and "Salman2020Do_50_2" in out and "tv-wide-resnet50-2" in out
    code, out, err = run_cli(capsys, "robustbench", "list", "--dataset", "mnist")
    assert code == 1 and "unknown RobustBench data set" in err
    code, out, err = run_cli(capsys, "robustbench", "list", "--threat-model", "L2")
    assert code == 1 and err.count("\n") == 1 and "covers the Linf leaderboards, not 'L2'" in err


def test_download_offline_says_where(capsys, model_dir, monkeypatch):
    from filterlens.sources.robustbench import download as dl

    monkeypatch.setattr(dl, "_gdown", lambda: None)
    code, out, err = run_cli(capsys, "robustbench", "download", "Carmon2019Unlabeled")
    assert code == 1
    assert "https://drive.google.com/uc?id=15tUx-gkZMYx7BfEOw1GY5OKC-jECIsPQ" in err
    assert str(model_dir / "cifar10" / "Linf" / "Carmon2019Unlabeled.pt") in err
    assert not (model_dir / "cifar10").exists() or not any((model_dir / "cifar10").rglob("*"))


def test_download_verifies_and_replaces_only_when_valid(model_dir, monkeypatch):
    """A fake gdown: a web page is refused (nothing written), real weights land at the path."""
    from filterlens.sources.robustbench import download as dl

    entry = find_entry("Addepalli2021Towards_RN18")
    state = random_state(create_arch(entry.arch))
    payload = {"what": "html"}

    class FakeGdown:
        @staticmethod
        def download(id, output, quiet=False):
            assert id == entry.gdrive_ids[0]
            if payload["what"] == "html":
                Path(output).write_text("<html>quota exceeded</html>")
            else:
                torch.save({"state_dict": state}, output)
            return output

    monkeypatch.setattr(dl, "_gdown", lambda: FakeGdown)
    target = model_dir / "cifar10" / "Linf" / "Addepalli2021Towards_RN18.pt"
    [r] = dl.download(entry)
    assert r.status == "manual" and "saved web page" in r.message and not target.exists()
    assert not list(target.parent.glob(".*part"))
    payload["what"] = "weights"
    [r] = dl.download(entry)
    assert r.status == "downloaded" and target.exists()
    [r] = dl.download(entry)
    assert r.status == "present"


def test_paper_pairs_and_their_resolution():
    pairs = paper_pairs()
    assert len(pairs) == 71 and list(pairs.columns[:3]) == ["robust", "normal", "dataset"]
    assert pairs.groupby("dataset").size().to_dict() == {"cifar10": 49, "cifar100": 17, "imagenet": 5}
    assert (pairs["normal"] == "hso_normal_training_robustbench_Carmon2019Unlabeled_cifar10_13").sum() == 6
    models = pd.DataFrame({
        "model": ["Carmon2019Unlabeled", "Rice2020Overfitting", "robustbench_Wong2020Fast_imagenet_linf_13",
                  "hso_normal_training_robustbench_Carmon2019Unlabeled_cifar10_13",
                  "timm_resnet50_imagenet1k_13", "hso_normal_training_robustbench_Rice2020Overfitting_cifar10_13"],
        "dataset": ["cifar10", "cifar100", "imagenet", "cifar10", "imagenet", "cifar10"]})
    got = resolve_paper_pairs(models)
    assert got.to_dict("records") == [
        {"robust": "Carmon2019Unlabeled", "normal": "hso_normal_training_robustbench_Carmon2019Unlabeled_cifar10_13",
         "dataset": "cifar10"},
        {"robust": "robustbench_Wong2020Fast_imagenet_linf_13", "normal": "timm_resnet50_imagenet1k_13",
         "dataset": "imagenet"},
    ]  # Rice2020Overfitting here is the CIFAR-100 model: not the CIFAR-10 pair's
    from filterlens.analysis.groups import load_pairs

    table = load_pairs("paper", models).table
    assert list(zip(table["model_a"], table["model_b"])) == [(r["robust"], r["normal"]) for r in
                                                               got.to_dict("records")]
