"""``filterlens demo`` on the bundled zoo: database, comparison, first layer, report."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from filterlens import zoo
from filterlens.data.cifar import find_cifar10
from filterlens.data.paths import data_dirs
from filterlens.cli.main import main


def _zoo_has_both_groups() -> bool:
    methods = {m.get("training") for m in zoo.list_models()}
    return "normal" in methods and len(methods - {"normal"}) > 0


def _cifar10_present() -> bool:
    """Where the demo looks for CIFAR-10 (``../shared/data``, ``$FILTERLENS_DATA``, the cache)."""
    return find_cifar10(data_dirs()) is not None


pytestmark = pytest.mark.skipif(not _zoo_has_both_groups(), reason="the bundled zoo lacks a normal or a robust model")


def test_demo_writes_database_comparison_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    with pytest.raises(SystemExit) as info:
        main(["demo", "--out", str(out), "--n-boot", "200"])
    assert info.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "report:" in printed and str(out / "report.html") in printed
    comparison = json.loads((out / "comparison.json").read_text())
    names = {m["name"] for m in zoo.list_models()}
    robust = {m["name"] for m in zoo.list_models() if m["training"] != "normal"}
    assert set(comparison["groups"]["a"]["models"]) == robust
    assert set(comparison["groups"]["b"]["models"]) == names - robust
    html = (out / "report.html").read_text()
    assert all(name in html for name in names)  # every zoo model is in the models table
    claims = {c["claim"]: c["verdict"] for c in comparison["claims"]}
    assert "fewer_sparse_filters" in claims
    cifar_models = {m["name"] for m in zoo.list_models() if m.get("dataset") == "cifar10"}
    if cifar_models:
        # The first-layer study always runs: on the CIFAR-10 test set when it is found, else on
        # the package's own sample, and the notes say which.
        assert (out / "first_layer.csv").is_file()
        per_model = pd.read_csv(out / "first_layer.csv")
        assert set(per_model["model"]) == cifar_models
        assert html.count('<section id="first-layer">') == 1 and '<a href="#first-layer">' in html
        assert any(c.startswith("first_layer_thresholding/") for c in claims)
        note = next(n for n in comparison["notes"] if n.startswith("first layer:"))
        if _cifar10_present():
            assert "the test images in" in note
        else:
            assert "bundled sample" in note


def test_demo_refuses_to_overwrite_a_foreign_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "filters.db").mkdir(parents=True)
    (out / "filters.db" / "precious.txt").write_text("do not delete")
    with pytest.raises(SystemExit) as info:
        main(["demo", "--out", str(out), "--no-first-layer"])
    assert info.value.code == 1
    assert (out / "filters.db" / "precious.txt").exists()
    assert "not a filterlens database" in capsys.readouterr().err
