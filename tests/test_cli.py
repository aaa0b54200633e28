"""The command line: formats, exit codes, one-line errors, atomic output."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn as nn

from filterlens.cli.main import main

from conftest import shared_path

REQUIRED_KEYS = {"layer", "kernel_size", "in_channels", "out_channels", "groups", "conv_depth",
                 "conv_depth_norm", "n_filters", "sparsity", "variance_entropy", "orthogonality"}


def run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    code = info.value.code
    return (0 if code is None else code), out, err


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 1))
    path = tmp_path / "net.pt"
    torch.save(m.state_dict(), path)
    return path


def test_json_records_have_the_documented_keys(ckpt, capsys):
    code, out, err = run(["metrics", str(ckpt), "--format", "json"], capsys)
    assert code == 0
    records = json.loads(out)
    assert len(records) == 2 and REQUIRED_KEYS <= set(records[0])
    assert records[0]["layer"] == "0" and records[1]["conv_depth"] == 1
    assert "approximate" in err  # no --arch: depth from the order, with a warning


def test_csv_table_and_parquet(ckpt, tmp_path, capsys):
    code, out, _ = run(["metrics", str(ckpt), "-f", "csv"], capsys)
    assert code == 0 and out.splitlines()[0].startswith("model,layer,")
    code, out, _ = run(["metrics", str(ckpt)], capsys)
    assert code == 0 and "var_entropy" in out
    target = tmp_path / "layers.parquet"
    code, _, _ = run(["metrics", str(ckpt), "-f", "parquet", "-o", str(target)], capsys)
    assert code == 0 and len(pd.read_parquet(target)) == 2
    code, _, err = run(["metrics", str(ckpt), "-f", "parquet"], capsys)
    assert code == 1 and "needs --out" in err


def test_kernel_size_all_and_summary(ckpt, capsys):
    code, out, _ = run(["metrics", str(ckpt), "-k", "all", "-f", "json"], capsys)
    assert [r["kernel_size"] for r in json.loads(out)] == [3, 3, 1]
    code, out, _ = run(["metrics", str(ckpt), "--summary", "-f", "json"], capsys)
    (row,) = json.loads(out)
    assert row["model"] == "net" and row["n_filters"] == 24 + 64


def test_several_sources_one_failing(ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_text("nope")
    out_file = tmp_path / "out.json"
    code, _, err = run(["metrics", str(ckpt), str(bad), "-f", "json", "-o", str(out_file)], capsys)
    assert code == 1
    assert "error:" in err and "bad.pt" in err and "Traceback" not in err
    assert len(json.loads(out_file.read_text())) == 2  # the good source is still reported


def test_all_sources_failing_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_text("nope")
    out_file = tmp_path / "out.csv"
    code, _, err = run(["metrics", str(bad), "-f", "csv", "-o", str(out_file)], capsys)
    assert code == 1 and not out_file.exists()
    assert not list(tmp_path.glob(".out.csv*"))  # no temporary left behind


def test_no_3x3_layers_is_an_error(tmp_path, capsys):
    path = tmp_path / "pw.pt"
    torch.save({"a.weight": torch.randn(4, 3, 1, 1)}, path)
    code, _, err = run(["metrics", str(path)], capsys)
    assert code == 1 and "no 3x3 conv layers" in err and "1x1" in err


def test_all_nan_model_is_an_error(tmp_path, capsys):
    path = tmp_path / "nan.pt"
    torch.save({"a.weight": torch.full((4, 3, 3, 3), float("nan"))}, path)
    code, _, err = run(["metrics", str(path)], capsys)
    assert code == 1 and "NaN or Inf" in err


def test_bad_options(ckpt, capsys):
    assert run(["metrics", str(ckpt), "-k", "three"], capsys)[0] == 1
    assert run(["metrics", str(ckpt), "--threshold", "2"], capsys)[0] == 1
    assert run(["metrics", str(ckpt), "--arch", "nonsense"], capsys)[0] == 1
    assert run(["metrics", "--no-such-flag", str(ckpt)], capsys)[0] == 2
    assert run(["metrics", str(ckpt), str(ckpt), "--name", "x"], capsys)[0] == 1


def test_archs_lists_the_registry(capsys):
    code, out, _ = run(["archs", "-f", "json"], capsys)
    names = {r["name"] for r in json.loads(out)}
    assert {"cifar_resnet20", "lenet5", "wrn-28-10", "preact_resnet18", "resnet50"} <= names


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.startswith("filterlens ")


@pytest.mark.parametrize("content,needle", [
    (b"plain text, not a model", "error:"),
    (b"\x80\x04\x95", "error:"),
])
def test_installed_command_prints_one_line_without_traceback(tmp_path, content, needle):
    path = tmp_path / "m.pt"
    path.write_bytes(content)
    proc = subprocess.run([sys.executable, "-m", "filterlens.cli.main", "metrics", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_real_checkpoint_through_the_command(capsys):
    path = shared_path("models", "cifar10_resnet20-12fca82f.th")
    code, out, err = run(["metrics", str(path), "--arch", "cifar_resnet20", "-f", "json"], capsys)
    assert code == 0 and err == ""
    records = json.loads(out)
    assert len(records) == 19 and {r["depth_source"] for r in records} == {"fx"}


@pytest.mark.parametrize("arch", ["cifar_resnet20", "wrn-16-2"])
def test_metrics_command_matches_the_reference_on_new_files(tmp_path, capsys, arch):
    """A checkpoint and an ONNX export of the same random model, neither from ../shared:
    same layers, same depths, and values equal to the plain reference within 1e-6."""
    import math

    import filterlens as fl
    from conftest import export_onnx
    from reference import ref_orthogonality, ref_sparsity, ref_variance_entropy

    torch.manual_seed(1)
    module = fl.create_arch(arch).eval()
    with torch.no_grad():  # make some filters sparse, as trained networks have
        for p in module.parameters():
            if p.dim() == 4:
                p[: p.shape[0] // 4, : max(1, p.shape[1] // 3)] *= 1e-4
    ckpt, onnx_path = tmp_path / "m.pth", tmp_path / "m.onnx"
    torch.save({"model_state_dict": module.state_dict()}, ckpt)
    export_onnx(module, torch.rand(1, 3, 32, 32), onnx_path)
    weights = {n: m.weight.detach().numpy() for n, m in module.named_modules() if isinstance(m, nn.Conv2d)}
    results = {}
    for source, extra in ((ckpt, ["--arch", arch]), (onnx_path, [])):
        code, out, _ = run(["metrics", str(source), "-f", "json", *extra], capsys)
        assert code == 0
        results[source.suffix] = json.loads(out)
    a, b = results[".pth"], results[".onnx"]
    assert [r["layer"] for r in a] == [r["layer"] for r in b]
    assert [r["conv_depth"] for r in a] == [r["conv_depth"] for r in b]
    for row in a + b:
        w = weights[row["layer"]]
        assert row["sparsity"] == pytest.approx(ref_sparsity(w), abs=1e-12)
        ve = ref_variance_entropy(w)
        assert (row["variance_entropy"] is None and math.isnan(ve)) or row["variance_entropy"] == pytest.approx(ve, abs=1e-6)
        assert row["orthogonality"] == pytest.approx(ref_orthogonality(w), abs=1e-6)
