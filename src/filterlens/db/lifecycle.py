"""A database directory's life: recognising one (its marker) and creating an empty one atomically."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pyarrow.parquet as pq

from .._version import __version__
from . import _fs
from .errors import DatabaseError
from .schema import (
    FILTERS_DIR,
    FORMAT,
    LAYERS_SCHEMA,
    LOCK,
    MANIFEST,
    MARKER,
    MODELS_SCHEMA,
    SCHEMA_VERSION,
    TABLES_DIR,
    TMP_DIR,
)
from .snapshot import check_version, new_manifest, now, table_names


def created_by() -> str:
    return f"filterlens {__version__}"


def read_marker(path: Path) -> dict:
    """The marker of the database at ``path``; a missing, foreign, corrupt or newer one is a
    :class:`DatabaseError` that says which."""
    if not path.exists():
        raise DatabaseError(f"{path}: no such filter database (create one with 'filterlens db create')")
    if not path.is_dir():
        raise DatabaseError(f"{path}: not a filter database (it is a file, not a directory)")
    marker_path = path / MARKER
    if not marker_path.exists():
        if not any(path.iterdir()):
            raise DatabaseError(f"{path}: empty directory, not a filter database "
                                "(create one with 'filterlens db create')")
        raise DatabaseError(f"{path}: not a filterlens database (no {MARKER})")
    try:
        marker = json.loads(marker_path.read_text())
    except (OSError, ValueError) as exc:
        raise DatabaseError(f"{path}: corrupt filter database: cannot read {MARKER} ({exc})") from None
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        raise DatabaseError(f"{path}: not a filterlens database ({MARKER} is not a {FORMAT} marker)")
    check_version(path, marker.get("schema_version"))
    missing = [d for d in (TABLES_DIR, FILTERS_DIR, TMP_DIR) if not (path / d).is_dir()]
    if missing:
        raise DatabaseError(f"{path}: corrupt filter database: no {', '.join(missing)} folder")
    return marker


def create_database(path: Path, exist_ok: bool) -> dict | None:
    """Create an empty database at ``path`` (a new or empty directory); return its marker, or
    None where a database is already there and ``exist_ok`` (open that one).

    Built in a staging folder beside ``path`` and renamed into place, so it appears whole.
    """
    if path.exists():
        if (path / MARKER).exists():
            if exist_ok:
                return None
            raise DatabaseError(f"{path}: already a filter database")
        if not path.is_dir():
            raise DatabaseError(f"{path}: exists and is not a directory")
        if any(path.iterdir()):
            raise DatabaseError(f"{path}: directory is not empty and is not a filter database; "
                                "refusing to create one there")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot create a filter database ({exc.strerror or exc})") from None
    _fs.remove_dead_staging(path)
    staging = path.parent / f".{path.name}.creating-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        for d in (TABLES_DIR, FILTERS_DIR, TMP_DIR):
            (staging / d).mkdir()
        marker = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "created_at": now().isoformat(),
                  "created_by": created_by()}
        models_rel, layers_rel = table_names(0)
        pq.write_table(MODELS_SCHEMA.empty_table(), staging / models_rel)
        pq.write_table(LAYERS_SCHEMA.empty_table(), staging / layers_rel)
        for rel in (models_rel, layers_rel):
            _fs.fsync_file(staging / rel)
        _fs.fsync_dir(staging / TABLES_DIR)
        manifest = new_manifest(0, 0, 0, models_rel, layers_rel, [], {})
        _fs.write_json_atomic(staging / MANIFEST, manifest, staging / TMP_DIR)
        _fs.write_json_atomic(staging / MARKER, marker, staging / TMP_DIR)
        (staging / LOCK).touch()
        os.rename(staging, path)  # replaces an empty directory; fails on a non-empty one
        _fs.fsync_dir(path.parent)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if (path / MARKER).exists():  # someone else created it meanwhile
            if exist_ok:
                return None
            raise DatabaseError(f"{path}: already a filter database") from None
        raise DatabaseError(f"{path}: cannot create a filter database ({exc})") from None
    return marker
