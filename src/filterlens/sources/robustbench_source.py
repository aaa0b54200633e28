"""``robustbench:NAME`` sources: a RobustBench model zoo entry, from weights already on disk.

RobustBench's own loader unpickles checkpoints without ``weights_only`` and downloads
missing files; filterlens builds the architecture from RobustBench's model table, then reads
the local checkpoint itself with ``weights_only=True``. Offline-safe: it never downloads.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SourceError
from ..types import ModelFilters

#: Where RobustBench keeps weights: ``<dir>/<dataset>/<threat_model>/<name>.pt``.
DEFAULT_MODEL_DIR = "models"


def robustbench_weights_path(name: str, dataset: str, threat_model: str, model_dir: str | Path | None) -> Path:
    root = Path(model_dir or os.environ.get("FILTERLENS_ROBUSTBENCH_DIR", DEFAULT_MODEL_DIR))
    return root / dataset / threat_model / f"{name}.pt"


def _percent(value) -> float | None:
    """RobustBench writes accuracies as percent strings ("89.69"); filterlens keeps fractions."""
    try:
        return float(value) / 100.0
    except (TypeError, ValueError):
        return None


def leaderboard_metadata(name: str, dataset: str, threat_model: str) -> dict:
    """Models-table fields of a RobustBench entry: the data set, threat model and training
    (RobustBench's ``Standard*`` entries are its normally trained baselines), and from the
    leaderboard file RobustBench ships in its package
    (``robustbench/model_info/<dataset>/<threat_model>/<name>.json``) the architecture,
    budget, clean and AutoAttack accuracy and whether extra data was used."""
    import json
    from importlib import resources

    normal = name.startswith("Standard")
    base = {"dataset": dataset, "training": "normal" if normal else "adversarial",
            "threat_model": None if normal else threat_model, "tags": "robustbench"}
    try:
        info_file = resources.files("robustbench") / "model_info" / dataset / threat_model / f"{name}.json"
        info = json.loads(info_file.read_text())
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, ValueError):
        return base
    tags = ["robustbench"]
    if str(info.get("additional_data", "")).lower() in ("true", "1", "yes"):
        tags.append("extra_data")
    return {
        **base,
        "arch": info.get("architecture"),
        "eps": None if normal else info.get("eps"),
        "clean_acc": _percent(info.get("clean_acc")),
        "robust_acc": _percent(info.get("autoattack_acc")),
        "tags": ",".join(tags),
    }


def load_robustbench(
    spec: str,
    name: str | None = None,
    dataset: str = "cifar10",
    threat_model: str = "Linf",
    model_dir: str | Path | None = None,
) -> ModelFilters:
    """Load ``robustbench:NAME`` (RobustBench model name) for ``dataset`` and ``threat_model``."""
    rb_name = spec.split(":", 1)[1]
    try:
        from robustbench.model_zoo import model_dicts
        from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel
    except ImportError:
        raise SourceError(
            f"{spec}: RobustBench sources need the robustbench package: "
            "pip install 'filterlens[robustbench]' (it requires torchvision)"
        ) from None
    try:
        entry = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat_model)][rb_name]
    except (KeyError, ValueError):
        raise SourceError(
            f"{spec}: not in RobustBench's model zoo for dataset {dataset!r}, threat model {threat_model!r}"
        ) from None
    path = robustbench_weights_path(rb_name, dataset, threat_model, model_dir)
    if not path.exists():
        raise SourceError(
            f"{spec}: weights not found at {path}. On a machine with internet run "
            f"python -c \"from robustbench.utils import load_model; load_model('{rb_name}', "
            f"model_dir='models', dataset='{dataset}', threat_model='{threat_model}')\" and copy "
            f"models/{dataset}/{threat_model}/{rb_name}.pt there (or set FILTERLENS_ROBUSTBENCH_DIR)"
        )
    from .checkpoint import find_state_dict, load_into, read_torch_checkpoint
    from .torch_module import from_module

    module = entry["model"]()
    state = find_state_dict(read_torch_checkpoint(path), str(path))
    load_into(module, state, rb_name)
    mf = from_module(module, name=name or rb_name, source=spec, arch=type(module).__name__,
                     input_shape=(3, 224, 224) if dataset == "imagenet" else (3, 32, 32))
    mf.metadata = {k: v for k, v in leaderboard_metadata(rb_name, dataset, threat_model).items() if v is not None}
    return mf
