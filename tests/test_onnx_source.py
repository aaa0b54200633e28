"""ONNX source: conv extraction, weights, names and node-graph depth (sources/onnx_model.py)."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from filterlens.errors import SourceError
from filterlens.sources.onnx_model import load_onnx

SHARED = Path(__file__).parents[1].parent / "shared"
REAL_ONNX = SHARED / "models" / "cifar10_resnet_2b_pgd2.onnx"
needs_shared = pytest.mark.skipif(
    not REAL_ONNX.exists(), reason=f"real models not available ({REAL_ONNX} is absent)"
)


# --- helpers ----------------------------------------------------------------------------------


def export(module: nn.Module, shape, path: Path, training: bool = False) -> Path:
    """Export with the legacy (TorchScript) exporter, keeping the original weights."""
    kwargs = {}
    if training:  # BN stays a separate node, conv weights stay the parameters
        kwargs = dict(training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False)
    else:
        module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning and others
        torch.onnx.export(module, (torch.zeros(*shape),), str(path), dynamo=False, **kwargs)
    return path


def by_name(mf):
    return {layer.name: layer for layer in mf.layers}


def assert_bit_identical(array: np.ndarray, param: torch.Tensor) -> None:
    expected = param.detach().cpu().numpy()
    assert array.dtype == expected.dtype
    assert array.shape == expected.shape
    assert array.tobytes() == expected.tobytes()


def conv_node(x, w, y, name="", **attrs):
    return helper.make_node("Conv", [x, w], [y], name=name, **attrs)


def save_graph(path: Path, nodes, inputs, outputs, initializers=(), opset=13) -> Path:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    onnx.save(model, str(path))
    return path


def tensor(name: str, shape, seed: int = 0) -> TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def vinfo(name: str, shape=None):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


class Residual(nn.Module):
    """conv1 3x3 -> relu -> conv2 3x3, plus a parallel 1x1 projection shortcut."""

    def __init__(self, bn: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, stride=2, bias=not bn)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=not bn)
        sc = [nn.Conv2d(3, 8, 1, stride=2, bias=not bn)]
        if bn:
            sc.append(nn.BatchNorm2d(8))
        self.shortcut = nn.Sequential(*sc)
        self.bn1 = nn.BatchNorm2d(8) if bn else nn.Identity()
        self.bn2 = nn.BatchNorm2d(8) if bn else nn.Identity()

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


# --- torch exports ----------------------------------------------------------------------------


def test_sequential(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 5), nn.ReLU(),
                      nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    mf = load_onnx(export(m, (1, 3, 8, 8), tmp_path / "seq.onnx"))
    assert mf.name == "seq" and mf.source == str(tmp_path / "seq.onnx")
    assert mf.depth_source == "onnx" and mf.warnings == []
    assert [l.name for l in mf.layers] == ["0", "2"]
    assert [l.depth for l in mf.layers] == [1, 3]  # input -> Conv -> Relu -> Conv
    assert [l.conv_depth for l in mf.layers] == [0, 1]
    assert [l.conv_depth_norm for l in mf.layers] == [0.0, 1.0]
    for layer, idx in zip(mf.layers, (0, 2)):
        assert_bit_identical(layer.weight, m[idx].weight)
        assert layer.op_type == "Conv" and not layer.transposed and layer.groups == 1
    assert mf.layers[1].kernel_size == (5, 5)
    assert load_onnx(tmp_path / "seq.onnx", name="custom").name == "custom"


@pytest.mark.parametrize("bn", [False, True], ids=["plain", "bn-training-export"])
def test_residual_shortcut_shares_depth(tmp_path, bn):
    torch.manual_seed(1)
    m = Residual(bn=bn)
    path = export(m, (1, 3, 8, 8), tmp_path / "res.onnx", training=bn)
    layers = by_name(load_onnx(path))
    assert set(layers) == {"conv1", "conv2", "shortcut.0"}
    assert layers["conv1"].depth == layers["shortcut.0"].depth == 1
    assert layers["conv1"].conv_depth == layers["shortcut.0"].conv_depth == 0
    assert layers["conv2"].conv_depth == 1
    assert layers["conv2"].conv_depth_norm == 1.0
    # conv1 -> (BN) -> Relu -> conv2
    assert layers["conv2"].depth == (4 if bn else 3)
    for lname, param in (("conv1", m.conv1.weight), ("conv2", m.conv2.weight),
                         ("shortcut.0", m.shortcut[0].weight)):
        assert_bit_identical(layers[lname].weight, param)


def test_bn_folded_export_names_from_node_scopes(tmp_path):
    # An eval-mode export folds BN into the conv: the weights become anonymous initializers
    # (onnx::Conv_N) and the layer name comes from the exporter's node scope instead.
    torch.manual_seed(7)
    mf = load_onnx(export(Residual(bn=True), (1, 3, 8, 8), tmp_path / "folded.onnx"))
    assert {l.name: l.conv_depth for l in mf.layers} == {"conv1": 0, "shortcut.0": 0, "conv2": 1}


def test_grouped_and_depthwise(tmp_path):
    torch.manual_seed(2)
    m = nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(8, 8, 3, groups=8, padding=1))
    layers = load_onnx(export(m, (1, 4, 8, 8), tmp_path / "g.onnx")).layers
    assert [l.groups for l in layers] == [2, 8]
    assert [l.weight.shape for l in layers] == [(8, 2, 3, 3), (8, 1, 3, 3)]
    assert [l.in_channels for l in layers] == [4, 8]
    assert [l.depth for l in layers] == [1, 2]
    assert_bit_identical(layers[0].weight, m[0].weight)
    assert_bit_identical(layers[1].weight, m[1].weight)


def test_conv_transpose(tmp_path):
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 6, 2, stride=2, groups=2))
    layers = load_onnx(export(m, (1, 3, 8, 8), tmp_path / "t.onnx")).layers
    tconv = layers[1]
    assert tconv.transposed and tconv.op_type == "ConvTranspose" and tconv.groups == 2
    assert tconv.weight.shape == (8, 3, 2, 2)  # (c_in, c_out / groups, kh, kw), as stored
    assert (tconv.in_channels, tconv.out_channels) == (8, 6)
    assert_bit_identical(tconv.weight, m[1].weight)
    assert not layers[0].transposed and layers[0].op_type == "Conv"
    # a ConvTranspose takes no part in the conv levels (the paper's extractor counts Conv nodes)
    assert [l.conv_depth for l in layers] == [0, None] and layers[1].depth > layers[0].depth


def test_gzip_loads_identically(tmp_path):
    torch.manual_seed(4)
    plain = export(Residual(), (1, 3, 8, 8), tmp_path / "res.onnx")
    data = gzip.compress(plain.read_bytes())
    for fname in ("res.onnx.gz", "weird_name.bin"):
        (tmp_path / fname).write_bytes(data)
    ref = load_onnx(plain)
    for fname, expected_name in (("res.onnx.gz", "res"), ("weird_name.bin", "weird_name.bin")):
        mf = load_onnx(tmp_path / fname)
        assert mf.name == expected_name
        assert [(l.name, l.depth, l.conv_depth, l.groups) for l in mf.layers] == [
            (l.name, l.depth, l.conv_depth, l.groups) for l in ref.layers
        ]
        for a, b in zip(mf.layers, ref.layers):
            assert a.weight.tobytes() == b.weight.tobytes()


def test_external_data(tmp_path):
    torch.manual_seed(5)
    m = Residual()
    model = onnx.load(str(export(m, (1, 3, 8, 8), tmp_path / "tmp.onnx")))
    out = tmp_path / "ext" / "model.onnx"
    out.parent.mkdir()
    onnx.save_model(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.data", size_threshold=0)
    assert (out.parent / "model.data").exists()
    layers = by_name(load_onnx(out))
    assert_bit_identical(layers["conv2"].weight, m.conv2.weight)
    (out.parent / "model.data").unlink()
    with pytest.raises(SourceError, match="external data file 'model.data'"):
        load_onnx(out)


# --- hand-written graphs ----------------------------------------------------------------------


def test_unsorted_graph_constant_and_identity_weights(tmp_path):
    w_const = tensor("unused", (4, 4, 3, 3), seed=2)
    nodes = [
        # deliberately out of topological order
        helper.make_node("Add", ["c", "d"], ["y"], name="add"),
        conv_node("r1", "onnx::Identity_2", "d", name="conv_identity", pads=[1, 1, 1, 1]),
        helper.make_node("Identity", ["onnx::Identity_1"], ["onnx::Identity_2"], name="id2"),
        helper.make_node("Relu", ["b"], ["r1"], name="relu1"),
        helper.make_node("Identity", ["onnx::Conv_7"], ["onnx::Identity_1"], name="id1"),
        conv_node("a", "block.b.weight", "b", name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Constant", [], ["onnx::Conv_9"], value=w_const),
        conv_node("a", "onnx::Conv_9", "c", pads=[1, 1, 1, 1]),  # constant weight, no node name
        conv_node("x", "stem.weight", "a", name="conv_stem", pads=[1, 1, 1, 1]),
    ]
    inits = [tensor("stem.weight", (4, 1, 3, 3), 0), tensor("block.b.weight", (4, 4, 3, 3), 1),
             tensor("onnx::Conv_7", (4, 4, 3, 3), 3)]
    path = save_graph(tmp_path / "h.onnx", nodes, [vinfo("x", [1, 1, 6, 6])], [vinfo("y")], inits)
    mf = load_onnx(path)
    assert mf.warnings == []
    # layers come in topological order (stable w.r.t. the file order); exporter-generated
    # weight names fall back to the node name, then to conv_<index>
    assert [l.name for l in mf.layers] == ["stem", "block.b", "conv_identity", "conv_3"]
    layers = by_name(mf)
    assert {n: l.depth for n, l in layers.items()} == {
        "stem": 1, "block.b": 2, "conv_3": 2, "conv_identity": 4}
    assert {n: l.conv_depth for n, l in layers.items()} == {
        "stem": 0, "block.b": 1, "conv_3": 1, "conv_identity": 2}
    np.testing.assert_array_equal(layers["conv_3"].weight, numpy_helper.to_array(w_const))
    np.testing.assert_array_equal(layers["conv_identity"].weight,
                                  numpy_helper.to_array(inits[2]))


def test_initializers_listed_as_inputs_are_not_inputs(tmp_path):
    # Older exporters list every initializer among the graph inputs too.
    w = tensor("conv.weight", (2, 1, 3, 3))
    nodes = [helper.make_node("Identity", ["conv.weight"], ["w_id"]),
             conv_node("x", "w_id", "y", name="conv")]
    inputs = [vinfo("x", [1, 1, 5, 5]), vinfo("conv.weight", [2, 1, 3, 3])]
    layer = load_onnx(save_graph(tmp_path / "old.onnx", nodes, inputs, [vinfo("y")], [w])).layers[0]
    assert layer.name == "conv" and layer.depth == 1 and layer.conv_depth == 0


def test_shared_weight_gets_unique_names(tmp_path):
    nodes = [conv_node("x", "c.weight", "a", pads=[1, 1, 1, 1]),
             conv_node("a", "c.weight", "y", pads=[1, 1, 1, 1])]
    path = save_graph(tmp_path / "s.onnx", nodes, [vinfo("x", [1, 2, 5, 5])], [vinfo("y")],
                      [tensor("c.weight", (2, 2, 3, 3))])
    layers = load_onnx(path).layers
    assert [l.name for l in layers] == ["c", "c_1"]
    assert layers[0].weight is layers[1].weight  # read once
    assert [l.conv_depth for l in layers] == [0, 1]


def test_runtime_weight_is_skipped_with_warning(tmp_path):
    nodes = [
        conv_node("x", "w.weight", "a", name="fixed"),
        helper.make_node("Mul", ["w2", "scale"], ["w2s"], name="scale_w"),
        conv_node("x", "w2s", "b", name="dynamic"),
        conv_node("x", "w_in", "c", name="from_input"),
        helper.make_node("Conv", ["x", "w1d"], ["d"], name="conv1d_like", kernel_shape=[3]),
    ]
    inits = [tensor("w.weight", (2, 1, 3, 3)), tensor("w2", (2, 1, 3, 3)),
             numpy_helper.from_array(np.float32(2.0), "scale"), tensor("w1d", (2, 1, 3))]
    inputs = [vinfo("x", [1, 1, 5, 5]), vinfo("w_in", [2, 1, 3, 3])]
    path = save_graph(tmp_path / "r.onnx", nodes, inputs, [vinfo("a"), vinfo("b"), vinfo("c")],
                      inits)
    mf = load_onnx(path)
    assert [l.name for l in mf.layers] == ["w"]
    text = " | ".join(mf.warnings)
    assert "2 convolution node(s) skipped" in text and "dynamic" in text
    assert "from_input" in text and "not 2-D" in text


def test_convs_in_subgraphs_are_reported(tmp_path):
    w = tensor("branch.weight", (1, 1, 1, 1))
    then_g = helper.make_graph([conv_node("a", "branch.weight", "t")], "then", [], [vinfo("t")],
                               [w])
    else_g = helper.make_graph([helper.make_node("Identity", ["a"], ["e"])], "else", [],
                               [vinfo("e")])
    nodes = [
        helper.make_node("If", ["cond"], ["z"], then_branch=then_g, else_branch=else_g),
        conv_node("x", "stem.weight", "a"),
        conv_node("z", "head.weight", "y"),
    ]
    inputs = [vinfo("x", [1, 1, 4, 4]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])]
    inits = [tensor("stem.weight", (1, 1, 1, 1)), tensor("head.weight", (1, 1, 1, 1))]
    mf = load_onnx(save_graph(tmp_path / "if.onnx", nodes, inputs, [vinfo("y")], inits))
    # The If node uses "a" from the outer scope: it must come after the stem conv.
    assert {l.name: l.depth for l in mf.layers} == {"stem": 1, "head": 3}
    assert any("subgraphs" in w for w in mf.warnings)


def test_convs_in_local_functions_are_inlined(tmp_path):
    fn = helper.make_function(
        "local", "Block", ["inp", "w"], ["out"],
        [helper.make_node("Conv", ["inp", "w"], ["c"]), helper.make_node("Relu", ["c"], ["out"])],
        opset_imports=[helper.make_opsetid("", 13)])
    graph = helper.make_graph(
        [helper.make_node("Block", ["x", "b1.weight"], ["h"], domain="local"),
         helper.make_node("Block", ["h", "b2.weight"], ["y"], domain="local")],
        "g", [vinfo("x", [1, 1, 5, 5])], [vinfo("y")],
        [tensor("b1.weight", (1, 1, 3, 3)), tensor("b2.weight", (1, 1, 1, 1))])
    model = helper.make_model(graph, functions=[fn], opset_imports=[
        helper.make_opsetid("", 13), helper.make_opsetid("local", 1)])
    onnx.save(model, str(tmp_path / "fn.onnx"))
    mf = load_onnx(tmp_path / "fn.onnx")
    assert [(l.name, l.depth, l.conv_depth) for l in mf.layers] == [("b1", 1, 0), ("b2", 3, 1)]


# --- the real model ---------------------------------------------------------------------------


@needs_shared
def test_real_cifar_resnet():
    mf = load_onnx(REAL_ONNX)
    assert mf.name == "cifar10_resnet_2b_pgd2" and mf.depth_source == "onnx"
    assert mf.warnings == []
    layers = by_name(mf)
    assert list(layers) == ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.0.shortcut.0",
                            "layer1.1.conv1", "layer1.1.conv2"]
    assert {n: l.conv_depth for n, l in layers.items()} == {
        "conv1": 0, "layer1.0.conv1": 1, "layer1.0.shortcut.0": 1, "layer1.0.conv2": 2,
        "layer1.1.conv1": 3, "layer1.1.conv2": 4}
    assert layers["layer1.0.shortcut.0"].kernel_size == (1, 1)
    assert layers["conv1"].weight.shape == (8, 3, 3, 3)
    assert layers["layer1.1.conv2"].weight.shape == (16, 16, 3, 3)
    init = {t.name: t for t in onnx.load(str(REAL_ONNX)).graph.initializer}
    np.testing.assert_array_equal(layers["layer1.0.conv2"].weight,
                                  numpy_helper.to_array(init["layer1.0.conv2.weight"]))


@needs_shared
def test_real_model_truncated(tmp_path):
    data = REAL_ONNX.read_bytes()
    for cut in (len(data) // 2, len(data) - 7):
        bad = tmp_path / f"cut{cut}.onnx"
        bad.write_bytes(data[:cut])
        with pytest.raises(SourceError, match=r"cut\d+\.onnx: not an ONNX model, or the file is "
                                              r"corrupt or truncated"):
            load_onnx(bad)


# --- errors -----------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(SourceError, match=r"nope\.onnx: no such file"):
        load_onnx(tmp_path / "nope.onnx")


def test_text_file_renamed(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("these are my notes, not a model\n" * 20)
    with pytest.raises(SourceError, match=r"notes\.onnx: not an ONNX model") as info:
        load_onnx(bad)
    assert "\n" not in str(info.value)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match="empty"):
        load_onnx(empty)


def test_truncated_exports(tmp_path):
    torch.manual_seed(6)
    data = export(Residual(), (1, 3, 8, 8), tmp_path / "ok.onnx").read_bytes()
    (tmp_path / "half.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"half\.onnx: .*corrupt or truncated"):
        load_onnx(tmp_path / "half.onnx")
    gz = gzip.compress(data)
    (tmp_path / "half.onnx.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(SourceError, match=r"half\.onnx\.gz: gzip data is corrupt or truncated"):
        load_onnx(tmp_path / "half.onnx.gz")


def test_torch_checkpoint_hint(tmp_path):
    ckpt = tmp_path / "model.onnx"
    torch.save({"w": torch.zeros(2)}, ckpt)
    with pytest.raises(SourceError, match="zip archive"):
        load_onnx(ckpt)


def test_no_conv_layers(tmp_path):
    nodes = [helper.make_node("Gemm", ["x", "fc.weight"], ["h"], transB=1),
             helper.make_node("Relu", ["h"], ["y"])]
    path = save_graph(tmp_path / "mlp.onnx", nodes, [vinfo("x", [1, 4])], [vinfo("y")],
                      [tensor("fc.weight", (3, 4))])
    with pytest.raises(SourceError, match=r"mlp\.onnx: the ONNX model contains no 2-D "
                                          r"convolution layers"):
        load_onnx(path)


def test_only_runtime_weights_is_an_error(tmp_path):
    nodes = [conv_node("x", "w", "y", name="c")]
    inputs = [vinfo("x", [1, 1, 5, 5]), vinfo("w", [1, 1, 3, 3])]
    path = save_graph(tmp_path / "dyn.onnx", nodes, inputs, [vinfo("y")])
    with pytest.raises(SourceError, match="no 2-D convolution layers with a constant weight"):
        load_onnx(path)


def test_cycle(tmp_path):
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="n1"),
             conv_node("a", "k.weight", "c", name="conv"),
             helper.make_node("Relu", ["c"], ["b"], name="n2")]
    path = save_graph(tmp_path / "cyc.onnx", nodes, [vinfo("x", [1, 1, 3, 3])], [vinfo("b")],
                      [tensor("k.weight", (1, 1, 1, 1))])
    with pytest.raises(SourceError, match=r"cyc\.onnx: the ONNX graph has a cycle"):
        load_onnx(path)
