"""The filter database: a directory of Parquet files, queried in place with DuckDB.

Consistency model
-----------------
``manifest.json`` names the committed table files and filters files. A writer (one at a time,
under an ``fcntl`` lock) writes new files under fresh names, fsyncs them, and then replaces the
manifest atomically: that rename is the commit. Files a manifest names are never modified, so a
reader that took a manifest sees one consistent state however long it reads. A writer killed at
any moment leaves the previous manifest in force; its stray files are removed by the next writer.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..metrics import DEFAULT_THRESHOLD, measure_weights
from ..types import ConvLayer, ModelFilters
from . import _fs
from . import sql as _sql
from .errors import DatabaseError, DatabaseWriteError, DuplicateModelError
from .filestore import FiltersReader, storage_dtype, write_filters_file
from .meta import normalize_metadata
from .schema import (
    FILTERS_DIR,
    FORMAT,
    LAYERS_SCHEMA,
    LOCK,
    MANIFEST,
    MARKER,
    METRIC_COLUMNS,
    MODELS_SCHEMA,
    NULLABLE_INT,
    SCHEMA_VERSION,
    TABLES_DIR,
    TMP_DIR,
)

KernelSize = int | tuple[int, int] | None


# --------------------------------------------------------------------------------------------
# hashing


def layer_sha256(weight: np.ndarray) -> str:
    """sha256 of one layer weight: its little-endian dtype, shape and bytes."""
    w = np.ascontiguousarray(weight, dtype=storage_dtype(weight.dtype))
    h = hashlib.sha256(f"{w.dtype.str}{tuple(w.shape)}".encode())
    h.update(memoryview(w).cast("B") if w.size else b"")  # a view of a 0-channel layer cannot be cast
    return h.hexdigest()


def model_sha256(mf: ModelFilters | Iterable[str]) -> str:
    """sha256 identifying a model's conv weights, whatever the order or names of its layers.

    The hash of the sorted per-layer hashes (:func:`layer_sha256`), so the same weights read
    from a checkpoint and from an ONNX export of it hash the same. Also accepts the per-layer
    hashes themselves.
    """
    digests = [layer_sha256(l.weight) for l in mf.layers] if isinstance(mf, ModelFilters) else list(mf)
    return hashlib.sha256("".join(sorted(digests)).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# snapshots and chunks


def _to_pandas(table: pa.Table) -> pd.DataFrame:
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
            self._models = _to_pandas(self.models_table)
        return self._models

    @property
    def layers(self) -> pd.DataFrame:
        if self._layers is None:
            self._layers = _to_pandas(self.layers_table)
        return self._layers


CHUNK_KEY_DTYPE = np.dtype([("layer_id", np.int64), ("start", np.int64), ("stop", np.int64),
                            ("offset", np.int64)])


@dataclass(frozen=True, eq=False)
class FilterChunk:
    """A block of filters of one kernel shape and dtype, from one model.

    ``filters`` is ``(n, kh, kw)`` in the stored dtype; read-only when it is a stored row group
    as read (``chunk_size=None``), a fresh array when pieces were joined.
    ``keys`` says which layers it holds: rows ``offset : offset + stop - start`` of ``filters``
    are filters ``start : stop`` of layer ``layer_id``. ``layers`` gives those as rows of the
    layers table (with ``start``, ``stop``, ``offset``), built on first use.
    Unpacks as ``layers, filters = chunk``.
    """

    keys: np.ndarray
    filters: np.ndarray
    _lookup: "_LayerLookup" = field(repr=False)

    @property
    def layers(self) -> pd.DataFrame:
        rows = self._lookup.rows(self.keys["layer_id"])
        for k in ("start", "stop", "offset"):
            rows[k] = self.keys[k]
        return rows

    def layer_ids(self) -> np.ndarray:
        """The layer id of each filter (row) of the chunk."""
        return np.repeat(self.keys["layer_id"], self.keys["stop"] - self.keys["start"])

    def filter_index(self) -> np.ndarray:
        """The index of each filter (row) within its layer."""
        return np.concatenate([np.arange(s, e) for s, e in zip(self.keys["start"], self.keys["stop"])]
                              or [np.zeros(0, np.int64)])

    def __iter__(self):
        yield self.layers
        yield self.filters

    def __len__(self) -> int:
        return self.filters.shape[0]


class _LayerLookup:
    """Rows of a snapshot's layers table by layer id, indexed on first use."""

    def __init__(self, snap: Snapshot):
        self._snap = snap
        self._indexed: pd.DataFrame | None = None

    def rows(self, layer_ids: np.ndarray) -> pd.DataFrame:
        if self._indexed is None:
            self._indexed = self._snap.layers.set_index("layer_id", drop=False)
        return self._indexed.loc[layer_ids].reset_index(drop=True)


def _chunk_keys(lo: list[int], hi: list[int], ids: list[int], cs: int, ce: int) -> np.ndarray:
    """Keys of the file rows ``[cs, ce)`` given sorted, disjoint layer row ranges ``[lo, hi)``."""
    i = bisect.bisect_right(hi, cs)
    keys = []
    while i < len(lo) and lo[i] < ce:
        s, e = max(lo[i], cs), min(hi[i], ce)
        if e > s:
            keys.append((ids[i], s - lo[i], e - lo[i], s - cs))
        i += 1
    return np.array(keys, dtype=CHUNK_KEY_DTYPE)


def _runs(lo: list[int], hi: list[int]) -> list[tuple[int, int]]:
    """Merge sorted ``[lo, hi)`` ranges that touch into runs."""
    runs: list[list[int]] = []
    for a, b in zip(lo, hi):
        if runs and a == runs[-1][1]:
            runs[-1][1] = b
        else:
            runs.append([a, b])
    return [(a, b) for a, b in runs if b > a]


def _chunked(pieces: Iterator[np.ndarray], size: int | None) -> Iterator[np.ndarray]:
    """Regroup consecutive arrays into arrays of ``size`` rows (the last may be shorter)."""
    if size is None:
        yield from pieces
        return
    buf: list[np.ndarray] = []
    have = 0
    for arr in pieces:
        i = 0
        while i < arr.shape[0]:
            take = min(size - have, arr.shape[0] - i)
            buf.append(arr[i:i + take])
            have += take
            i += take
            if have == size:
                yield buf[0] if len(buf) == 1 else np.concatenate(buf)
                buf, have = [], 0
    if have:
        yield buf[0] if len(buf) == 1 else np.concatenate(buf)


# --------------------------------------------------------------------------------------------
# the database


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _decode_udf(w: pa.ChunkedArray, dtype: pa.ChunkedArray) -> pa.Array:
    """DuckDB scalar function: raw filter bytes + dtype name -> DOUBLE[] (exact)."""
    w = w.combine_chunks() if isinstance(w, pa.ChunkedArray) else w
    if not (pa.types.is_binary(w.type) or pa.types.is_large_binary(w.type)):
        w = w.cast(pa.large_binary())
    dtype = dtype.combine_chunks() if isinstance(dtype, pa.ChunkedArray) else dtype
    if len(w) == 0:
        return pa.array([], pa.list_(pa.float64()))
    names = pc.unique(dtype).to_pylist()
    if len(names) == 1 and names[0] is not None and w.null_count == 0:
        dt = storage_dtype(names[0])
        off_type = np.int64 if pa.types.is_large_binary(w.type) else np.int32
        offsets = np.frombuffer(w.buffers()[1], off_type, count=len(w) + 1, offset=w.offset * off_type().itemsize)
        data = np.frombuffer(w.buffers()[2], np.uint8, count=int(offsets[-1] - offsets[0]), offset=int(offsets[0]))
        values = data.view(dt).astype(np.float64)
        return pa.ListArray.from_arrays(pa.array((offsets - offsets[0]) // dt.itemsize, pa.int32()), values)
    out = []
    for b, name in zip(w.to_pylist(), dtype.to_pylist()):
        out.append(None if b is None or name is None else np.frombuffer(b, storage_dtype(name)).astype(float).tolist())
    return pa.array(out, pa.list_(pa.float64()))


#: ``filters_raw`` over filters files of any kernel shape: the fixed-size ``w`` read as bytes.
_FILTERS_RAW_SCHEMA = pa.schema([pa.field("layer_id", pa.int64()), pa.field("filter", pa.int32()),
                                 pa.field("w", pa.large_binary())])


class _StaleSnapshot(Exception):
    """The files of a snapshot were replaced by newer commits while it was being queried."""


class FilterDB:
    """A filter database directory. Get one with :meth:`open`, :meth:`create` or :meth:`open_or_create`.

    Every read takes the committed state at that moment (see :meth:`snapshot`); a handle
    always sees the latest models, and never a half-written one.
    """

    def __init__(self, path: Path, marker: dict, lock_timeout: float | None = None):
        self._path = Path(path)
        self._marker = marker
        self.lock_timeout = lock_timeout
        self._con = None
        self._view_generation: int | None = None
        self._snap_cache: Snapshot | None = None

    # ---- opening and creating ------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    def __repr__(self) -> str:
        return f"FilterDB({str(self._path)!r})"

    @classmethod
    def open(cls, path: str | os.PathLike, lock_timeout: float | None = None) -> "FilterDB":
        """Open an existing database; a missing, foreign, corrupt or newer one is a :class:`DatabaseError`."""
        path = Path(path).expanduser()
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
        _check_version(path, marker.get("schema_version"))
        missing = [d for d in (TABLES_DIR, FILTERS_DIR, TMP_DIR) if not (path / d).is_dir()]
        if missing:
            raise DatabaseError(f"{path}: corrupt filter database: no {', '.join(missing)} folder")
        db = cls(path, marker, lock_timeout)
        db.snapshot()  # validates the manifest and the tables
        return db

    @classmethod
    def create(cls, path: str | os.PathLike, exist_ok: bool = False) -> "FilterDB":
        """Create an empty database at ``path`` (a new or empty directory).

        Refuses a non-empty directory that is not a database; an existing database is opened
        with ``exist_ok`` and refused otherwise. The new database appears atomically.
        """
        path = Path(path).expanduser()
        if path.exists():
            if (path / MARKER).exists():
                if exist_ok:
                    return cls.open(path)
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
            marker = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "created_at": _now().isoformat(),
                      "created_by": _version()}
            models_rel, layers_rel = _table_names(0)
            pq.write_table(MODELS_SCHEMA.empty_table(), staging / models_rel)
            pq.write_table(LAYERS_SCHEMA.empty_table(), staging / layers_rel)
            for rel in (models_rel, layers_rel):
                _fs.fsync_file(staging / rel)
            _fs.fsync_dir(staging / TABLES_DIR)
            manifest = _manifest(0, 0, 0, models_rel, layers_rel, [], {})
            _fs.write_json_atomic(staging / MANIFEST, manifest, staging / TMP_DIR)
            _fs.write_json_atomic(staging / MARKER, marker, staging / TMP_DIR)
            (staging / LOCK).touch()
            os.rename(staging, path)  # replaces an empty directory; fails on a non-empty one
            _fs.fsync_dir(path.parent)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            if (path / MARKER).exists():  # someone else created it meanwhile
                if exist_ok:
                    return cls.open(path)
                raise DatabaseError(f"{path}: already a filter database") from None
            raise DatabaseError(f"{path}: cannot create a filter database ({exc})") from None
        return cls(path, marker)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike) -> "FilterDB":
        """Open the database at ``path``, creating it when the directory is missing or empty."""
        path = Path(path).expanduser()
        if path.is_dir() and (path / MARKER).exists():
            return cls.open(path)
        return cls.create(path, exist_ok=True)

    # ---- reading -------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The committed state now: manifest plus models and layers tables, read consistently."""
        last_exc: Exception | None = None
        for _ in range(5):
            manifest = self._read_manifest()
            cached = self._snap_cache
            if cached is not None and cached.manifest == manifest:  # committed files never change
                return cached
            try:
                models = pq.read_table(_fs.inside(self._path, manifest["models_table"], TABLES_DIR))
                layers = pq.read_table(_fs.inside(self._path, manifest["layers_table"], TABLES_DIR))
            except FileNotFoundError as exc:  # a writer committed twice meanwhile: take the new state
                last_exc = exc
                continue
            except (pa.ArrowException, OSError, KeyError, ValueError, MemoryError) as exc:
                msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise DatabaseError(f"{self._path}: corrupt filter database: cannot read its tables ({msg})") from None
            for table, schema, what in ((models, MODELS_SCHEMA, "models"), (layers, LAYERS_SCHEMA, "layers")):
                missing = [f.name for f in schema if f.name not in table.column_names and f.name not in METRIC_COLUMNS]
                if missing:
                    raise DatabaseError(f"{self._path}: corrupt filter database: the {what} table lacks "
                                        f"{', '.join(missing)}")
                wrong = [f.name for f in schema if f.name in table.column_names
                         and not table.schema.field(f.name).type.equals(f.type)]
                if wrong:
                    raise DatabaseError(f"{self._path}: corrupt filter database: the {what} table has columns "
                                        f"of the wrong type ({', '.join(wrong)})")
            # every path read from a database must stay inside it (a layer naming '../x' is hostile);
            # by name here (cheap for any number of files), resolved where a file is opened or deleted
            for f in set(pc.unique(layers.column("file")).to_pylist()) | set(manifest["files"]):
                _fs.inside(self._path, f, FILTERS_DIR, resolve=False)
            self._snap_cache = Snapshot(manifest, models, layers)
            return self._snap_cache
        raise DatabaseError(f"{self._path}: corrupt filter database: a table named by {MANIFEST} is missing "
                            f"({last_exc})")

    def _read_manifest(self) -> dict:
        try:
            manifest = _fs.read_json_retry(self._path / MANIFEST)
        except FileNotFoundError:
            raise DatabaseError(f"{self._path}: corrupt filter database: {MANIFEST} is missing") from None
        except (OSError, ValueError) as exc:
            raise DatabaseError(f"{self._path}: corrupt filter database: cannot read {MANIFEST} ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise DatabaseError(f"{self._path}: corrupt filter database: {MANIFEST} is not a {FORMAT} manifest")
        _check_version(self._path, manifest.get("schema_version"))
        for key in ("generation", "models_table", "layers_table", "files", "next_model_id", "next_layer_id"):
            if key not in manifest:
                raise DatabaseError(f"{self._path}: corrupt filter database: {MANIFEST} lacks {key!r}")
        if not isinstance(manifest["files"], list):
            raise DatabaseError(f"{self._path}: corrupt filter database: {MANIFEST} 'files' is not a list")
        for key in ("generation", "next_model_id", "next_layer_id"):
            if not isinstance(manifest[key], int) or isinstance(manifest[key], bool):
                raise DatabaseError(f"{self._path}: corrupt filter database: {MANIFEST} {key!r} is not a number")
        _fs.inside(self._path, manifest["models_table"], TABLES_DIR, resolve=False)
        _fs.inside(self._path, manifest["layers_table"], TABLES_DIR, resolve=False)
        for f in manifest["files"]:
            _fs.inside(self._path, f, FILTERS_DIR, resolve=False)
        return manifest

    def models(self) -> pd.DataFrame:
        """The models table: one row per model, with its metadata."""
        return self.snapshot().models.copy()

    def layers(self, model: str | Sequence[str] | None = None) -> pd.DataFrame:
        """The layers table (of ``model`` only, if given): one row per conv layer with its metrics."""
        snap = self.snapshot()
        if model is None:
            return snap.layers.copy()
        names = [model] if isinstance(model, str) else list(model)
        _require_models(snap, names)
        return snap.layers[snap.layers["model"].isin(names)].reset_index(drop=True)

    def model(self, name: str) -> pd.Series:
        """The models-table row of one model."""
        snap = self.snapshot()
        _require_models(snap, [name])
        return snap.models[snap.models["model"] == name].iloc[0].copy()

    def __contains__(self, name: object) -> bool:
        return name in set(self.snapshot().models_table.column("model").to_pylist())

    def __len__(self) -> int:
        return self.snapshot().models_table.num_rows

    def find_sha256(self, sha256: str) -> str | None:
        """Name of the model stored with these weights (see :func:`model_sha256`), if any."""
        t = self.snapshot().models_table
        hit = t.filter(pc.equal(t.column("sha256"), sha256))
        return hit.column("model")[0].as_py() if hit.num_rows else None

    def _select(self, snap: Snapshot, model, layer, where, kernel_size: KernelSize) -> pa.Table:
        """The rows of the layers table that match (an Arrow table: no pandas on the read path)."""
        t = snap.layers_table
        mask = None

        def both(m):
            return m if mask is None else pc.and_(mask, m)

        if model is not None:
            names = [model] if isinstance(model, str) else list(model)
            _require_models(snap, names)
            mask = both(pc.is_in(t.column("model"), pa.array(names, pa.string())))
        if layer is not None:
            wanted = [layer] if isinstance(layer, str) else list(layer)
            mask = both(pc.is_in(t.column("layer"), pa.array(wanted, pa.string())))
            if model is not None:
                missing = set(wanted) - set(t.filter(mask).column("layer").to_pylist())
                if missing:
                    raise DatabaseError(f"no layer {', '.join(sorted(missing))} in {model}")
        if kernel_size is not None:
            kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
            mask = both(pc.and_(pc.equal(t.column("kernel_h"), kh), pc.equal(t.column("kernel_w"), kw)))
        if where is not None:
            cond = _sql.check_condition(where, "where")
            ids = self._query_snapshot(snap, f"SELECT layer_id FROM layers_full WHERE {cond}")["layer_id"]
            mask = both(pc.is_in(t.column("layer_id"), pa.array(ids.to_numpy(np.int64))))
        return t if mask is None else t.filter(mask)

    def iter_filters(
        self,
        model: str | Sequence[str] | None = None,
        layer: str | Sequence[str] | None = None,
        where: str | None = None,
        *,
        kernel_size: KernelSize = None,
        chunk_size: int | None = None,
    ) -> Iterator[FilterChunk]:
        """Stream filters without loading the database: yields :class:`FilterChunk` blocks.

        Select by ``model`` and ``layer`` names, ``kernel_size`` (3 or (kh, kw)) and ``where``, an
        SQL condition over the layers table joined with its model's metadata (view
        ``layers_full``), e.g. ``"training = 'adversarial' AND conv_depth = 0"``.
        ``chunk_size`` None yields the stored row groups (about 4 MB each, no copy); a number
        yields blocks of exactly that many filters (the last of each model file may be shorter).
        A block never mixes models, kernel shapes or dtypes. Order: model, then kernel
        shape/dtype, then layer. Memory stays at one block whatever the selection.
        """
        if chunk_size is not None and chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        snap = self.snapshot()
        sel = self._select(snap, model, layer, where, kernel_size)
        if sel.num_rows == 0:
            return
        lookup = _LayerLookup(snap)
        # plain arrays and lists: per-layer pandas access would cost more than reading small layers
        col = {c: sel.column(c) for c in ("model_id", "file", "row_offset", "n_filters", "layer_id", "kernel_h",
                                          "kernel_w", "dtype", "model")}
        rank = {mid: i for i, mid in enumerate(snap.models_table.column("model_id").to_pylist())}
        files = col["file"].to_pylist()
        offsets = col["row_offset"].to_numpy().astype(np.int64, copy=False)
        counts = col["n_filters"].to_numpy().astype(np.int64, copy=False)
        ids = col["layer_id"].to_numpy().astype(np.int64, copy=False)
        groups: dict[tuple[int, str], list[int]] = {}
        for i, (mid, f) in enumerate(zip(col["model_id"].to_pylist(), files)):
            groups.setdefault((rank[mid], f), []).append(i)
        kh, kw = col["kernel_h"].to_pylist(), col["kernel_w"].to_pylist()
        dts, names = col["dtype"].to_pylist(), col["model"].to_pylist()
        for key in sorted(groups, key=lambda k: (k[0], groups[k][0])):
            idx = sorted(groups[key], key=offsets.__getitem__)
            lo = [int(offsets[i]) for i in idx]
            hi = [a + int(counts[i]) for a, i in zip(lo, idx)]
            gid = [int(ids[i]) for i in idx]
            i0 = idx[0]
            with self._reader(key[1], (kh[i0], kw[i0]), dts[i0], names[i0]) as reader:
                for start, stop in _runs(lo, hi):
                    pos = start
                    for arr in _chunked(reader.pieces(start, stop), chunk_size):
                        end = pos + arr.shape[0]
                        yield FilterChunk(_chunk_keys(lo, hi, gid, pos, end), arr, lookup)
                        pos = end

    def _reader(self, file: str, kernel: tuple[int, int], dtype: str, model: str) -> FiltersReader:
        try:
            return FiltersReader(_fs.inside(self._path, file, FILTERS_DIR), (int(kernel[0]), int(kernel[1])), dtype)
        except FileNotFoundError:
            raise DatabaseError(f"{self._path}: the filters of {model} are gone ({file}); it was removed "
                                "while being read, or the database is damaged (run 'filterlens db check')") from None

    def filters(self, model: str, layer: str) -> np.ndarray:
        """All filters of one layer, ``(n, kh, kw)`` in the stored dtype (a writable copy)."""
        return self._read_layer(model, layer)[0]

    def _read_layer(self, model: str, layer: str) -> tuple[np.ndarray, dict]:
        row = self._select(self.snapshot(), model, layer, None, None).slice(0, 1).to_pylist()[0]
        with self._reader(row["file"], (row["kernel_h"], row["kernel_w"]), row["dtype"], model) as reader:
            start = row["row_offset"]
            return np.array(reader.read(start, start + row["n_filters"])), row

    def weight(self, model: str, layer: str) -> np.ndarray:
        """The layer's weight as the model stores it: ``(dim0, dim1, kh, kw)`` (a writable copy)."""
        filters, r = self._read_layer(model, layer)
        return filters.reshape(r["dim0"], r["dim1"], r["kernel_h"], r["kernel_w"])

    def load_model(self, model: str) -> ModelFilters:
        """A stored model back as :class:`~filterlens.types.ModelFilters` (weights bit-exact)."""
        snap = self.snapshot()
        _require_models(snap, [model])
        mrow = snap.models[snap.models["model"] == model].iloc[0]
        layers = []
        for _, r in snap.layers[snap.layers["model"] == model].sort_values("layer_index").iterrows():
            layers.append(ConvLayer(
                name=r["layer"], weight=self.weight(model, r["layer"]), groups=int(r["groups"]),
                transposed=bool(r["transposed"]), op_type=r["op_type"],
                depth=None if pd.isna(r["depth"]) else int(r["depth"]),
                conv_depth=None if pd.isna(r["conv_depth"]) else int(r["conv_depth"]),
                conv_depth_norm=None if pd.isna(r["conv_depth_norm"]) else float(r["conv_depth_norm"])))
        return ModelFilters(name=model, source=mrow["source"], layers=layers, depth_source=mrow["depth_source"],
                            arch=None if pd.isna(mrow["arch"]) else mrow["arch"])

    # ---- SQL -----------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> pd.DataFrame:
        """Run SQL (DuckDB) over the views ``models``, ``layers``, ``layers_full`` (layers with
        their model's metadata), ``filters`` (model, layer, layer_id, filter, kernel_h,
        kernel_w, dtype, ``w`` DOUBLE[]) and ``filters_raw`` (layer_id, filter, raw bytes ``w``).

        One read-only statement (``SELECT``); it can read only this database's files, write
        nothing and load no extension (see :mod:`filterlens.db.sql`).
        """
        _sql.check_query(sql)
        for _ in range(5):
            snap = self.snapshot()
            try:
                return self._query_snapshot(snap, sql, params)
            except _StaleSnapshot:  # writers committed twice meanwhile: query the newer state
                continue
        raise DatabaseError(f"{self._path}: the database kept changing while the query ran; try again")

    def where(self, view: str, condition: str | None, order_by: str | None = None, *,
              what: str = "--where") -> pd.DataFrame:
        """Rows of ``view`` (``models``, ``layers``, ``layers_full``) matching ``condition``, one
        SQL expression (not SQL text: ``1=1; COPY ...`` is refused), e.g. ``"training = 'normal'"``."""
        if view not in ("models", "layers", "layers_full"):
            raise ValueError(f"unknown view {view!r}")
        sql = f"SELECT * FROM {view}"
        if condition is not None:
            sql += f" WHERE {_sql.check_condition(condition, what)}"
        return self.query(sql + (f" ORDER BY {order_by}" if order_by else ""))

    def _query_snapshot(self, snap: Snapshot, sql: str, params=None) -> pd.DataFrame:
        import duckdb

        try:
            con = self._connection(snap)
            return con.execute(sql, params).df() if params is not None else con.sql(sql).df()
        except duckdb.Error as exc:
            # A writer deletes the filters files of the models it removes: one that committed
            # since ``snap`` was taken may have removed files it names.
            if self._read_manifest()["generation"] != snap.generation:
                self._view_generation = None
                raise _StaleSnapshot() from None
            raise DatabaseError(f"query failed: {(str(exc).strip().splitlines() or [''])[0][:300]}") from None
        except AttributeError:  # a statement without a result (e.g. SET)
            return pd.DataFrame()

    def _connection(self, snap: Snapshot):
        import duckdb

        if self._view_generation != snap.generation:
            # the configuration of a query connection is locked (see db/sql.py): a new
            # generation, whose files the old one may not read, needs a new connection
            self.close()
            m = snap.manifest
            base = self._path
            self._con = con = _sql.connect()
            con.create_function("fl_decode", _decode_udf, [duckdb.sqltype("BLOB"), duckdb.sqltype("VARCHAR")],
                                duckdb.sqltype("DOUBLE[]"), type="arrow")
            # The views read Arrow objects registered here, never a path: the connection itself
            # has no file access at all (see db/sql.py), so no statement can read or write one.
            con.register("_fl_models", snap.models_table)
            con.register("_fl_layers", snap.layers_table)
            con.execute("CREATE OR REPLACE VIEW models AS SELECT * FROM _fl_models")
            con.execute("CREATE OR REPLACE VIEW layers AS SELECT * FROM _fl_layers")
            con.execute(
                "CREATE OR REPLACE VIEW layers_full AS SELECT l.*, m.source, m.sha256 AS model_sha256, m.arch, "
                "m.dataset, m.training, m.threat_model, m.eps, m.clean_acc, m.robust_acc, m.tags "
                "FROM layers l JOIN models m USING (model_id)")
            if m["files"]:
                import pyarrow.dataset as pads

                # each file checked to resolve inside the database (no symlink out)
                files = [str(_fs.inside(base, f, FILTERS_DIR)) for f in m["files"]]
                con.register("_fl_filters", pads.dataset(files, schema=_FILTERS_RAW_SCHEMA, format="parquet"))
                con.execute("CREATE OR REPLACE VIEW filters_raw AS SELECT * FROM _fl_filters")
            else:
                con.execute("CREATE OR REPLACE VIEW filters_raw AS SELECT NULL::BIGINT AS layer_id, "
                            "NULL::INTEGER AS filter, NULL::BLOB AS w WHERE false")
            con.execute(
                "CREATE OR REPLACE VIEW filters AS SELECT l.model, l.layer, f.layer_id, f.filter, l.kernel_h, "
                "l.kernel_w, l.dtype, fl_decode(f.w, l.dtype) AS w FROM filters_raw f JOIN layers l USING (layer_id)")
            _sql.lock_down(con)
            self._view_generation = snap.generation
        return self._con

    def close(self) -> None:
        """Close the DuckDB connection (the handle stays usable)."""
        if self._con is not None:
            self._con.close()
            self._con = None
            self._view_generation = None

    def __enter__(self) -> "FilterDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- writing -------------------------------------------------------------------------

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Hold the writers' lock; a disk that is full or read-only is one clear line. Each write
        commits by replacing the manifest last, so a failure leaves the last committed state."""
        try:
            with _fs.WriterLock(self._path / LOCK, self.lock_timeout):
                yield
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise DatabaseWriteError(f"{self._path}: cannot write to the database ({why}); "
                                     "it keeps its last committed state") from None

    def add(
        self,
        mf: ModelFilters,
        metadata: Mapping[str, Any] | None = None,
        layer_metrics: pd.DataFrame | None = None,
        *,
        measure: bool = True,
        kernel_size: KernelSize = 3,
        threshold: float = DEFAULT_THRESHOLD,
        inclusive: bool = True,
        include_transposed: bool = False,
        layer_extra: Mapping[str, Mapping[str, Any]] | None = None,
        _sha256: str | None = None,
    ) -> pd.Series:
        """Add one model atomically; return its models-table row.

        ``metadata``: the models-table fields (``model`` overrides ``mf.name``; ``training``,
        ``eps``, ... see :func:`~filterlens.db.meta.normalize_metadata`); other keys are kept in
        ``extra``. ``layer_metrics``: per-layer metrics by ``layer`` name, e.g. from
        :func:`filterlens.measure.measure_model`; when None and ``measure``, they are computed
        with :func:`~filterlens.metrics.measure_weight` for the layers of ``kernel_size``
        (None = all; transposed only with ``include_transposed``). ``layer_extra``: per-layer
        JSON-able extras by layer name.

        Raises :class:`DuplicateModelError` when the name or the same weights (sha256) are stored.
        """
        meta = normalize_metadata(metadata)
        name = meta.pop("model", None) or mf.name
        if not name or not str(name).strip():
            raise DatabaseError("a model needs a name")
        _validate_layers(mf)
        digests = [layer_sha256(l.weight) for l in mf.layers]
        sha = _sha256 or model_sha256(digests)
        metrics = _layer_metrics(mf, layer_metrics, measure, kernel_size, threshold, inclusive, include_transposed)

        with self._lock():
            snap = self.snapshot()
            self._collect_garbage(snap)
            _check_new(snap, name, sha)
            manifest = snap.manifest
            model_id = int(manifest["next_model_id"])
            layer_id0 = int(manifest["next_layer_id"])
            uid = f"{model_id:06d}-{sha[:12]}"
            tmp_dir = self._path / TMP_DIR
            staged: list[tuple[Path, Path]] = []
            try:
                # group the layers by (kernel shape, dtype): one filters file each
                parts: dict[tuple[int, int, str], list[int]] = {}
                for i, l in enumerate(mf.layers):
                    kh, kw = l.kernel_size
                    parts.setdefault((kh, kw, storage_dtype(l.weight.dtype).name), []).append(i)
                file_of: dict[int, str] = {}
                offset_of: dict[int, int] = {}
                for (kh, kw, dtname), idx in parts.items():
                    rel = f"{FILTERS_DIR}/{uid}.{kh}x{kw}.{dtname}.parquet"
                    tmp = tmp_dir / f"{Path(rel).name}.{uuid.uuid4().hex[:8]}.tmp"
                    staged.append((tmp, self._path / rel))
                    pieces = [(layer_id0 + i, _filters_of(mf.layers[i])) for i in idx]
                    offsets = write_filters_file(tmp, pieces, metadata={"filterlens": json.dumps(
                        {"model": name, "model_id": model_id, "kernel": [kh, kw], "dtype": dtname})})
                    for i, off in zip(idx, offsets):
                        file_of[i], offset_of[i] = rel, off
                now = _now()
                layer_rows = [
                    _layer_row(mf, i, layer_id0 + i, model_id, name, file_of[i], offset_of[i], digests[i],
                               metrics[i], (layer_extra or {}).get(l.name))
                    for i, l in enumerate(mf.layers)
                ]
                extra = meta.pop("extra", None)
                model_row = {
                    "model_id": model_id, "model": name, "source": meta.pop("source", None) or mf.source,
                    "sha256": sha, "arch": meta.pop("arch", None) or mf.arch,
                    "dataset": meta.pop("dataset", None), "training": meta.pop("training", None) or "unknown",
                    "threat_model": meta.pop("threat_model", None), "eps": meta.pop("eps", None),
                    "clean_acc": meta.pop("clean_acc", None), "robust_acc": meta.pop("robust_acc", None),
                    "tags": meta.pop("tags", None), "depth_source": mf.depth_source,
                    "n_layers": len(mf.layers), "n_filters": int(sum(l.n_filters for l in mf.layers)),
                    "added_at": now, "warnings": "; ".join(mf.warnings) or None,
                    "extra": json.dumps(extra, sort_keys=True, default=str) if extra else None,
                }
                models_t = pa.concat_tables([snap.models_table, pa.Table.from_pylist([model_row], MODELS_SCHEMA)],
                                            promote_options="default")
                layers_t = pa.concat_tables([snap.layers_table, pa.Table.from_pylist(layer_rows, LAYERS_SCHEMA)],
                                            promote_options="default")
                _fs.replace_durably(staged)
                self._commit(snap, models_t, layers_t, manifest["files"] + [str(d.relative_to(self._path)) for _, d in staged],
                             next_model_id=model_id + 1, next_layer_id=layer_id0 + len(mf.layers))
            finally:
                for tmp, _ in staged:
                    tmp.unlink(missing_ok=True)
        return _to_pandas(pa.Table.from_pylist([model_row], MODELS_SCHEMA)).iloc[0]

    def remove(self, models: str | Sequence[str]) -> list[str]:
        """Remove models (all or nothing); return their names. Their files are deleted after the commit."""
        names = [models] if isinstance(models, str) else list(models)
        with self._lock():
            snap = self.snapshot()
            _require_models(snap, names)
            self._collect_garbage(snap)
            keep_m = pc.invert(pc.is_in(snap.models_table.column("model"), pa.array(names, pa.string())))
            keep_l = pc.invert(pc.is_in(snap.layers_table.column("model"), pa.array(names, pa.string())))
            layers_t = snap.layers_table.filter(keep_l)
            gone = set(pc.unique(snap.layers_table.filter(pc.invert(keep_l)).column("file")).to_pylist())
            gone -= set(pc.unique(layers_t.column("file")).to_pylist())  # never a file a kept layer reads
            # only files the manifest lists, each resolved inside filters/ before anything is committed
            doomed = [_fs.inside(self._path, f, FILTERS_DIR) for f in gone if f in snap.manifest["files"]]
            files = [f for f in snap.manifest["files"] if f not in gone]
            self._commit(snap, snap.models_table.filter(keep_m), layers_t, files)
            for p in doomed:
                p.unlink(missing_ok=True)
        return names

    def set_attr(self, key: str, value: Any) -> None:
        """Store a JSON-able database-level attribute (committed like a model)."""
        with self._lock():
            snap = self.snapshot()
            attrs = dict(snap.manifest.get("attrs", {}))
            attrs[key] = value
            self._commit(snap, snap.models_table, snap.layers_table, snap.manifest["files"], attrs=attrs)

    def attrs(self) -> dict:
        """Database-level attributes (e.g. the layout of an imported HDF5 file)."""
        return dict(self._read_manifest().get("attrs", {}))

    def _commit(self, snap: Snapshot, models_t: pa.Table, layers_t: pa.Table, files: list[str], *,
                next_model_id: int | None = None, next_layer_id: int | None = None, attrs: dict | None = None) -> None:
        """Write the new tables under new names, then replace the manifest: the commit point."""
        m = snap.manifest
        gen = snap.generation + 1
        models_rel, layers_rel = _table_names(gen)
        tmp_dir = self._path / TMP_DIR
        pairs = []
        for table, rel in ((models_t, models_rel), (layers_t, layers_rel)):
            tmp = tmp_dir / f"{Path(rel).name}.{uuid.uuid4().hex[:8]}.tmp"
            pairs.append((tmp, self._path / rel))
            pq.write_table(table, tmp, compression="zstd")
        _fs.replace_durably(pairs)
        manifest = _manifest(gen, next_model_id if next_model_id is not None else m["next_model_id"],
                             next_layer_id if next_layer_id is not None else m["next_layer_id"],
                             models_rel, layers_rel, files, attrs if attrs is not None else m.get("attrs", {}))
        _fs.write_json_atomic(self._path / MANIFEST, manifest, tmp_dir)
        self._snap_cache = Snapshot(manifest, models_t, layers_t)
        # readers may still hold the previous generation: keep it, drop older ones
        keep = set(_table_names(gen)) | set(_table_names(gen - 1))
        for p in (self._path / TABLES_DIR).iterdir():
            if f"{TABLES_DIR}/{p.name}" not in keep:
                p.unlink(missing_ok=True)

    def _collect_garbage(self, snap: Snapshot) -> None:
        """Remove what killed writers left behind (callers hold the lock)."""
        for p in (self._path / TMP_DIR).iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        for p in _orphans(self._path, snap):
            p.unlink(missing_ok=True)

    # ---- maintenance ---------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Summary: location, schema, counts, filters by kernel shape and dtype, size on disk."""
        snap = self.snapshot()
        layers = snap.layers
        kinds = {}
        if len(layers):
            g = layers.groupby([layers["kernel_h"].astype(str) + "x" + layers["kernel_w"].astype(str), "dtype"])
            kinds = {f"{k} {d}": int(n) for (k, d), n in g["n_filters"].sum().items()}
        size = sum(p.stat().st_size for p in self._path.rglob("*") if p.is_file())
        return {
            "path": str(self._path),
            "format": FORMAT,
            "schema_version": self._marker.get("schema_version"),
            "created_at": self._marker.get("created_at"),
            "generation": snap.generation,
            "updated_at": snap.manifest.get("updated_at"),
            "n_models": snap.models_table.num_rows,
            "n_layers": snap.layers_table.num_rows,
            "n_filters": int(layers["n_filters"].sum()) if len(layers) else 0,
            "filters_by_kind": kinds,
            "bytes_on_disk": size,
            "stray_files": len(_orphans(self._path, snap)),
        }

    def check(self, deep: bool = False) -> list[str]:
        """Problems found (empty when consistent): files named by the manifest exist and hold the
        rows the layers table says, the tables agree. ``deep`` also re-hashes every layer's
        filters against its stored sha256 (reads everything, chunked)."""
        snap = self.snapshot()
        problems = []
        models, layers = snap.models, snap.layers
        if models["model"].duplicated().any():
            problems.append("duplicate model names in the models table")
        if layers["layer_id"].duplicated().any():
            problems.append("duplicate layer ids in the layers table")
        for _, m in models.iterrows():
            ml = layers[layers["model_id"] == m["model_id"]]
            if len(ml) != m["n_layers"] or int(ml["n_filters"].sum()) != m["n_filters"]:
                problems.append(f"{m['model']}: models table says {m['n_layers']} layers / {m['n_filters']} "
                                f"filters, layers table has {len(ml)} / {int(ml['n_filters'].sum())}")
            if deep and len(ml):
                digests = [layer_sha256(self.weight(m["model"], l)) for l in ml["layer"]]
                bad = [l for l, d, s in zip(ml["layer"], digests, ml["sha256"]) if d != s]
                if bad:
                    problems.append(f"{m['model']}: filters differ from their sha256 in layer(s) {', '.join(bad)}")
                elif model_sha256(digests) != m["sha256"]:
                    problems.append(f"{m['model']}: model sha256 does not match its layers")
        listed = set(snap.manifest["files"])
        for f in sorted(listed | set(layers["file"])):
            if f not in listed:
                problems.append(f"{f}: used by the layers table but not in the manifest")
                continue
            path = self._path / f
            if not path.exists():
                problems.append(f"{f}: missing")
                continue
            fl = layers[layers["file"] == f].sort_values("row_offset")
            try:
                rows = pq.ParquetFile(path).metadata.num_rows
            except (pa.ArrowInvalid, OSError) as exc:
                problems.append(f"{f}: unreadable ({exc})")
                continue
            ends = (fl["row_offset"] + fl["n_filters"]).to_numpy()
            starts = fl["row_offset"].to_numpy()
            if rows != (ends[-1] if len(ends) else 0) or (starts[1:] != ends[:-1]).any() or (len(starts) and starts[0] != 0):
                problems.append(f"{f}: {rows} rows, but its layers do not tile them")
        return problems


# --------------------------------------------------------------------------------------------
# helpers


def _version() -> str:
    try:
        from .. import __version__
    except ImportError:  # pragma: no cover
        __version__ = "unknown"
    return f"filterlens {__version__}"


def _check_version(path: Path, version: Any) -> None:
    if not isinstance(version, int):
        raise DatabaseError(f"{path}: corrupt filter database: no schema version")
    if version > SCHEMA_VERSION:
        raise DatabaseError(f"{path}: filter database schema version {version} is newer than this filterlens "
                            f"supports ({SCHEMA_VERSION}); upgrade filterlens")
    if version < SCHEMA_VERSION:
        raise DatabaseError(f"{path}: filter database schema version {version} is older than this filterlens "
                            f"reads ({SCHEMA_VERSION}); re-extract it with this version")


def _table_names(gen: int) -> tuple[str, str]:
    return f"{TABLES_DIR}/models.{gen:06d}.parquet", f"{TABLES_DIR}/layers.{gen:06d}.parquet"


def _manifest(gen, next_model_id, next_layer_id, models_rel, layers_rel, files, attrs) -> dict:
    return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "generation": gen,
            "next_model_id": int(next_model_id), "next_layer_id": int(next_layer_id),
            "models_table": models_rel, "layers_table": layers_rel, "files": list(files), "attrs": attrs,
            "updated_at": _now().isoformat()}


def _orphans(path: Path, snap: Snapshot) -> list[Path]:
    """Files in filters/ and tables/ that no manifest still in use names."""
    listed = set(snap.manifest["files"])
    keep = set(_table_names(snap.generation)) | set(_table_names(snap.generation - 1))
    out = [p for p in (path / FILTERS_DIR).iterdir() if f"{FILTERS_DIR}/{p.name}" not in listed]
    out += [p for p in (path / TABLES_DIR).iterdir()
            if f"{TABLES_DIR}/{p.name}" not in keep and _generation_of(p) > snap.generation]
    return out


def _generation_of(p: Path) -> int:
    try:
        return int(p.name.split(".")[1])
    except (IndexError, ValueError):
        return 1 << 62


def _require_models(snap: Snapshot, names: Sequence[str]) -> None:
    have = set(snap.models_table.column("model").to_pylist())
    missing = [n for n in names if n not in have]
    if missing:
        raise DatabaseError(f"no model {', '.join(map(repr, missing))} in the database")


def _check_new(snap: Snapshot, name: str, sha: str) -> None:
    t = snap.models_table
    hit = t.filter(pc.equal(t.column("sha256"), sha))
    if hit.num_rows:
        existing = hit.column("model")[0].as_py()
        raise DuplicateModelError(f"{name}: the same weights are already in the database as {existing}", existing)
    if name in set(t.column("model").to_pylist()):
        raise DuplicateModelError(f"{name}: a model of that name is already in the database "
                                  "(choose another name, or remove it first)", name)


def _validate_layers(mf: ModelFilters) -> None:
    if not mf.layers:
        raise DatabaseError(f"{mf.name}: no conv layers to store")
    seen = set()
    for l in mf.layers:
        w = np.asarray(l.weight)
        if w.ndim != 4:
            raise DatabaseError(f"{mf.name}: layer {l.name} has a {w.ndim}-D weight, expected 4-D")
        if w.dtype.kind != "f":
            raise DatabaseError(f"{mf.name}: layer {l.name} has {w.dtype} weights, expected floating point")
        if l.name in seen:
            raise DatabaseError(f"{mf.name}: two layers are named {l.name}")
        seen.add(l.name)


def _filters_of(layer: ConvLayer) -> np.ndarray:
    w = np.ascontiguousarray(layer.weight, dtype=storage_dtype(layer.weight.dtype))
    a, b, kh, kw = w.shape
    return w.reshape(a * b, kh, kw)


def _layer_metrics(mf: ModelFilters, given: pd.DataFrame | None, measure: bool, kernel_size: KernelSize,
                   threshold: float, inclusive: bool, include_transposed: bool) -> list[dict]:
    """Per-layer metric dicts (METRIC_COLUMNS), in layer order."""
    out = []
    if given is not None:
        if "layer" not in given.columns:
            raise DatabaseError("layer_metrics needs a 'layer' column")
        cols = [c for c in METRIC_COLUMNS if c in given.columns]
        by_name = {r["layer"]: r for r in given[["layer", *cols]].to_dict("records")}
        for l in mf.layers:
            r = by_name.get(l.name)
            out.append({c: None if pd.isna(r[c]) else r[c] for c in cols} if r else {"notes": "not measured"})
        return out
    from ..measure import selects

    chosen = [l for l in mf.layers if measure and selects(l, kernel_size, include_transposed)]
    measured = dict(zip(map(id, chosen), measure_weights([l.weight for l in chosen], threshold, inclusive)))
    for l in mf.layers:
        if id(l) in measured:
            out.append(measured[id(l)])
        elif not measure:
            out.append({"notes": "not measured"})
        else:
            why = "transposed" if l.transposed else f"kernel {l.kernel_size[0]}x{l.kernel_size[1]}"
            out.append({"notes": f"not measured ({why})"})
    return out


def _opt_int(v) -> int | None:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else int(v)


def _opt_float(v) -> float | None:
    return None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else float(v)


def _layer_row(mf: ModelFilters, index: int, layer_id: int, model_id: int, name: str, file: str, offset: int,
               sha: str, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None) -> dict:
    l = mf.layers[index]
    a, b, kh, kw = l.weight.shape
    row = {
        "layer_id": layer_id, "model_id": model_id, "model": name, "layer_index": index, "layer": l.name,
        "op_type": l.op_type, "kernel_size": kh if kh == kw else None, "kernel_h": kh, "kernel_w": kw,
        "in_channels": l.in_channels, "out_channels": l.out_channels, "groups": l.groups,
        "transposed": bool(l.transposed), "dim0": a, "dim1": b, "dtype": storage_dtype(l.weight.dtype).name,
        "depth": _opt_int(l.depth), "conv_depth": _opt_int(l.conv_depth),
        "conv_depth_norm": _opt_float(l.conv_depth_norm), "depth_source": mf.depth_source, "sha256": sha,
        "file": file, "row_offset": offset, "n_filters": a * b,
        "extra": json.dumps(extra, sort_keys=True, default=str) if extra else None,
    }
    for c in METRIC_COLUMNS:
        v = metrics.get(c)
        if c == "notes":
            row[c] = v or None
        elif c.startswith("n_"):
            row[c] = _opt_int(v)
        else:
            row[c] = _opt_float(v)
    return row
