"""The filter database: a directory of Parquet files, queried in place with DuckDB.

Consistency model
-----------------
``manifest.json`` names the committed table files and filters files. A writer (one at a time,
under an ``fcntl`` lock) writes new files under fresh names, fsyncs them, and then replaces the
manifest atomically: that rename is the commit. Files a manifest names are never modified, so a
reader that took a manifest sees one consistent state however long it reads. A writer killed at
any moment leaves the previous manifest in force; its stray files are removed by the next writer.

:class:`FilterDB` is the facade; the work is done by its parts: :mod:`.lifecycle` (opening and
creating), :mod:`.snapshot` (reading one committed state), :mod:`.chunks` (streaming filters),
:mod:`.views` (DuckDB), :mod:`.writer` (staging, commits, garbage collection), :mod:`.rows`
(table rows and checks) and :mod:`.hashing`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..kernel_size import KernelSize, kernel_pair
from ..types import ConvLayer, ModelFilters
from . import _fs
from . import sql as _sql
from .chunks import CHUNK_KEY_DTYPE, FilterChunk, iter_chunks
from .errors import DatabaseError, DatabaseWriteError
from .filestore import FiltersReader
from .hashing import layer_sha256, model_sha256
from .lifecycle import create_database, read_marker
from .meta import normalize_metadata
from .rows import LayerMetrics, check_new, metrics_by_layer, model_row, validate_layers
from .schema import FILTERS_DIR, FORMAT, LAYERS_SCHEMA, LOCK, MANIFEST, MARKER, MODELS_SCHEMA, TMP_DIR
from .snapshot import Snapshot, now, orphans, read_manifest, read_snapshot, require_models, to_pandas
from .views import StaleSnapshot, connect_views
from .writer import MeasuredLayer, ModelStager, collect_garbage, commit

__all__ = ["CHUNK_KEY_DTYPE", "FilterChunk", "FilterDB", "KernelSize", "MeasuredLayer", "Snapshot", "layer_sha256",
           "model_sha256"]


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
        marker = read_marker(path)
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
        marker = create_database(path, exist_ok)
        if marker is None:  # a database is there already
            return cls.open(path)
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
                self._snap_cache = read_snapshot(self._path, manifest)
            except FileNotFoundError as exc:  # a writer committed twice meanwhile: take the new state
                last_exc = exc
                continue
            return self._snap_cache
        raise DatabaseError(f"{self._path}: corrupt filter database: a table named by {MANIFEST} is missing "
                            f"({last_exc})")

    def _read_manifest(self) -> dict:
        return read_manifest(self._path)

    def models(self) -> pd.DataFrame:
        """The models table: one row per model, with its metadata."""
        return self.snapshot().models.copy()

    def layers(self, model: str | Sequence[str] | None = None) -> pd.DataFrame:
        """The layers table (of ``model`` only, if given): one row per conv layer with its metrics."""
        snap = self.snapshot()
        if model is None:
            return snap.layers.copy()
        names = [model] if isinstance(model, str) else list(model)
        require_models(snap, names)
        return snap.layers[snap.layers["model"].isin(names)].reset_index(drop=True)

    def model(self, name: str) -> pd.Series:
        """The models-table row of one model."""
        snap = self.snapshot()
        require_models(snap, [name])
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
            require_models(snap, names)
            mask = both(pc.is_in(t.column("model"), pa.array(names, pa.string())))
        if layer is not None:
            wanted = [layer] if isinstance(layer, str) else list(layer)
            mask = both(pc.is_in(t.column("layer"), pa.array(wanted, pa.string())))
            if model is not None:
                missing = set(wanted) - set(t.filter(mask).column("layer").to_pylist())
                if missing:
                    raise DatabaseError(f"no layer {', '.join(sorted(missing))} in {model}")
        if kernel_size is not None:
            kh, kw = kernel_pair(kernel_size)
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
        yield from iter_chunks(snap, sel, chunk_size, self._reader)

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

    def model_filters(self, model: str) -> ModelFilters:
        """A stored model back as :class:`~filterlens.types.ModelFilters` (weights bit-exact)."""
        snap = self.snapshot()
        require_models(snap, [model])
        mrow = snap.models[snap.models["model"] == model].iloc[0]
        layers = []
        for _, r in snap.layers[snap.layers["model"] == model].sort_values("layer_index").iterrows():
            layers.append(ConvLayer(
                name=r["layer"], weight=self.weight(model, r["layer"]), groups=int(r["groups"]),
                transposed=bool(r["transposed"]), op_type=r["op_type"], unused=bool(r["unused"]),
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
            except StaleSnapshot:  # writers committed twice meanwhile: query the newer state
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
                raise StaleSnapshot() from None
            raise DatabaseError(f"query failed: {(str(exc).strip().splitlines() or [''])[0][:300]}") from None
        except AttributeError:  # a statement without a result (e.g. SET)
            return pd.DataFrame()

    def _connection(self, snap: Snapshot):
        if self._view_generation != snap.generation:
            # the configuration of a query connection is locked (see db/sql.py): a new
            # generation, whose files the old one may not read, needs a new connection
            self.close()
            self._con = connect_views(self._path, snap)
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
        layer_metrics: LayerMetrics | None = None,
        *,
        layer_extra: Mapping[str, Mapping[str, Any]] | None = None,
        _sha256: str | None = None,
    ) -> pd.Series:
        """Add one model atomically; return its models-table row.

        Parameters
        ----------
        mf : ModelFilters
            The model's conv layers.
        metadata : mapping, optional
            The models-table fields (``model`` overrides ``mf.name``; ``training``, ``eps``, ...
            see :func:`~filterlens.db.meta.normalize_metadata`); other keys are kept in ``extra``.
        layer_metrics : DataFrame or sequence of dict, optional
            The layers' metrics, measured beforehand: a table by ``layer`` name as
            :func:`filterlens.measure.measure_model` returns (layers it lacks are stored as
            "not measured"), or one dict per layer in order as
            :func:`filterlens.measure.measure_layers` returns. None: nothing measured.
        layer_extra : mapping, optional
            Per-layer JSON-able extras by layer name.

        Raises
        ------
        DuplicateModelError
            When the name or the same weights (sha256) are stored.

        See :meth:`add_layers` to store a model one layer at a time.
        """
        self._name_of(mf, metadata)
        validate_layers(mf)
        metrics = metrics_by_layer(mf, layer_metrics)
        extra = layer_extra or {}
        layers = (MeasuredLayer(l, m, extra.get(l.name)) for l, m in zip(mf.layers, metrics))
        return self.add_layers(mf, layers, metadata, _sha256=_sha256)

    @staticmethod
    def _name_of(mf: ModelFilters, metadata: Mapping[str, Any] | None) -> tuple[str, dict]:
        meta = normalize_metadata(metadata)
        name = meta.pop("model", None) or mf.name
        if not name or not str(name).strip():
            raise DatabaseError("a model needs a name")
        return name, meta

    def add_layers(
        self,
        model: ModelFilters,
        layers: Iterable[MeasuredLayer],
        metadata: Mapping[str, Any] | None = None,
        *,
        _sha256: str | None = None,
    ) -> pd.Series:
        """Add one model atomically from its layers, taken one at a time; return its row.

        Memory stays at one layer (plus one row group per filters file) whatever the model's
        size: each layer is validated, hashed and written as it comes, and may be dropped by
        the caller once the next is asked for.

        Parameters
        ----------
        model : ModelFilters
            The model's name, source, depth source, architecture and warnings; its ``layers``
            are not read.
        layers : iterable of MeasuredLayer
            The layers in order, each with its metrics and extras.
        metadata : mapping, optional
            As for :meth:`add`.
        """
        name, meta = self._name_of(model, metadata)
        with self._lock():
            snap = self.snapshot()
            self._collect_garbage(snap)
            if _sha256 is not None:
                check_new(snap, name, _sha256)
            manifest = snap.manifest
            model_id = int(manifest["next_model_id"])
            layer_id0 = int(manifest["next_layer_id"])
            # a taken name fails either way; the weights' hash says which message (as for known weights)
            taken = _sha256 is None and name in set(snap.models_table.column("model").to_pylist())
            stager = ModelStager(self._path / TMP_DIR, name, model_id, layer_id0, model.depth_source, hash_only=taken)
            staged: list[tuple[Path, Path]] = []
            try:
                for item in layers:
                    stager.write(item)
                sha, files = stager.finish(_sha256)
                staged = [(tmp, self._path / rel) for tmp, rel in files]
                if _sha256 is None:
                    check_new(snap, name, sha)
                row = model_row(model, meta, name, model_id, sha, len(stager.rows), stager.n_filters, now())
                models_t = pa.concat_tables([snap.models_table, pa.Table.from_pylist([row], MODELS_SCHEMA)],
                                            promote_options="default")
                layers_t = pa.concat_tables([snap.layers_table, pa.Table.from_pylist(stager.rows, LAYERS_SCHEMA)],
                                            promote_options="default")
                _fs.replace_durably(staged)
                self._commit(snap, models_t, layers_t, manifest["files"] + [rel for _, rel in files],
                             next_model_id=model_id + 1, next_layer_id=layer_id0 + len(stager.rows))
            except BaseException:
                stager.abort()
                raise
            finally:
                for tmp, _ in staged:
                    tmp.unlink(missing_ok=True)
        return to_pandas(pa.Table.from_pylist([row], MODELS_SCHEMA)).iloc[0]

    def remove(self, models: str | Sequence[str]) -> list[str]:
        """Remove models (all or nothing); return their names. Their files are deleted after the commit."""
        names = [models] if isinstance(models, str) else list(models)
        with self._lock():
            snap = self.snapshot()
            require_models(snap, names)
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

    def _commit(self, snap: Snapshot, models_t: pa.Table, layers_t: pa.Table, files: list[str], **kw) -> None:
        """Commit new tables (see :func:`.writer.commit`); the caller holds the lock."""
        self._snap_cache = commit(self._path, snap, models_t, layers_t, files, **kw)

    def _collect_garbage(self, snap: Snapshot) -> None:
        """Remove what killed writers left behind (callers hold the lock)."""
        collect_garbage(self._path, snap)

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
            "stray_files": len(orphans(self._path, snap)),
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
