"""robustbench:NAME sources, against a stand-in package with RobustBench's layout.

The real package needs torchvision (no CPU build here), so the test writes a minimal package
with the same module paths (model_zoo.model_dicts, model_zoo.enums, model_info/*.json).
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

from filterlens.cli.main import main
from filterlens.errors import SourceError
from filterlens.sources import load_model

FAKE_ZOO = '''
import torch.nn as nn
from .enums import BenchmarkDataset, ThreatModel

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)
    def forward(self, x):
        return self.fc(self.conv2(self.conv1(x)).mean((2, 3)))

model_dicts = {BenchmarkDataset.cifar_10: {ThreatModel.Linf: {
    "Fake2024Robust": {"model": Tiny, "gdrive_id": "x"},
    "Standard": {"model": Tiny, "gdrive_id": "y"},
}}}
'''
FAKE_ENUMS = '''
from enum import Enum
class BenchmarkDataset(Enum):
    cifar_10 = "cifar10"
    cifar_100 = "cifar100"
    imagenet = "imagenet"
class ThreatModel(Enum):
    Linf = "Linf"
    L2 = "L2"
'''


@pytest.fixture
def fake_robustbench(tmp_path, monkeypatch):
    pkg = tmp_path / "pkgs" / "robustbench"
    (pkg / "model_zoo").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model_zoo" / "__init__.py").write_text(textwrap.dedent(FAKE_ZOO))
    (pkg / "model_zoo" / "enums.py").write_text(textwrap.dedent(FAKE_ENUMS))
    info = pkg / "model_info" / "cifar10" / "Linf"
    info.mkdir(parents=True)
    (info / "Fake2024Robust.json").write_text(json.dumps({
        "name": "Fake robust", "architecture": "WideResNet-28-10", "eps": "8/255", "clean_acc": "89.69",
        "autoattack_acc": "59.53", "additional_data": True}))
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    for mod in [m for m in sys.modules if m.startswith("robustbench")]:
        monkeypatch.delitem(sys.modules, mod)
    weights = tmp_path / "models"
    monkeypatch.setenv("FILTERLENS_ROBUSTBENCH_DIR", str(weights))
    from robustbench.model_zoo import model_dicts  # noqa: F401  (the stand-in imports)
    yield weights
    for mod in [m for m in sys.modules if m.startswith("robustbench")]:
        del sys.modules[mod]  # imported during the test; monkeypatch does not know them


def _save(weights_dir, name):
    from robustbench.model_zoo import Tiny

    path = weights_dir / "cifar10" / "Linf" / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in Tiny().state_dict().items()}}, path)


def test_robustbench_entry_fills_the_models_table(fake_robustbench, tmp_path, capsys):
    _save(fake_robustbench, "Fake2024Robust")
    _save(fake_robustbench, "Standard")
    db = tmp_path / "db"
    with pytest.raises(SystemExit) as info:
        main(["extract", "robustbench:Fake2024Robust", "robustbench:Standard", "--db", str(db)])
    assert info.value.code in (0, None), capsys.readouterr().err
    from filterlens.db import FilterDB

    models = FilterDB.open(db).models().set_index("model")
    robust = models.loc["Fake2024Robust"]
    assert robust["training"] == "adversarial" and robust["arch"] == "WideResNet-28-10"
    assert robust["clean_acc"] == pytest.approx(0.8969) and robust["robust_acc"] == pytest.approx(0.5953)
    assert robust["eps"] == pytest.approx(8 / 255) and "extra_data" in robust["tags"]
    assert models.loc["Standard", "training"] == "normal"


def test_missing_weights_say_where_to_put_them(fake_robustbench):
    with pytest.raises(SourceError, match="weights not found at .*Fake2024Robust.pt"):
        load_model("robustbench:Fake2024Robust")


def test_unknown_entry(fake_robustbench):
    with pytest.raises(SourceError, match="not in RobustBench's model zoo"):
        load_model("robustbench:NoSuchModel")


def test_without_the_package(monkeypatch):
    for mod in ("robustbench", "robustbench.model_zoo", "robustbench.model_zoo.enums"):
        monkeypatch.setitem(sys.modules, mod, None)  # import fails as if not installed
    with pytest.raises(SourceError, match="pip install 'filterlens\\[robustbench\\]'"):
        load_model("robustbench:Carmon2019Unlabeled")
