"""filterlens's architectures against RobustBench's own model definitions.

``tests/data/robustbench_signatures.json.gz`` holds, for every CNN entry of the bundled
snapshot, the state-dict keys and shapes of the module RobustBench's ``model_zoo`` builds
(recorded by ``scripts/robustbench_snapshot.py`` from RobustBench's sources). Each test
builds filterlens's module on the meta device (no memory) and compares key for key.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from filterlens.archs import create_arch
from filterlens.sources.robustbench import list_entries

RECORDED = json.loads(gzip.open(Path(__file__).parent / "data" / "robustbench_signatures.json.gz", "rt").read())
ENTRIES = {f"{e.dataset}/{e.name}": e for e in list_entries()}
BUILT = sorted(k for k, e in ENTRIES.items() if e.arch is not None)


def signature(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def test_every_built_entry_has_a_recorded_signature() -> None:
    assert sorted(RECORDED["entries"]) == BUILT
    assert len(BUILT) >= 100


@pytest.mark.parametrize("key", BUILT)
def test_keys_and_shapes_equal_robustbench(key: str) -> None:
    entry, rec = ENTRIES[key], RECORDED["entries"][key]
    assert (entry.arch, entry.arch_kwargs) == (rec["arch"], rec["arch_kwargs"])
    with torch.device("meta"):
        mine = create_arch(entry.arch, **entry.arch_kwargs)
    theirs = RECORDED["signatures"][rec["signature"]]
    got = signature(mine)
    assert sorted(set(got) - set(theirs)) == [] and sorted(set(theirs) - set(got)) == []
    assert {k: v for k, v in got.items() if theirs[k] != v} == {}


def test_the_papers_71_are_all_built() -> None:
    paper = [e for e in ENTRIES.values() if e.paper is not None]
    assert Counter(e.dataset for e in paper) == {"cifar10": 49, "cifar100": 17, "imagenet": 5}
    assert all(e.arch is not None and f"{e.dataset}/{e.name}" in RECORDED["entries"] for e in paper)
    archs = {e.arch for e in paper}
    assert {"dm-preact-resnet18", "preact_resnet18", "resnet18", "resnet50", "wrn-34-r", "pssilu-wrn-28-10",
            "chen2020-ensemble", "tv-resnet18", "tv-resnet50", "tv-wide-resnet50-2"} <= archs
    assert any(a.startswith("wrn-") and a != "wrn-34-r" for a in archs)
    assert any(e.arch.startswith("dm-wrn-") for e in paper)


def test_issue_facts_hold_in_the_recorded_definitions() -> None:
    """Properties the issue names, read from RobustBench's recorded modules themselves."""
    sig = lambda name, ds="cifar10": RECORDED["signatures"][RECORDED["entries"][f"{ds}/{name}"]["signature"]]  # noqa
    assert not {"mean", "std"} & set(sig("Gowal2020Uncovering_70_16"))  # DMWideResNet: non-persistent
    assert any(k.startswith("sub_block1.") for k in sig("Carmon2019Unlabeled"))
    assert "fc.bias" not in sig("Pang2020Boosting")  # bias_last=False
    assert {"mu", "sigma"} <= set(sig("Rice2020Overfitting"))
    chen = sig("Chen2020Adversarial")
    assert {"branch1.conv1.weight", "models.2.layer4.2.conv3.weight", "mu"} <= set(chen)
    r18 = sig("Salman2020Do_R18", "imagenet")
    assert {"normalize.mean", "model.conv1.weight", "model.layer2.0.downsample.0.weight"} <= set(r18)
    assert r18["model.conv1.weight"] == [64, 3, 7, 7]
    assert sig("Dai2021Parameterizing")["block1.layer.0.activation.alpha"] == [1]
