"""Writing: staging a model's filters files layer by layer, committing, and garbage collection.

A model's filters go to one file per (kernel shape, dtype) under temporary names; the commit
renames them into ``filters/``, writes the new tables under new names and replaces the manifest
last (the commit point). See :mod:`filterlens.db.store` for the consistency model.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from ..types import ConvLayer
from . import _fs
from .errors import DatabaseError
from .filestore import FiltersFileWriter, storage_dtype
from .hashing import layer_sha256, model_sha256
from .rows import check_layer, filters_of, layer_row
from .schema import FILTERS_DIR, MANIFEST, TABLES_DIR, TMP_DIR
from .snapshot import Snapshot, new_manifest, orphans, table_names


@dataclass(frozen=True)
class MeasuredLayer:
    """One conv layer ready to store: its weight, its metrics (``METRIC_COLUMNS``; e.g. one
    dict of :func:`filterlens.measure.measure_layers`) and JSON-able extras."""

    layer: ConvLayer
    metrics: Mapping[str, Any]
    extra: Mapping[str, Any] | None = None


class ModelStager:
    """Writes one model's layers, one at a time, into filters files in ``tmp_dir``; builds its
    layer rows and hashes on the way. Memory: the layer being written plus at most one row
    group per open file. :meth:`finish` names the files (they carry the model's hash).
    ``hash_only`` validates and hashes, and writes nothing."""

    def __init__(self, tmp_dir: Path, name: str, model_id: int, layer_id0: int, depth_source: str,
                 hash_only: bool = False):
        self.tmp_dir, self.name, self.model_id, self.layer_id0 = Path(tmp_dir), name, model_id, layer_id0
        self.depth_source = depth_source
        self.hash_only = hash_only  # only the hash is wanted (e.g. to name the duplicate): write nothing
        self.rows: list[dict] = []
        self.digests: list[str] = []
        self.n_filters = 0
        self._seen: set[str] = set()
        self._files: dict[tuple[int, int, str], tuple[FiltersFileWriter, Path]] = {}

    def write(self, item: MeasuredLayer, digest: str | None = None) -> None:
        """Validate, hash (unless its :func:`layer_sha256` ``digest`` is given) and write one
        layer; build its row."""
        layer = item.layer
        check_layer(self.name, layer, self._seen)
        index = len(self.rows)
        filters = filters_of(layer)
        kh, kw = layer.kernel_size
        key = (kh, kw, storage_dtype(layer.weight.dtype).name)
        offset = 0 if self.hash_only else self._writer(key).write(self.layer_id0 + index, filters)
        digest = digest or layer_sha256(layer.weight)
        self.rows.append(layer_row(layer, index, self.layer_id0 + index, self.model_id, self.name, self.depth_source,
                                   key, offset, digest, item.metrics, item.extra))
        self.digests.append(digest)
        self.n_filters += filters.shape[0]

    def _writer(self, key: tuple[int, int, str]) -> FiltersFileWriter:
        if key not in self._files:
            kh, kw, dtname = key
            tmp = self.tmp_dir / f"{self.model_id:06d}.{kh}x{kw}.{dtname}.{uuid.uuid4().hex[:8]}.tmp"
            meta = {"filterlens": json.dumps({"model": self.name, "model_id": self.model_id, "kernel": [kh, kw],
                                              "dtype": dtname})}
            self._files[key] = (FiltersFileWriter(tmp, (kh, kw), dtname, metadata=meta), tmp)
        return self._files[key][0]

    def finish(self, sha: str | None = None, fsync: bool = False) -> tuple[str, list[tuple[Path, str]]]:
        """Close the files; return the model's sha256 (``sha`` if given) and ``(tmp path, path
        relative to the database)`` of each file, in the order they were opened."""
        if not self.rows:
            self.abort()
            raise DatabaseError(f"{self.name}: no conv layers to store")
        for writer, tmp in self._files.values():
            writer.close()
            if fsync:
                _fs.fsync_file(tmp)
        sha = sha or model_sha256(self.digests)
        if self.hash_only:
            return sha, []
        uid = f"{self.model_id:06d}-{sha[:12]}"
        rel = {key: f"{FILTERS_DIR}/{uid}.{key[0]}x{key[1]}.{key[2]}.parquet" for key in self._files}
        for row in self.rows:
            row["file"] = rel[row["file"]]
        return sha, [(tmp, rel[key]) for key, (_, tmp) in self._files.items()]

    def abort(self) -> None:
        """Close and delete what was written."""
        for writer, tmp in self._files.values():
            try:
                writer.close()
            except Exception:  # noqa: BLE001 - the file is deleted anyway
                pass
            tmp.unlink(missing_ok=True)
        self._files.clear()


def commit(root: Path, snap: Snapshot, models_t: pa.Table, layers_t: pa.Table, files: list[str], *,
           next_model_id: int | None = None, next_layer_id: int | None = None,
           attrs: dict | None = None) -> Snapshot:
    """Write the new tables under new names, then replace the manifest: the commit point.
    Returns the new state (the caller holds the writers' lock)."""
    m = snap.manifest
    gen = snap.generation + 1
    models_rel, layers_rel = table_names(gen)
    tmp_dir = root / TMP_DIR
    pairs = []
    for table, rel in ((models_t, models_rel), (layers_t, layers_rel)):
        tmp = tmp_dir / f"{Path(rel).name}.{uuid.uuid4().hex[:8]}.tmp"
        pairs.append((tmp, root / rel))
        pq.write_table(table, tmp, compression="zstd")
    _fs.replace_durably(pairs)
    manifest = new_manifest(gen, next_model_id if next_model_id is not None else m["next_model_id"],
                            next_layer_id if next_layer_id is not None else m["next_layer_id"],
                            models_rel, layers_rel, files, attrs if attrs is not None else m.get("attrs", {}))
    _fs.write_json_atomic(root / MANIFEST, manifest, tmp_dir)
    # readers may still hold the previous generation: keep it, drop older ones
    keep = set(table_names(gen)) | set(table_names(gen - 1))
    for p in (root / TABLES_DIR).iterdir():
        if f"{TABLES_DIR}/{p.name}" not in keep:
            p.unlink(missing_ok=True)
    return Snapshot(manifest, models_t, layers_t)


def collect_garbage(root: Path, snap: Snapshot) -> None:
    """Remove what killed writers left behind (callers hold the lock)."""
    for p in (root / TMP_DIR).iterdir():
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    for p in orphans(root, snap):
        p.unlink(missing_ok=True)
