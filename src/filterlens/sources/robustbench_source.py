"""``robustbench:NAME`` sources (kept for imports; the code is in :mod:`.robustbench`)."""

from __future__ import annotations

from pathlib import Path

from .robustbench import DEFAULT_MODEL_DIR, entry_metadata, find_entry, load_robustbench, model_root

__all__ = ["DEFAULT_MODEL_DIR", "leaderboard_metadata", "load_robustbench", "robustbench_weights_path"]


def robustbench_weights_path(name: str, dataset: str, threat_model: str, model_dir: str | Path | None) -> Path:
    """``<model-dir>/<dataset>/<threat_model>/<name>.pt`` (RobustBench's layout)."""
    return model_root(model_dir) / dataset / threat_model / f"{name}.pt"


def leaderboard_metadata(name: str, dataset: str, threat_model: str) -> dict:
    """Models-table fields of a RobustBench entry, from the bundled snapshot."""
    return entry_metadata(find_entry(name, dataset, threat_model))
