"""scripts/zoo_adopt.py: a probe becomes a recipe model only when it was trained exactly as one."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

from filterlens.zoo.recipe import get

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "zoo_adopt.py"
ENTRY = "mnist_lenet5_normal_s0"


def _probe(tmp_path: Path, **changes) -> Path:
    entry = replace(get(ENTRY), name="mnist_lenet5_normal_probe_s0", cost=9.0, **changes)
    weights = tmp_path / "probe" / f"{entry.name}.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"weights of the probe")
    card = {"name": entry.name, "arch": entry.arch, "recipe": asdict(entry)}
    weights.with_suffix(".json").write_text(json.dumps(card))
    return weights


def _adopt(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_an_identical_probe_is_adopted_under_the_recipe_name(tmp_path):
    probe = _probe(tmp_path)
    out = tmp_path / "zoo"
    res = _adopt(probe, ENTRY, "--out-dir", out)
    assert res.returncode == 0, res.stderr
    assert (out / f"{ENTRY}.safetensors").read_bytes() == probe.read_bytes()
    card = json.loads((out / f"{ENTRY}.json").read_text())
    assert card["name"] == ENTRY and card["recipe"] == asdict(get(ENTRY))
    assert card["adopted_from"] == "mnist_lenet5_normal_probe_s0"
    index = json.loads((out / "index.json").read_text())
    assert [m["name"] for m in index["models"]] == [ENTRY]
    again = _adopt(probe, ENTRY, "--out-dir", out)  # never replaced silently
    assert again.returncode != 0 and "--force" in again.stderr


def test_a_probe_of_other_settings_is_refused_and_nothing_is_written(tmp_path):
    base = get(ENTRY)
    probe = _probe(tmp_path, epochs=base.epochs + 1, options={**base.options, "lr": 0.5})
    out = tmp_path / "zoo"
    res = _adopt(probe, ENTRY, "--out-dir", out)
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"error: {probe.name} was not trained as {ENTRY}; they differ in epochs, options"]
    assert not out.exists()


def test_a_missing_card_or_unknown_entry_is_one_line(tmp_path):
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(b"x")
    for args in ((lone, ENTRY), (_probe(tmp_path), "no_such_model")):
        res = _adopt(*args, "--out-dir", tmp_path / "zoo")
        assert res.returncode != 0 and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("error: ")
