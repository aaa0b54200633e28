"""Model sources: checkpoints, containers, safetensors, state dicts, modules, and bad input."""

from __future__ import annotations

import gzip
import math
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import filterlens as fl
from filterlens.errors import ArchitectureError, SourceError
from filterlens.sources.checkpoint import find_state_dict, strip_wrapper_prefixes

from conftest import shared_path
from reference import ref_orthogonality, ref_sparsity, ref_variance_entropy


class Residual(nn.Module):
    """conv1 -> relu -> conv2, plus a parallel 1x1 projection shortcut; then a head conv."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.shortcut = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))
        return self.head(y)


class DataDependent(Residual):
    """Not traceable by torch.fx (branch on a tensor value): depth must come from elsewhere."""

    def forward(self, x):
        if x.mean() > -1e9:
            return super().forward(x)
        return x


def _depths(mf):
    return {l.name: (l.conv_depth, l.conv_depth_norm) for l in mf.layers}


def test_fx_depth_of_a_residual_block():
    mf = fl.load_model(Residual())
    assert mf.depth_source == "fx"
    assert _depths(mf) == {"conv1": (0, 0.0), "shortcut": (0, 0.0), "conv2": (1, 0.5), "head": (2, 1.0)}


def test_untraceable_module_falls_back_and_records_it():
    mf = fl.load_model(DataDependent(), input_shape=(3, 8, 8))
    assert mf.depth_source in ("export", "hooks")
    assert any("torch.fx could not trace" in w for w in mf.warnings)
    d = _depths(mf)
    assert d["conv1"][0] == 0 and d["head"][0] == max(v[0] for v in d.values())


# Depths counted by hand on each graph (longest path from the input, one step per node):
# Residual: x -> conv1 (1) -> relu (2) -> conv2 (3); x -> shortcut (1); add (4) -> relu (5) -> head (6).
#   Distinct conv depths 1, 3, 6 -> conv_depth 0 (conv1, shortcut), 1 (conv2), 2 (head); norm = rank / 2.
#   (A shortest-path depth would put head at 4: x -> shortcut -> add -> relu -> head.)
# Sequential: conv "0" (1) -> bn (2) -> relu (3) -> grouped conv "3" (4) -> 1x1 conv "4" (5).
HAND_COUNTED = {
    "residual": {"conv1": (1, 0, 0.0), "shortcut": (1, 0, 0.0), "conv2": (3, 1, 0.5), "head": (6, 2, 1.0)},
    "sequential": {"0": (1, 0, 0.0), "3": (4, 1, 0.5), "4": (5, 2, 1.0)},
}


@pytest.mark.parametrize("graph,module_factory", [("residual", Residual), ("sequential", lambda: nn.Sequential(
    nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 6, 3, groups=3), nn.Conv2d(6, 2, 1)))])
def test_fx_and_onnx_agree_on_depth_and_weights(tmp_path, graph, module_factory):
    from conftest import export_onnx

    module = module_factory().eval()
    path = tmp_path / "m.onnx"
    export_onnx(module, torch.randn(1, 3, 16, 16), path)
    via_fx = fl.load_model(module)
    via_onnx = fl.load_model(path)
    assert via_onnx.depth_source == "onnx"
    fx_layers = {l.name: l for l in via_fx.layers}
    onnx_layers = {l.name: l for l in via_onnx.layers}
    assert set(fx_layers) == set(onnx_layers)
    for name, a in fx_layers.items():
        b = onnx_layers[name]
        assert (a.conv_depth, a.conv_depth_norm, a.groups) == (b.conv_depth, b.conv_depth_norm, b.groups), name
        np.testing.assert_array_equal(a.weight, b.weight)
    # Both routes share the depth helper, so agreement alone proves little: check each by hand.
    for mf in (via_fx, via_onnx):
        assert {l.name: (l.depth, l.conv_depth, l.conv_depth_norm) for l in mf.layers} == HAND_COUNTED[graph]


@pytest.mark.parametrize("arch", ["cifar_resnet20", "preact_resnet18", "wrn-16-2", "lenet5"])
def test_registry_archs_fx_and_onnx_agree(tmp_path, arch):
    from conftest import export_onnx

    info, _ = fl.archs.arch_info(arch)
    module = fl.create_arch(arch).eval()
    path = tmp_path / f"{arch}.onnx"
    export_onnx(module, torch.rand(1, *info.input_shape), path)
    a = {l.name: l.conv_depth for l in fl.load_model(module).layers}
    b = {l.name: l.conv_depth for l in fl.load_model(path).layers}
    assert a == b


# --- checkpoints -------------------------------------------------------------------------------

def _state():
    return Residual().state_dict()


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s, "epoch": 3},
        lambda s: {"model": s, "optimizer": {"lr": 0.1}},
        lambda s: {"model_state_dict": s},
        lambda s: {"net": s, "acc": 90.0},
        lambda s: {"last": s},
        lambda s: OrderedDict((f"module.{k}", v) for k, v in s.items()),
        lambda s: {"state_dict": {f"model.{k}": v for k, v in s.items()}, "global_step": 10},  # lightning
    ],
)
@pytest.mark.parametrize("suffix", [".pt", ".pth", ".th", ".ckpt", ".bin"])
def test_checkpoint_containers_unwrap(tmp_path, wrap, suffix):
    state = _state()
    path = tmp_path / f"m{suffix}"
    torch.save(wrap(state), path)
    mf = fl.load_model(path)
    assert [l.name for l in mf.layers] == ["conv1", "conv2", "shortcut", "head"]
    np.testing.assert_array_equal(mf.layers[0].weight, state["conv1.weight"].numpy())
    assert mf.depth_source == "order" and any("approximate" in w for w in mf.warnings)


def test_prefixes_are_stripped_only_as_prefixes():
    s = {"module.a.module.weight": torch.zeros(1), "module.b": torch.zeros(1)}
    assert list(strip_wrapper_prefixes(s)) == ["a.module.weight", "b"]
    mixed = {"model.a": torch.zeros(1), "b": torch.zeros(1)}  # not every key: leave as is
    assert list(strip_wrapper_prefixes(mixed)) == ["model.a", "b"]


def test_find_state_dict_reports_keys_when_nothing_found():
    with pytest.raises(SourceError, match="no weights found.*epoch"):
        find_state_dict({"epoch": 1, "config": {"lr": 0.1}})


def test_safetensors_source(tmp_path):
    state = {k: v.contiguous() for k, v in _state().items()}
    save_file(state, tmp_path / "m.safetensors")
    mf = fl.load_model(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(mf.layers[1].weight, state["conv2.weight"].numpy())


def test_checkpoint_with_arch_uses_the_graph(tmp_path):
    module = fl.create_arch("cifar_resnet20")
    torch.save({"state_dict": {f"module.{k}": v for k, v in module.state_dict().items()}}, tmp_path / "r.th")
    mf = fl.load_model(tmp_path / "r.th", arch="cifar_resnet20")
    assert mf.depth_source == "fx" and mf.arch
    assert len(mf.layers) == 19
    assert [l.conv_depth for l in mf.layers] == list(range(19))  # option A: a plain chain of convs


def test_arch_mismatch_lists_every_key(tmp_path):
    state = fl.create_arch("cifar_resnet20").state_dict()
    state.pop("layer1.0.conv1.weight")
    state["extra.weight"] = torch.zeros(3)
    state["conv1.weight"] = torch.zeros(16, 3, 5, 5)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ArchitectureError) as info:
        fl.load_model(tmp_path / "bad.pt", arch="cifar_resnet20")
    msg = str(info.value)
    assert "missing: layer1.0.conv1.weight" in msg and "unexpected: extra.weight" in msg
    assert "conv1.weight (file (16, 3, 5, 5)" in msg and "\n" not in msg


def test_unknown_arch():
    with pytest.raises(ArchitectureError, match="unknown architecture 'resnet21'"):
        fl.load_model(_state(), arch="resnet21")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_that_would_run_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": _state(), "payload": _Evil()}, path)
    with pytest.raises(SourceError, match="refused to load"):
        fl.load_model(path)
    assert "pwned" not in capsys.readouterr().out
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(SourceError):
        fl.load_model(legacy)
    assert "pwned" not in capsys.readouterr().out


def test_truncated_and_foreign_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(_state(), good)
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="truncated or corrupt"):
        fl.load_model(tmp_path / "trunc.pt")
    (tmp_path / "notes.pt").write_text("these are not weights\n")
    with pytest.raises(SourceError, match="not a PyTorch checkpoint"):
        fl.load_model(tmp_path / "notes.pt")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(SourceError, match="empty"):
        fl.load_model(tmp_path / "empty.pth")
    with pytest.raises(SourceError, match="no such file"):
        fl.load_model(tmp_path / "missing.pt")
    with pytest.raises(SourceError, match="directory"):
        fl.load_model(tmp_path)
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(SourceError, match="safetensors"):
        fl.load_model(tmp_path / "x.safetensors")


def test_state_dict_without_conv_weights(tmp_path):
    torch.save({"fc.weight": torch.zeros(10, 5)}, tmp_path / "mlp.pt")
    with pytest.raises(SourceError, match="no conv-shaped"):
        fl.load_model(tmp_path / "mlp.pt")


def test_module_without_convs():
    with pytest.raises(SourceError, match="no 2-D convolution"):
        fl.load_model(nn.Sequential(nn.Linear(3, 3)))


def test_model_without_3x3_convs_raises_no_layers():
    with pytest.raises(fl.NoLayersError, match="kernel sizes present: 1x1, 5x5"):
        fl.measure(nn.Sequential(nn.Conv2d(3, 4, 5), nn.Conv2d(4, 4, 1)))
    df = fl.measure(nn.Sequential(nn.Conv2d(3, 4, 5), nn.Conv2d(4, 4, 1)), kernel_size=5)
    assert list(df["layer"]) == ["0"] and df.loc[0, "conv_depth"] == 0


def test_nan_weights_measured_as_nan_with_a_note():
    m = Residual()
    with torch.no_grad():
        m.conv2.weight[0, 0, 0, 0] = float("nan")
    df = fl.measure(m)
    row = df.set_index("layer").loc["conv2"]
    assert math.isnan(row["sparsity"]) and "non-finite" in row["notes"]
    assert not math.isnan(df.set_index("layer").loc["conv1", "sparsity"])


def test_transposed_convs_are_recorded_and_left_out_by_default():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ConvTranspose2d(4, 6, 3))
    mf = fl.load_model(m)
    t = mf.layers[1]
    assert t.transposed and t.in_channels == 4 and t.out_channels == 6
    assert list(fl.measure(m)["layer"]) == ["0"]
    assert list(fl.measure(m, include_transposed=True)["layer"]) == ["0", "1"]


def test_measure_returns_documented_columns():
    df = fl.measure(Residual(), kernel_size=None)
    assert list(df.columns) == fl.LAYER_COLUMNS
    assert len(df) == 4 and set(df["depth_source"]) == {"fx"}


# --- the real models in ../shared --------------------------------------------------------------

REAL = [
    ("mnist_lenet5_clntrained.pt", "lenet5", ["conv1", "conv2"]),
    ("mnist_lenet5_advtrained.pt", "lenet5", ["conv1", "conv2"]),
    ("cifar10_resnet20-12fca82f.th", "cifar_resnet20", None),
    ("cifar10_resnet_2b_pgd2.onnx", None, None),
]


@pytest.mark.parametrize("fname,arch,layers", REAL)
def test_real_models_agree_with_the_reference(fname, arch, layers):
    path = shared_path("models", fname)
    df = fl.measure(path, arch=arch)
    if layers:
        assert list(df["layer"]) == layers
    mf = fl.load_model(path, arch=arch)
    weights = {l.name: l.weight for l in mf.layers}
    for row in df.itertuples():
        w = weights[row.layer]
        assert row.sparsity == pytest.approx(ref_sparsity(w), abs=1e-12)
        ref_ve = ref_variance_entropy(w)
        assert (math.isnan(row.variance_entropy) and math.isnan(ref_ve)) or row.variance_entropy == pytest.approx(ref_ve, abs=1e-6)
        assert row.orthogonality == pytest.approx(ref_orthogonality(w), abs=1e-6)


def test_real_resnet20_depth_and_container():
    path = shared_path("models", "cifar10_resnet20-12fca82f.th")
    mf = fl.load_model(path, arch="cifar_resnet20")
    assert mf.depth_source == "fx" and len(mf.layers) == 19
    assert mf.layers[0].name == "conv1" and mf.layers[0].conv_depth == 0
    assert mf.layers[-1].conv_depth_norm == 1.0


def test_real_onnx_gzipped_is_identical(tmp_path):
    path = shared_path("models", "cifar10_resnet_2b_pgd2.onnx")
    gz = tmp_path / "m.onnx.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    a, b = fl.measure(path), fl.measure(gz)
    assert (a.drop(columns="model").equals(b.drop(columns="model")))
