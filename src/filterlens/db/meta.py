"""Model metadata: validation of single values and ``--meta FILE.csv`` tables."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from ..budget import parse_fraction
from .errors import DatabaseError
from ..training import TRAINING_VALUES, UNKNOWN, TrainingLabelError, training_label

#: Metadata fields with a column of their own in the models table.
META_FIELDS = ("model", "source", "arch", "dataset", "training", "threat_model", "eps",
               "clean_acc", "robust_acc", "tags")
_ALIASES = {"name": "model", "robust_accuracy": "robust_acc", "clean_accuracy": "clean_acc",
            "epsilon": "eps", "threat": "threat_model"}
_FLOATS = ("clean_acc", "robust_acc")


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def parse_eps(value: Any) -> float | None:
    """A perturbation budget: a number or a fraction such as ``8/255``; empty -> None."""
    if _missing(value):
        return None
    try:
        eps = parse_fraction(value)
    except ValueError:
        raise DatabaseError(f"eps must be a finite number or a fraction like 8/255, not {value!r}") from None
    if eps < 0:
        raise DatabaseError(f"eps must be a finite number >= 0, not {value!r}")
    return eps


def parse_training(value: Any) -> str | None:
    """The stored training label of any spelling (see :func:`filterlens.training.training_label`):
    ``adversarial`` (robust, AT, pgd ...), ``normal`` (clean, standard ...) or ``unknown``;
    empty -> None."""
    if _missing(value):
        return None
    try:
        return training_label(value) or UNKNOWN
    except TrainingLabelError:
        raise DatabaseError(f"training must be one of {', '.join(TRAINING_VALUES)} (or a synonym such as "
                            f"robust, AT, pgd, clean, standard), not {value!r}") from None


def _parse_float(value: Any, field: str) -> float | None:
    if _missing(value):
        return None
    text = str(value).strip().rstrip("%") if isinstance(value, str) else value
    try:
        out = float(text)
    except (TypeError, ValueError):
        raise DatabaseError(f"{field} must be a number, not {value!r}") from None
    if not math.isfinite(out):
        raise DatabaseError(f"{field} must be a finite number, not {value!r}")
    return out


def _parse_tags(value: Any) -> str | None:
    if _missing(value):
        return None
    items = value if isinstance(value, (list, tuple, set)) else str(value).replace(";", ",").split(",")
    tags = [str(t).strip() for t in items if str(t).strip()]
    return ",".join(dict.fromkeys(tags)) or None


def _plain(value: Any) -> Any:
    """A JSON-friendly Python scalar."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        try:
            return value.item()
        except (ValueError, AttributeError):
            pass
    return value


def normalize_metadata(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate and normalise one model's metadata.

    Known fields (:data:`META_FIELDS`, plus the aliases ``name``, ``epsilon``, ...) are parsed:
    ``training`` must be normal | adversarial | unknown, ``eps`` accepts ``8/255``, accuracies
    accept a trailing ``%`` and are kept as given, ``tags`` may be a list or a comma-separated
    string. Empty values are dropped. Other keys are returned under ``"extra"`` (a dict).
    """
    out: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in (meta or {}).items():
        k = str(key).strip()
        norm = _ALIASES.get(k.lower().replace(" ", "_").replace("-", "_"), k.lower().replace("-", "_"))
        if norm == "extra" and isinstance(value, Mapping):
            extra.update(value)
            continue
        if norm not in META_FIELDS:
            if not _missing(value):
                extra[k] = _plain(value)
            continue
        if norm == "training":
            parsed = parse_training(value)
        elif norm == "eps":
            parsed = parse_eps(value)
        elif norm in _FLOATS:
            parsed = _parse_float(value, norm)
        elif norm == "tags":
            parsed = _parse_tags(value)
        else:
            parsed = None if _missing(value) else str(value).strip()
        if parsed is not None:
            out[norm] = parsed
    if extra:
        out["extra"] = extra
    return out


class MetaTable:
    """Metadata of many models from a CSV file, one row per model.

    Columns match the models table (``model`` or ``name``, ``source``, ``arch``, ``dataset``,
    ``training``, ``threat_model``, ``eps``, ``clean_acc``, ``robust_acc``, ``tags``); other
    columns are kept as extra metadata. A row applies to a source when its ``source`` names the
    same file (relative paths are taken from the CSV's folder or the working directory) or the
    same string, or, failing that, when its ``model`` equals the model's name.
    """

    def __init__(self, rows: list[dict[str, Any]], origin: str = "metadata"):
        self.origin = origin
        self.rows = rows
        self.used: set[int] = set()
        self._by_source: dict[str, list[int]] = {}
        self._by_name: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            for key in row.get("_source_keys", ()):
                self._by_source.setdefault(key, []).append(i)
            if "model" in row:
                self._by_name.setdefault(row["model"], []).append(i)

    @classmethod
    def read_csv(cls, path: str | Path) -> "MetaTable":
        """Read and validate a metadata CSV; errors name the file and line."""
        path = Path(path)
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        except FileNotFoundError:
            raise DatabaseError(f"{path}: no such metadata file") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DatabaseError(f"{path}: not a readable CSV file ({exc})") from None
        cols = {c.strip().lower().replace(" ", "_").replace("-", "_") for c in df.columns}
        cols = {_ALIASES.get(c, c) for c in cols}
        if "model" not in cols and "source" not in cols:
            raise DatabaseError(f"{path}: needs a 'source' or a 'model' (or 'name') column to match rows")
        rows = []
        for line, rec in enumerate(df.to_dict("records"), start=2):
            try:
                row = normalize_metadata(rec)
            except DatabaseError as exc:
                raise DatabaseError(f"{path}, line {line}: {exc}") from None
            if "source" in row:
                keys = _source_keys(row["source"], path.parent)
                if "/" not in row["source"] and os.sep not in row["source"]:
                    keys.append(f"file:{row['source']}")  # a bare file name matches that file anywhere
                row["_source_keys"] = keys
            row["_line"] = line
            rows.append(row)
        dup = pd.Series([r["model"] for r in rows if "model" in r]).duplicated()
        if dup.any():
            names = [r["model"] for r in rows if "model" in r]
            raise DatabaseError(f"{path}: model {names[int(dup.idxmax())]!r} appears on more than one row")
        return cls(rows, origin=str(path))

    def lookup(self, source: str | None, name: str | None = None) -> dict[str, Any] | None:
        """The row for ``source`` (or, if none names it, for model ``name``), without the file keys."""
        hits: list[int] = []
        if source is not None:
            for key in [*_source_keys(source, Path.cwd()), f"file:{Path(source).name}"]:
                hits = self._by_source.get(key, [])
                if hits:
                    break
        if not hits and name is not None:
            hits = self._by_name.get(name, [])
        if not hits:
            return None
        if len(set(hits)) > 1:
            lines = ", ".join(str(self.rows[i]["_line"]) for i in sorted(set(hits)))
            raise DatabaseError(f"{self.origin}: lines {lines} all match {source or name}")
        self.used.add(hits[0])
        return {k: v for k, v in self.rows[hits[0]].items() if not k.startswith("_")}

    def unused_lines(self) -> list[int]:
        """CSV lines that matched no source so far."""
        return [r["_line"] for i, r in enumerate(self.rows) if i not in self.used]


def _source_keys(source: str, base: Path) -> list[str]:
    """Keys under which a source string is matched: the string, then its resolved path."""
    keys = [source]
    if ":" in source and not Path(source).exists() and not os.path.isabs(source):
        return keys  # e.g. robustbench:NAME
    p = Path(source).expanduser()
    for cand in ([p] if p.is_absolute() else [base / p, Path.cwd() / p]):
        try:
            keys.append(str(cand.resolve()))
        except OSError:
            pass
    return list(dict.fromkeys(keys))
