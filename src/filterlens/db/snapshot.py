"""Reading one committed state of a database: its manifest and its two tables, validated.

Everything here reads; nothing writes. Paths read from a database are checked to stay inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import _fs
from .errors import DatabaseError
from .schema import (
    ADDED_LAYER_COLUMNS,
    FILTERS_DIR,
    FORMAT,
    LAYERS_SCHEMA,
    MANIFEST,
    METRIC_COLUMNS,
    MODELS_SCHEMA,
    NULLABLE_INT,
    SCHEMA_VERSION,
    TABLES_DIR,
)


def now() -> datetime:
    return datetime.now(timezone.utc)


def to_pandas(table: pa.Table) -> pd.DataFrame:
    """An Arrow table as pandas, integer columns that may be null as ``Int64``."""
    df = table.to_pandas()
    for c in NULLABLE_INT.intersection(df.columns):
        df[c] = df[c].astype("Int64")
    return df


@dataclass
class Snapshot:
    """One committed state of the database: its manifest and its two tables."""

    manifest: dict
    models_table: pa.Table
    layers_table: pa.Table
    _models: pd.DataFrame | None = field(default=None, repr=False)
    _layers: pd.DataFrame | None = field(default=None, repr=False)

    @property
    def generation(self) -> int:
        return int(self.manifest["generation"])

    @property
    def models(self) -> pd.DataFrame:
        if self._models is None:
            self._models = to_pandas(self.models_table)
        return self._models

    @property
    def layers(self) -> pd.DataFrame:
        if self._layers is None:
            self._layers = to_pandas(self.layers_table)
        return self._layers


def check_version(path: Path, version: Any) -> None:
    if not isinstance(version, int):
        raise DatabaseError(f"{path}: corrupt filter database: no schema version")
    if version > SCHEMA_VERSION:
        raise DatabaseError(f"{path}: filter database schema version {version} is newer than this filterlens "
                            f"supports ({SCHEMA_VERSION}); upgrade filterlens")
    if version < SCHEMA_VERSION:
        raise DatabaseError(f"{path}: filter database schema version {version} is older than this filterlens "
                            f"reads ({SCHEMA_VERSION}); re-extract it with this version")


def table_names(gen: int) -> tuple[str, str]:
    """The models and layers table files of generation ``gen``."""
    return f"{TABLES_DIR}/models.{gen:06d}.parquet", f"{TABLES_DIR}/layers.{gen:06d}.parquet"


def new_manifest(gen, next_model_id, next_layer_id, models_rel, layers_rel, files, attrs) -> dict:
    return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "generation": gen,
            "next_model_id": int(next_model_id), "next_layer_id": int(next_layer_id),
            "models_table": models_rel, "layers_table": layers_rel, "files": list(files), "attrs": attrs,
            "updated_at": now().isoformat()}


def read_manifest(root: Path) -> dict:
    """The manifest now, validated (types, keys, every path inside the database)."""
    try:
        manifest = _fs.read_json_retry(root / MANIFEST)
    except FileNotFoundError:
        raise DatabaseError(f"{root}: corrupt filter database: {MANIFEST} is missing") from None
    except (OSError, ValueError) as exc:
        raise DatabaseError(f"{root}: corrupt filter database: cannot read {MANIFEST} ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatabaseError(f"{root}: corrupt filter database: {MANIFEST} is not a {FORMAT} manifest")
    check_version(root, manifest.get("schema_version"))
    for key in ("generation", "models_table", "layers_table", "files", "next_model_id", "next_layer_id"):
        if key not in manifest:
            raise DatabaseError(f"{root}: corrupt filter database: {MANIFEST} lacks {key!r}")
    if not isinstance(manifest["files"], list):
        raise DatabaseError(f"{root}: corrupt filter database: {MANIFEST} 'files' is not a list")
    for key in ("generation", "next_model_id", "next_layer_id"):
        if not isinstance(manifest[key], int) or isinstance(manifest[key], bool):
            raise DatabaseError(f"{root}: corrupt filter database: {MANIFEST} {key!r} is not a number")
    _fs.inside(root, manifest["models_table"], TABLES_DIR, resolve=False)
    _fs.inside(root, manifest["layers_table"], TABLES_DIR, resolve=False)
    for f in manifest["files"]:
        _fs.inside(root, f, FILTERS_DIR, resolve=False)
    return manifest


def read_snapshot(root: Path, manifest: dict) -> Snapshot:
    """The tables ``manifest`` names, validated. Raises ``FileNotFoundError`` when a table is
    gone (writers committed twice since the manifest was read: read the new one)."""
    try:
        models = pq.read_table(_fs.inside(root, manifest["models_table"], TABLES_DIR))
        layers = pq.read_table(_fs.inside(root, manifest["layers_table"], TABLES_DIR))
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError, KeyError, ValueError, MemoryError) as exc:
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DatabaseError(f"{root}: corrupt filter database: cannot read its tables ({msg})") from None
    layers = with_added_columns(layers)
    for table, schema, what in ((models, MODELS_SCHEMA, "models"), (layers, LAYERS_SCHEMA, "layers")):
        missing = [f.name for f in schema if f.name not in table.column_names and f.name not in METRIC_COLUMNS]
        if missing:
            raise DatabaseError(f"{root}: corrupt filter database: the {what} table lacks "
                                f"{', '.join(missing)}")
        wrong = [f.name for f in schema if f.name in table.column_names
                 and not table.schema.field(f.name).type.equals(f.type)]
        if wrong:
            raise DatabaseError(f"{root}: corrupt filter database: the {what} table has columns "
                                f"of the wrong type ({', '.join(wrong)})")
    # every path read from a database must stay inside it (a layer naming '../x' is hostile);
    # by name here (cheap for any number of files), resolved where a file is opened or deleted
    for f in set(pc.unique(layers.column("file")).to_pylist()) | set(manifest["files"]):
        _fs.inside(root, f, FILTERS_DIR, resolve=False)
    return Snapshot(manifest, models, layers)


def with_added_columns(layers: pa.Table) -> pa.Table:
    """A layers table written before a column of :data:`ADDED_LAYER_COLUMNS` existed gets it, with
    its default, at its place in the schema (e.g. ``unused`` false: such a database recorded no
    unused layer); a null there reads as the default too."""
    for name, default in ADDED_LAYER_COLUMNS.items():
        field = LAYERS_SCHEMA.field(name)
        if name not in layers.column_names:
            after = LAYERS_SCHEMA.names[LAYERS_SCHEMA.get_field_index(name) - 1]
            at = layers.column_names.index(after) + 1 if after in layers.column_names else layers.num_columns
            layers = layers.add_column(at, field, pa.array([default] * layers.num_rows, field.type))
        elif layers.column(name).null_count and layers.schema.field(name).type.equals(field.type):
            i = layers.column_names.index(name)
            layers = layers.set_column(i, field, pc.fill_null(layers.column(name), default))
    return layers


def orphans(root: Path, snap: Snapshot) -> list[Path]:
    """Files in filters/ and tables/ that no manifest still in use names."""
    listed = set(snap.manifest["files"])
    keep = set(table_names(snap.generation)) | set(table_names(snap.generation - 1))
    out = [p for p in (root / FILTERS_DIR).iterdir() if f"{FILTERS_DIR}/{p.name}" not in listed]
    out += [p for p in (root / TABLES_DIR).iterdir()
            if f"{TABLES_DIR}/{p.name}" not in keep and _generation_of(p) > snap.generation]
    return out


def _generation_of(p: Path) -> int:
    try:
        return int(p.name.split(".")[1])
    except (IndexError, ValueError):
        return 1 << 62


def require_models(snap: Snapshot, names: Sequence[str]) -> None:
    have = set(snap.models_table.column("model").to_pylist())
    missing = [n for n in names if n not in have]
    if missing:
        raise DatabaseError(f"no model {', '.join(map(repr, missing))} in the database")
