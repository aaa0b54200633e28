"""filterlens's bundled snapshot of RobustBench's model table (``models.json``).

One entry per model of the L-inf CIFAR-10, CIFAR-100 and ImageNet leaderboards: how
RobustBench builds and loads it (the filterlens architecture and arguments, checkpoint
files, container and prefix rules, tolerated keys), its leaderboard metadata, and for the
paper's 71 robust models their normal counterpart. ``scripts/robustbench_snapshot.py``
regenerates the file from RobustBench's sources; nothing here needs the robustbench package.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from ...errors import SourceError

DATASETS = ("cifar10", "cifar100", "imagenet")
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


@dataclass(frozen=True)
class RobustBenchEntry:
    """One model of RobustBench's table, as the snapshot records it."""

    name: str
    dataset: str
    threat_model: str
    arch: str | None  # filterlens architecture; None: a family filterlens does not build
    arch_kwargs: dict = field(default_factory=dict)
    rb_class: str | None = None
    note: str | None = None
    files: tuple[str, ...] = ()
    members: tuple[str, ...] | None = None  # ensembles: member module names, in file order
    gdrive_ids: tuple[str, ...] = ()
    preprocessing: str | None = None
    container: tuple[str, ...] = ()
    strip: tuple[str, ...] = ()
    add_prefix: str | None = None
    missing_ok: tuple[str, ...] = ()
    unexpected_ok: tuple[str, ...] = ()
    leaderboard: dict | None = None
    paper: dict | None = None

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.threat_model}/{self.name}"

    @property
    def is_ensemble(self) -> bool:
        return len(self.files) > 1

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, 224, 224) if self.dataset == "imagenet" else (3, 32, 32)

    @property
    def normal(self) -> bool:
        """RobustBench's ``Standard*`` entries are its normally trained baselines."""
        return self.name.startswith("Standard")

    def download_urls(self) -> list[str]:
        return [f"https://drive.google.com/uc?id={gid}&export=download" for gid in self.gdrive_ids]

    def supported(self) -> bool:
        return self.arch is not None and len(self.gdrive_ids) == len(self.files)


def _entry(raw: dict) -> RobustBenchEntry:
    tup = lambda v: tuple(v) if v else ()  # noqa: E731
    return RobustBenchEntry(
        name=raw["name"], dataset=raw["dataset"], threat_model=raw["threat_model"], arch=raw.get("arch"),
        arch_kwargs=dict(raw.get("arch_kwargs") or {}), rb_class=raw.get("rb_class"), note=raw.get("note"),
        files=tup(raw.get("files")), members=tup(raw.get("members")) or None,
        gdrive_ids=tuple(g for g in raw.get("gdrive_ids") or () if g), preprocessing=raw.get("preprocessing"),
        container=tup(raw.get("container")), strip=tup(raw.get("strip")), add_prefix=raw.get("add_prefix"),
        missing_ok=tup(raw.get("missing_ok")), unexpected_ok=tup(raw.get("unexpected_ok")),
        leaderboard=raw.get("leaderboard"), paper=raw.get("paper"))


@lru_cache(maxsize=1)
def _snapshot() -> tuple[dict, tuple[RobustBenchEntry, ...]]:
    text = resources.files(__package__).joinpath("models.json").read_text()
    raw = json.loads(text)
    return raw.get("source", {}), tuple(_entry(e) for e in raw["entries"])


def snapshot_source() -> dict:
    """Where the snapshot came from (RobustBench and paper commits, generator script)."""
    return dict(_snapshot()[0])


def list_entries(dataset: str | None = None, threat_model: str | None = None,
                 paper: bool = False) -> list[RobustBenchEntry]:
    """Entries of the snapshot, optionally of one data set / threat model / the paper's 71."""
    if dataset is not None:
        check_dataset(dataset)
    if threat_model is not None:
        check_threat_model(threat_model)
    return [e for e in _snapshot()[1]
            if (dataset is None or e.dataset == dataset)
            and (threat_model is None or e.threat_model.lower() == threat_model.lower())
            and (not paper or e.paper is not None)]


def check_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise SourceError(f"unknown RobustBench data set {dataset!r}; choose one of {', '.join(DATASETS)}")
    return dataset


def check_threat_model(threat_model: str) -> str:
    threats = sorted({e.threat_model for e in _snapshot()[1]})
    if threat_model.lower() not in {t.lower() for t in threats}:
        raise SourceError(f"the RobustBench snapshot covers the {', '.join(threats)} leaderboards, "
                          f"not {threat_model!r}")
    return threat_model


def parse_spec(spec: str, dataset: str = "cifar10", threat_model: str = "Linf") -> tuple[str, str, str]:
    """``robustbench:NAME``, ``robustbench:<dataset>/NAME`` or ``robustbench:<dataset>/<threat>/NAME``
    (RobustBench's folder layout) -> ``(name, dataset, threat_model)``; the spec's parts win."""
    body = spec.split(":", 1)[1] if spec.startswith("robustbench:") else spec
    parts = body.split("/")
    if len(parts) == 2:
        return parts[1], parts[0], threat_model
    if len(parts) == 3:
        return parts[2], parts[0], parts[1]
    if len(parts) > 3:
        raise SourceError(f"{spec}: expected robustbench:NAME or robustbench:<dataset>[/<threat_model>]/NAME")
    return body, dataset, threat_model


def find_entry(name: str, dataset: str = "cifar10", threat_model: str = "Linf") -> RobustBenchEntry:
    """The entry ``name`` of ``dataset``/``threat_model``; one clear line when there is none
    (the closest names, or the data sets where the name does exist)."""
    check_dataset(dataset)
    check_threat_model(threat_model)
    board = list_entries(dataset, threat_model)
    for e in board:
        if e.name == name:
            return e
    elsewhere = sorted({e.dataset for e in list_entries(threat_model=threat_model) if e.name == name})
    if elsewhere:
        raise SourceError(f"robustbench:{name} is not on the {threat_model} {dataset} leaderboard; it is on "
                          f"{', '.join(elsewhere)} (use --dataset {elsewhere[0]})")
    names = [e.name for e in board]
    lower = {n.lower(): n for n in names}
    close = [lower[c] for c in difflib.get_close_matches(name.lower(), list(lower), n=3, cutoff=0.6)]
    hint = f"; did you mean {', '.join(close)}?" if close else \
        "; 'filterlens robustbench list' shows the known names"
    raise SourceError(f"robustbench:{name}: no such model on the {threat_model} {dataset} leaderboard{hint}")


def _percent_to_fraction(value: Any) -> float | None:
    """RobustBench writes accuracies as percent strings ("89.69"); the database keeps fractions."""
    try:
        return round(float(value) / 100.0, 10)
    except (TypeError, ValueError):
        return None


def entry_metadata(entry: RobustBenchEntry) -> dict[str, Any]:
    """Models-table fields of an entry (accuracies as fractions, like the rest of the database);
    RobustBench's own fields go to ``extra``."""
    lb = entry.leaderboard or {}
    tags = ["robustbench"]
    if lb.get("additional_data") is True:
        tags.append("extra_data")
    if entry.paper is not None:
        tags.append("paper")
    md: dict[str, Any] = {
        "dataset": entry.dataset,
        "training": "normal" if entry.normal else "adversarial",
        "threat_model": None if entry.normal else entry.threat_model,
        "eps": None if entry.normal else lb.get("eps_value"),
        "arch": lb.get("architecture") or entry.arch,
        "clean_acc": _percent_to_fraction(lb.get("clean_acc")),
        "robust_acc": _percent_to_fraction(lb.get("autoattack_acc")),
        "tags": ",".join(tags),
    }
    extra = {"robustbench_name": entry.name, "filterlens_arch": entry.arch}
    for k in ("eps", "name", "venue", "link", "additional_data", "number_forward_passes"):
        if lb.get(k) not in (None, ""):
            extra["paper_title" if k == "name" else ("eps_text" if k == "eps" else k)] = lb[k]
    if entry.paper:
        extra["paper_id"] = entry.paper.get("robust_id")
        extra["paper_normal"] = entry.paper.get("normal")
    md["extra"] = extra
    return {k: v for k, v in md.items() if v is not None}
