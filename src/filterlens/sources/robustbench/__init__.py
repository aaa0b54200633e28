"""``robustbench:NAME`` sources, offline and without the robustbench package.

The model table is filterlens's bundled snapshot of RobustBench (:mod:`.snapshot`); the
architectures are filterlens's own, key-for-key as RobustBench's definitions; the weights are
read from RobustBench's layout, ``<model-dir>/<dataset>/<threat_model>/<name>.pt``, with
``weights_only=True`` (:mod:`.loading`). Nothing is downloaded unless asked
(:func:`~.download.download`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ...types import ModelFilters
from .loading import (DEFAULT_MODEL_DIR, MODEL_DIR_ENV, load_entry_module, model_filters, model_root,
                      weight_paths)
from .snapshot import (DATASETS, RobustBenchEntry, entry_metadata, find_entry, list_entries, parse_spec,
                       snapshot_source)

__all__ = [
    "DATASETS", "DEFAULT_MODEL_DIR", "MODEL_DIR_ENV", "RobustBenchEntry", "entries_table", "entry_metadata",
    "find_entry", "list_entries", "load_robustbench", "model_root", "paper_pairs", "parse_spec", "snapshot_source",
    "weight_paths",
]


def load_robustbench(
    spec: str,
    name: str | None = None,
    dataset: str = "cifar10",
    threat_model: str = "Linf",
    model_dir: str | Path | None = None,
) -> ModelFilters:
    """Load ``robustbench:NAME`` of ``dataset``/``threat_model`` from local weights
    (``robustbench:<dataset>/NAME`` names the data set in the spec itself).

    The returned :class:`~filterlens.types.ModelFilters` carries the leaderboard metadata
    (accuracies as fractions) for the models table.
    """
    rb_name, dataset, threat_model = parse_spec(spec, dataset, threat_model)
    entry = find_entry(rb_name, dataset, threat_model)
    module = load_entry_module(entry, model_dir)
    paths = weight_paths(entry, model_dir)
    mf = model_filters(entry, module, name or rb_name, f"robustbench:{rb_name}")
    mf.metadata = entry_metadata(entry)
    extra = mf.metadata.setdefault("extra", {})
    extra["weights"] = [str(p.resolve()) for p in paths]
    unused = [l.name for l in mf.layers if l.unused]
    if unused:  # never called by the forward pass (sub_block1): no depth, as science.md says
        extra["unused_layers"] = unused
    return mf


def entries_table(dataset: str | None = None, threat_model: str | None = None, paper: bool = False,
                  model_dir: str | Path | None = None) -> pd.DataFrame:
    """The snapshot as a DataFrame, one row per entry, with whether the weights are present."""
    rows = []
    for e in list_entries(dataset, threat_model, paper):
        lb = e.leaderboard or {}
        paths = weight_paths(e, model_dir)
        rows.append({
            "name": e.name, "dataset": e.dataset, "threat_model": e.threat_model,
            "architecture": lb.get("architecture"), "arch": e.arch, "eps": lb.get("eps"),
            "clean_acc": _fraction(lb.get("clean_acc")), "robust_acc": _fraction(lb.get("autoattack_acc")),
            "extra_data": lb.get("additional_data"), "venue": lb.get("venue"),
            "normal": (e.paper or {}).get("normal"), "supported": e.arch is not None,
            "present": all(p.exists() for p in paths), "files": ",".join(e.files),
        })
    return pd.DataFrame(rows, columns=["name", "dataset", "threat_model", "architecture", "arch", "eps", "clean_acc",
                                       "robust_acc", "extra_data", "venue", "normal", "supported", "present",
                                       "files"])


def _fraction(value) -> float | None:
    try:
        return round(float(value) / 100.0, 10)
    except (TypeError, ValueError):
        return None


def paper_pairs() -> pd.DataFrame:
    """The paper's 71 pairs from the snapshot: ``robust`` (RobustBench name), ``normal`` (the
    paper's name of its counterpart), ``dataset``, plus ``robust_id`` (the paper's name of the
    robust model) and ``arch`` (the paper's architecture label). A normal model may serve
    several pairs, as in the paper."""
    rows = [{"robust": e.name, "normal": e.paper["normal"], "dataset": e.dataset,
             "robust_id": e.paper["robust_id"], "arch": e.paper.get("arch")}
            for e in list_entries(paper=True)]
    return pd.DataFrame(rows, columns=["robust", "normal", "dataset", "robust_id", "arch"])


def resolve_paper_pairs(models: pd.DataFrame) -> pd.DataFrame:
    """The paper's pairs among the models of a models table, as ``robust,normal`` names of it.

    A robust model is found by the paper's name (``robustbench_<NAME>_<dataset>_linf_13``), by
    ``<NAME>_<dataset>``, or by its RobustBench name when its ``dataset`` (if the table has the
    column) is the pair's; a normal model by the paper's name of the counterpart. Pairs with a member absent are
    left out.
    """
    names = set(models["model"].astype(str))
    ds_of = (dict(zip(models["model"].astype(str), models["dataset"])) if "dataset" in models.columns else {})
    rows = []
    for p in paper_pairs().itertuples(index=False):
        robust = next((n for n in (p.robust_id, f"{p.robust}_{p.dataset}") if n in names), None)
        if robust is None and p.robust in names and ds_of.get(p.robust, p.dataset) in (p.dataset, None):
            robust = p.robust
        if robust is None or p.normal not in names:
            continue
        rows.append({"robust": robust, "normal": p.normal, "dataset": p.dataset})
    return pd.DataFrame(rows, columns=["robust", "normal", "dataset"])
