"""compare / report / extract through the command line, on the real LeNet5 pair and on bad input."""

from __future__ import annotations

import json

import pytest
import torch

from filterlens.cli.main import main

from conftest import shared_path
from reference import ref_sparse_flags, ref_sparsity, ref_variance_entropy


def run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    out, err = capsys.readouterr()
    return (info.value.code or 0), out, err


@pytest.fixture(scope="module")
def lenet_db(tmp_path_factory):
    adv = shared_path("models", "mnist_lenet5_advtrained.pt")
    cln = shared_path("models", "mnist_lenet5_clntrained.pt")
    db = tmp_path_factory.mktemp("lenet") / "db"
    for path, training in ((adv, "adversarial"), (cln, "normal")):
        with pytest.raises(SystemExit) as info:
            main(["extract", str(path), "--db", str(db), "--arch", "lenet5", "--training", training,
                  "--dataset", "mnist", "--eps", "0.3"])
        assert info.value.code in (0, None)
    return db


def _cell(stats, metric, depth_bin):
    (cell,) = [s for s in stats if s["metric"] == metric and s["depth_bin"] == depth_bin]
    return cell


def test_compare_json_on_the_real_lenet_pair(lenet_db, capsys):
    code, out, _ = run(["compare", "--db", str(lenet_db), "--format", "json", "--n-boot", "500"], capsys)
    assert code == 0
    result = json.loads(out)
    stats = result["stats"]
    for cell in stats:  # the documented keys, per metric and depth bin
        assert {"metric", "depth_bin", "mean_a", "mean_b", "diff", "ci", "p_value"} <= set(cell)
    first_sparsity = _cell(stats, "sparsity", "first")
    first_entropy = _cell(stats, "variance_entropy", "first")
    all_entropy = _cell(stats, "variance_entropy", "all")
    # Expected values from the plain reference (tests/reference.py) on the checkpoints' own
    # weights, not from filterlens: the PGD-trained LeNet5's first layer has 8 of 32 filters
    # sparse against none in the normal one, and a lower variance entropy (about 0.775 vs
    # 0.860) - the paper's first-layer exception. Over all layers (entropy weighted by the
    # non-sparse filters of each layer) its spectrum is flatter: the paper's main finding.
    ref = {}
    for group, name in (("a", "mnist_lenet5_advtrained.pt"), ("b", "mnist_lenet5_clntrained.pt")):
        sd = torch.load(shared_path("models", name), weights_only=True, map_location="cpu")
        convs = [sd[f"{c}.weight"].numpy() for c in ("conv1", "conv2")]
        nonsparse = [len(ref_sparse_flags(w)) - sum(ref_sparse_flags(w)) for w in convs]
        ve = [ref_variance_entropy(w) for w in convs]
        ref[group] = {"sparsity": ref_sparsity(convs[0]), "entropy": ve[0],
                      "entropy_all": sum(v * n for v, n in zip(ve, nonsparse)) / sum(nonsparse)}
    assert ref["a"]["sparsity"] == 8 / 32 and ref["b"]["sparsity"] == 0.0
    assert first_sparsity["mean_a"] == pytest.approx(ref["a"]["sparsity"], abs=1e-12)
    assert first_sparsity["mean_b"] == ref["b"]["sparsity"]
    assert first_entropy["mean_a"] == pytest.approx(ref["a"]["entropy"], abs=1e-9)
    assert first_entropy["mean_b"] == pytest.approx(ref["b"]["entropy"], abs=1e-9)
    assert ref["a"]["entropy"] < ref["b"]["entropy"]
    assert all_entropy["mean_a"] == pytest.approx(ref["a"]["entropy_all"], abs=1e-9)
    assert all_entropy["mean_b"] == pytest.approx(ref["b"]["entropy_all"], abs=1e-9)
    assert all_entropy["diff"] == pytest.approx(ref["a"]["entropy_all"] - ref["b"]["entropy_all"], abs=1e-9)
    assert all_entropy["diff"] > 0.01
    assert first_sparsity["diff"] == pytest.approx(first_sparsity["mean_a"] - first_sparsity["mean_b"])
    # One model per group: no test is possible, and the output says so rather than inventing a p.
    assert first_sparsity["p_value"] is None
    # The shift between the two models' filters is far larger in the first layer than overall.
    shift = {s["depth_bin"]: s["divergence"] for s in result["shift"]}
    assert shift["first"] > 10 * shift["all"] > 0


def test_compare_table_csv_and_groups(lenet_db, capsys):
    code, out, _ = run(["compare", "--db", str(lenet_db), "--n-boot", "200", "--no-shift"], capsys)
    assert code == 0 and "variance_entropy" in out and "claims" in out
    code, out, _ = run(["compare", "--db", str(lenet_db), "-f", "csv", "--n-boot", "200", "--no-shift",
                        "--groups", "training = 'adversarial'", "--groups", "training = 'normal'"], capsys)
    assert code == 0 and out.startswith("dataset,metric,depth_bin")


@pytest.mark.parametrize("argv,needle", [
    (["--by", "no_such_column"], "no such column"),
    (["--by", "dataset"], "needs exactly two"),
    (["--groups", "training = 'normal'"], "two SQL conditions"),
    (["--groups", "bogus syntax ((", "--groups", "1=1"], "--groups"),
    (["--format", "xml"], "--format"),
])
def test_compare_bad_options(lenet_db, capsys, argv, needle):
    code, _, err = run(["compare", "--db", str(lenet_db), "--no-shift", *argv], capsys)
    assert code == 1 and needle in err and "Traceback" not in err


def test_compare_on_a_foreign_directory(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a database")
    code, _, err = run(["compare", "--db", str(tmp_path)], capsys)
    assert code == 1 and "error:" in err


def test_report_is_written_atomically(lenet_db, tmp_path, capsys):
    target = tmp_path / "report.html"
    code, out, _ = run(["report", "--db", str(lenet_db), "--out", str(target), "--n-boot", "200"], capsys)
    assert code == 0 and str(target) in out
    html = target.read_text()
    assert html.startswith("<!DOCTYPE html>") and "mnist_lenet5_advtrained" in html
    assert "data:image/png;base64," in html
    assert not list(tmp_path.glob(".report.html*"))
