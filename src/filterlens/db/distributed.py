"""Extract many sources on a Dask cluster: workers load, trace, measure and stage; one writer commits.

Protocol, per source ``i`` (in the order given):

1. ``prepare`` (worker): load the source, hash and measure it. The model stays on the worker;
   only a small :class:`Header` (name, hash, sizes, or the error) comes back.
2. The client checks the header in source order (duplicates against the database and the
   models of this run ahead of it) and gives the model its ids: the same ids a serial run gives.
3. ``stage`` (the worker holding the model): write its filters files under temporary names into
   this run's staging folder inside the database, and build its table rows. A worker that cannot
   see that folder sends the model back instead, and the client stages it.
4. The client commits the staged models strictly in source order (those ready together in one
   step), by the same manifest replacement as :meth:`FilterDB.add`, holding the writers' lock
   for the whole run: a model is in the database whole or not at all.

So the database ends up identical (models, layers, ids, values) to a serial run. A worker that
dies leaves at most stray staged files, never a committed half; Dask re-runs its task on another
worker, and a model whose tasks keep killing workers is reported failed while the others go on.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import uuid
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import pyarrow as pa

from ..errors import FilterlensError
from ..types import ModelFilters
from . import _fs
from .errors import DatabaseError, DuplicateModelError
from .extract import (
    ExtractResult,
    Loader,
    Measurer,
    _load_robustbench,
    default_loader,
    failure_result,
    model_metadata,
)
from .meta import MetaTable, normalize_metadata
from .rows import check_new, metrics_by_layer, model_row, validate_layers
from .schema import LAYERS_SCHEMA, MODELS_SCHEMA, TMP_DIR
from .snapshot import now
from .store import FilterDB, KernelSize, layer_sha256, model_sha256
from .writer import MeasuredLayer, ModelStager

if TYPE_CHECKING:
    from distributed import Client

#: Environment variable naming the scheduler that ``--scheduler`` defaults to.
SCHEDULER_ENV = "FILTERLENS_SCHEDULER"
START_ENV = "FILTERLENS_DASK_START"  # how local workers start: fork (Linux default), spawn, forkserver
#: Worker resource that, where every worker has one unit of it (``dask worker --resources
#: filterlens=1``; local clusters have it), keeps one task at a time on each worker: when a
#: worker dies, Dask then holds only the model it was running responsible, not the models
#: queued behind it.
RESOURCE = "filterlens"
_RUN_MARKER = "run"


# --------------------------------------------------------------------------------------------
# the cluster


@contextmanager
def connect(workers: int | None = None, scheduler: str | None = None,
            warm: Callable[[], None] | None = None) -> Iterator["Client"]:
    """A Dask client: on a new local cluster of ``workers`` processes (one thread each), or on
    the running scheduler at ``scheduler`` (``tcp://host:port``, or a scheduler file path).
    ``warm`` (default :func:`preload`, extraction's) runs before local workers are forked from
    this process, so that they start with what it imported and loaded."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - dask[distributed] is a dependency
        raise FilterlensError("--workers and --scheduler need dask.distributed: pip install 'dask[distributed]'") from None
    if scheduler:
        kw = {"scheduler_file": scheduler} if scheduler.endswith(".json") else {"address": scheduler}
        try:
            client = Client(timeout="10s", **kw)
        except (OSError, TimeoutError, ValueError) as exc:
            raise FilterlensError(f"cannot reach the Dask scheduler at {scheduler} ({_first_line(exc)})") from None
        with client:
            if not client.scheduler_info().get("workers"):
                try:
                    client.wait_for_workers(1, timeout=60)
                except TimeoutError:
                    raise FilterlensError(f"the Dask scheduler at {scheduler} has no workers (waited 60 s)") from None
            yield client
        return
    if workers is None or workers < 1:
        raise FilterlensError("--workers must be at least 1")
    import dask

    # A model that kills its worker is tried twice by Dask and twice more by the client (see
    # _Run.receive), not 4 + 4 times. Where fork exists, workers are forked from this process
    # once it has imported and loaded what they run: they start in a fraction of a second
    # instead of importing everything again each, and close as fast.
    # FILTERLENS_DASK_START=spawn|forkserver starts them afresh instead (safer in a process that
    # already runs many threads, such as a test session: a fork copies their held locks).
    config = {"distributed.scheduler.allowed-failures": 1}
    method = os.environ.get(START_ENV) or ("fork" if sys.platform == "linux" else None)
    if method not in (None, "fork", "spawn", "forkserver"):
        raise FilterlensError(f"{START_ENV} must be fork, spawn or forkserver, got {method!r}")
    if method == "fork":
        (warm or preload)()
    if method:
        config["distributed.worker.multiprocessing-method"] = method
    with dask.config.set(config):  # for the cluster's life: a worker that died is forked again
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=logging.ERROR, resources={RESOURCE: 1}) as cluster, Client(cluster) as client:
            yield client


def cluster_options(workers: int | None, scheduler: str | None) -> tuple[int | None, str | None]:
    """``--workers N`` / ``--scheduler ADDR`` as the CLI reads them: not both; N >= 1; without
    either, the scheduler named by ``FILTERLENS_SCHEDULER`` (if set). ``(None, None)``: serial."""
    if workers is not None and scheduler:
        raise FilterlensError("give --workers (a local cluster) or --scheduler (a running one), not both")
    if workers is not None and workers < 1:
        raise FilterlensError("--workers must be at least 1")
    return workers, scheduler or (None if workers is not None else os.environ.get(SCHEDULER_ENV) or None)


@contextmanager
def maybe_connect(workers: int | None, scheduler: str | None,
                  warm: Callable[[], None] | None = None) -> Iterator["Client | None"]:
    """:func:`connect` after :func:`cluster_options`; ``None`` (run serially) when neither is given."""
    workers, scheduler = cluster_options(workers, scheduler)
    if workers is None and not scheduler:
        yield None
        return
    with connect(workers, scheduler, warm) as client:
        yield client


def preload() -> None:
    """Import the modules workers run and load the compiled kernels (from numba's cache) for
    float32 weights, writable and read-only (as ONNX files give them)."""
    import numpy as np

    from ..measure import measure_model  # noqa: F401
    from ..metrics import measure_weights
    from ..sources import onnx_model  # noqa: F401

    w = np.random.default_rng(0).standard_normal((4, 4, 3, 3)).astype(np.float32)
    measure_weights([w], 0.01, True)
    w.flags.writeable = False
    measure_weights([w], 0.01, True)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


# --------------------------------------------------------------------------------------------
# what runs on the workers


@dataclass(frozen=True)
class Options:
    """How to measure: the options of ``filterlens extract`` that workers need."""

    kernel_size: KernelSize = 3
    threshold: float = 0.01
    inclusive: bool = True
    include_transposed: bool = False
    loader: Loader | None = None
    measurer: Measurer | None = None


@dataclass
class Header:
    """What the client needs to decide on a prepared model; small, travels back to the client."""

    mf_name: str = ""
    mf_metadata: dict = field(default_factory=dict)
    sha256: str = ""
    n_layers: int = 0
    n_filters: int = 0
    error: str | None = None  # the one-line error a serial run reports (load, measure, validation)
    unreadable: bool = False  # this worker cannot read the file: the client sends it


@dataclass
class Prepared:
    """A loaded, hashed and measured model, kept on the worker until it is staged."""

    header: Header
    mf: ModelFilters | None = None
    digests: list[str] = field(default_factory=list)
    metrics: list[dict] = field(default_factory=list)


@dataclass
class Staged:
    """A model whose filters files are written under temporary names, with its table rows."""

    model_id: int
    layer_id0: int
    n_layers: int
    model_row: dict
    layer_rows: list[dict]
    files: list[tuple[str, str]]  # (staged file, final path relative to the database)


def _loader(opts: Options) -> Loader:
    return opts.loader or default_loader


def prepare(source: str, path: str | None, arch: str | None, wanted: str | None, rb_meta: Mapping[str, Any],
            opts: Options, payload: bytes | None = None) -> Prepared:
    """Load, hash and measure one source (runs on a worker); errors come back in the header.

    ``path`` is the absolute path of a file the client sees (None: ``source`` is not a file
    there); messages name ``source`` as the user gave it, so they read as in a serial run.
    ``payload`` is the file's bytes when this worker cannot read ``path``: it is loaded from a
    private copy of the same name.
    """
    tmpdir = None
    local = path or source
    header = Header()
    try:
        if payload is not None:
            tmpdir = tempfile.mkdtemp(prefix="filterlens-")
            local = os.path.join(tmpdir, os.path.basename(path))
            with open(local, "wb") as f:
                f.write(payload)
        elif path is not None and not readable(path):
            return Prepared(Header(unreadable=True))
        if _loader(opts) is default_loader and source.startswith("robustbench:"):
            mf = _load_robustbench(source, wanted, rb_meta)
        else:
            mf = _loader(opts)(local, arch, wanted)
        header = Header(mf.name, dict(mf.metadata or {}), n_layers=len(mf.layers),
                        n_filters=int(sum(l.n_filters for l in mf.layers)))
        prep = Prepared(header, mf)
        prep.digests = [layer_sha256(l.weight) for l in mf.layers]
        header.sha256 = model_sha256(prep.digests)
        # as FilterDB.add before it takes the lock; the client reports these after its duplicate check
        validate_layers(mf)
        prep.metrics = metrics_by_layer(mf, _measure(mf, opts))
        return prep
    except Exception as exc:
        msg = failure_result(source, source, exc, False).message
        header.error = msg.replace(local, source).replace(path, source) if path else msg
        return Prepared(header)
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)


def readable(path: str) -> bool:
    """Whether this worker can read the file at ``path`` (else the client sends its bytes)."""
    return os.access(path, os.R_OK)


def sees_run(staging: Path, token: str) -> bool:
    """Whether this worker sees this run's staging folder: the database's own file system,
    not merely a folder of the same name on another machine."""
    try:
        return (staging / _RUN_MARKER).read_text() == token
    except OSError:
        return False


def _measure(mf: ModelFilters, opts: Options):
    if opts.measurer is not None:
        return opts.measurer(mf)
    from ..measure import measure_model

    return measure_model(mf, opts.kernel_size, opts.threshold, opts.inclusive, opts.include_transposed)


def header_of(prep: Prepared) -> Header:
    """The small part of a prepared model, fetched by the client (the model stays put)."""
    return prep.header


def stage(prep: Prepared, meta: dict, name: str, model_id: int, layer_id0: int, root: str, staging: str,
          token: str) -> Staged | Prepared:
    """Write a prepared model's filters files into ``staging`` and build its rows, as
    :meth:`FilterDB.add` would with these ids; a worker that does not see this run's staging
    folder (another file system) returns the model instead, for the client to stage."""
    if not sees_run(Path(staging), token):
        return prep
    return stage_model(prep, meta, name, model_id, layer_id0, Path(root), Path(staging))


def stage_model(prep: Prepared, meta: dict, name: str, model_id: int, layer_id0: int, root: Path,
                staging: Path) -> Staged:
    """The file-writing half of :meth:`FilterDB.add`, with the ids given (same names, rows, bytes)."""
    mf = prep.mf
    stager = ModelStager(staging, name, model_id, layer_id0, mf.depth_source)
    try:
        for layer, metrics, digest in zip(mf.layers, prep.metrics, prep.digests):
            stager.write(MeasuredLayer(layer, metrics), digest)
        # fsync here, in parallel; the client's fsync before the rename is then cheap
        sha, files = stager.finish(prep.header.sha256, fsync=True)
    except BaseException:
        stager.abort()
        raise
    row = model_row(mf, meta, name, model_id, sha, len(stager.rows), stager.n_filters, None)
    return Staged(model_id, layer_id0, len(mf.layers), row, stager.rows, [(str(tmp), rel) for tmp, rel in files])


# --------------------------------------------------------------------------------------------
# the client: one writer


def commit_staged(db: FilterDB, staged: Sequence[Staged]) -> None:
    """Commit staged models, consecutive in id, at once (the caller holds the writers' lock):
    rename their files into place and replace the manifest, as :meth:`FilterDB.add` does for
    one. All or none of them appear."""
    snap = db.snapshot()
    m = snap.manifest
    expected = (int(m["next_model_id"]), int(m["next_layer_id"]))
    for st in staged:
        if (st.model_id, st.layer_id0) != expected:
            raise DatabaseError(f"{db.path}: the database changed during the extraction (next ids "
                                f"{expected[0]}/{expected[1]}, staged for {st.model_id}/{st.layer_id0})")
        expected = (st.model_id + 1, st.layer_id0 + st.n_layers)
    added = now()
    rows = [dict(st.model_row, added_at=added) for st in staged]
    models_t = pa.concat_tables([snap.models_table, pa.Table.from_pylist(rows, MODELS_SCHEMA)],
                                promote_options="default")
    layers_t = pa.concat_tables([snap.layers_table, pa.Table.from_pylist(
        [r for st in staged for r in st.layer_rows], LAYERS_SCHEMA)], promote_options="default")
    files = [(Path(tmp), rel) for st in staged for tmp, rel in st.files]
    _fs.replace_durably([(tmp, db.path / rel) for tmp, rel in files])
    db._commit(snap, models_t, layers_t, m["files"] + [rel for _, rel in files],
               next_model_id=expected[0], next_layer_id=expected[1])


@dataclass
class _Item:
    """The client's record of one source."""

    index: int
    source: str  # as given
    path: str | None  # the absolute path of a file this process sees; None if not a file here
    arch: str | None
    row: dict | None = None
    wanted: str | None = None
    rb_meta: dict = field(default_factory=dict)
    prep: Any = None  # future of Prepared
    head: Any = None  # future of Header
    header: Header | None = None
    shipped: bool = False
    staged: Any = None  # future of Staged (or of Prepared, when the worker cannot see the database)
    staged_value: Any = None  # its result, fetched as soon as it is done
    meta: dict | None = None
    name: str | None = None
    ids: tuple[int, int] | None = None  # (model id, first layer id), once given
    retried: bool = False  # sent again after its workers died (a model queued beside a killer)
    result: ExtractResult | None = None  # final, once known


def extract_sources_dask(
    db: FilterDB,
    sources: Iterable[str],
    client: "Client",
    *,
    arch: str | None = None,
    name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    meta_table: MetaTable | None = None,
    kernel_size: KernelSize = 3,
    threshold: float = 0.01,
    inclusive: bool = True,
    include_transposed: bool = False,
    skip_existing: bool = False,
    loader: Loader | None = None,
    measurer: Measurer | None = None,
    window: int | None = None,
) -> Iterator[ExtractResult]:
    """:func:`~filterlens.db.extract_sources` on the workers of ``client``: yields one
    :class:`ExtractResult` per source, in source order, each once its model is committed.

    At most ``window`` models (default: two per worker, at least 4) are in flight at once, so a
    worker holds about two models whatever the number of sources. The writers' lock is held for
    the whole run. ``loader`` and ``measurer`` must be importable (or picklable) on the workers.
    """
    run = _Run(db, client, Options(kernel_size, threshold, inclusive, include_transposed, loader, measurer),
               name, normalize_metadata(metadata), meta_table, skip_existing)
    items = []
    for i, s in enumerate(sources):
        s = str(s)
        path = None
        if not s.startswith("robustbench:") and Path(s).expanduser().is_file():
            path = str(Path(s).expanduser().resolve())
        items.append(_Item(i, s, path, arch))
    if window is None:
        window = max(4, 2 * len(client.scheduler_info().get("workers", {})))
    with db._lock():
        db._collect_garbage(db.snapshot())
        token = uuid.uuid4().hex
        run.staging = db.path / TMP_DIR / f"stage-{token[:12]}"
        run.staging.mkdir()
        (run.staging / _RUN_MARKER).write_text(token)
        run.token = token
        try:
            yield from run.run(items, window)
        finally:
            shutil.rmtree(run.staging, ignore_errors=True)


class _Run:
    """The client's side of one extraction: dispatch, decide in order, commit in order."""

    def __init__(self, db: FilterDB, client, opts: Options, name, overrides, meta_table, skip_existing):
        from distributed import as_completed

        self.db, self.client, self.opts = db, client, opts
        self.name, self.overrides, self.meta_table, self.skip_existing = name, overrides, meta_table, skip_existing
        self.ac = as_completed()
        self.kinds: dict[Any, tuple[str, _Item]] = {}
        self.pending_names: dict[str, int] = {}  # given ids in this run, not yet committed
        self.pending_shas: dict[str, str] = {}
        self.next_ids: list[int] = []
        self.staging: Path = Path()
        self.token = ""
        workers = client.scheduler_info().get("workers", {}).values()
        self.resources = {RESOURCE: 1} if workers and all(
            (w.get("resources") or {}).get(RESOURCE, 0) >= 1 for w in workers) else None

    # -- dispatch ---------------------------------------------------------------------------

    def start(self, item: _Item) -> None:
        """Look the source up (metadata row, already stored) and send it to the cluster."""
        try:
            item.row = self.meta_table.lookup(item.source, self.name) if self.meta_table is not None else None
            item.wanted = self.name or (item.row or {}).get("model")
            item.arch = item.arch or (item.row or {}).get("arch")
            item.rb_meta = {**(item.row or {}), **self.overrides}
            if item.wanted and self.skip_existing and item.wanted in self.db:
                item.result = ExtractResult(item.source, "skipped", item.wanted,
                                            f"{item.wanted} is already in the database")
                return
        except Exception as exc:
            item.result = failure_result(item.source, item.source, exc, self.skip_existing)
            return
        if item.path is None and self.opts.loader is None and not item.source.startswith("robustbench:"):
            # not a file here either: the loader says why, here, as in a serial run
            prep = prepare(item.source, item.path, item.arch, item.wanted, item.rb_meta, self.opts)
            item.header = prep.header
            if prep.header.error is None:  # the loader read it after all: the model goes to a worker
                item.prep = self.client.scatter(prep)
            return
        self.submit_prepare(item)

    def submit_prepare(self, item: _Item, payload: bytes | None = None) -> None:
        args = [item.source, item.path, item.arch, item.wanted, item.rb_meta, self.opts]
        if payload is not None:
            args.append(self.client.scatter(payload, direct=True))
        item.prep = self.client.submit(prepare, *args, pure=False, resources=self.resources)
        # the header and the staging of a model go before models not yet started (priority):
        # the client decides and commits sooner, and a worker holds fewer measured models
        item.head = self.client.submit(header_of, item.prep, pure=False, resources=self.resources, priority=1)
        self.watch(item.head, "head", item)

    def submit_stage(self, item: _Item, ids: tuple[int, int] | None = None) -> None:
        """Stage ``item`` under the next ids in source order (or again under ``ids``)."""
        if ids is None:
            if not self.next_ids:
                m = self.db.snapshot().manifest
                self.next_ids[:] = [int(m["next_model_id"]), int(m["next_layer_id"])]
            ids = (self.next_ids[0], self.next_ids[1])
            self.next_ids[0] += 1
            self.next_ids[1] += item.header.n_layers
        item.ids = ids
        item.staged_value = None
        item.staged = self.client.submit(stage, item.prep, item.meta, item.name, *item.ids, str(self.db.path),
                                         str(self.staging), self.token, pure=False, resources=self.resources,
                                         priority=1)
        self.watch(item.staged, "stage", item)

    def watch(self, fut, kind: str, item: _Item) -> None:
        self.kinds[fut] = (kind, item)
        self.ac.add(fut)

    # -- decisions, in source order ---------------------------------------------------------

    def decide(self, item: _Item) -> None:
        """Check a prepared model as a serial run would at this point; give it ids or a result."""
        h = item.header
        label = item.source
        try:
            if h.error is not None and not h.sha256:  # it could not be loaded
                item.result = ExtractResult(item.source, "failed", None, h.error)
                return
            row = item.row
            if row is None and self.meta_table is not None:
                row = self.meta_table.lookup(None, h.mf_name)
            md = model_metadata(item.source, self.name, row, self.overrides, h.mf_name, h.mf_metadata)
            label = md["model"]
            if item.wanted and self.skip_existing and item.wanted in self.pending_names:
                item.result = ExtractResult(item.source, "skipped", item.wanted,
                                            f"{item.wanted} is already in the database")
                return
            existing = self.pending_shas.get(h.sha256) or self.db.find_sha256(h.sha256)
            if existing is not None:
                raise DuplicateModelError(f"{label}: the same weights are already in the database as {existing}",
                                          existing)
            if h.error is not None:  # measuring or validating failed
                item.result = ExtractResult(item.source, "failed", None, h.error)
                return
            meta = normalize_metadata(md)
            mname = meta.pop("model", None) or h.mf_name
            if not mname or not str(mname).strip():
                raise DatabaseError("a model needs a name")
            if mname in self.pending_names:
                raise DuplicateModelError(f"{mname}: a model of that name is already in the database "
                                          "(choose another name, or remove it first)", mname)
            check_new(self.db.snapshot(), mname, h.sha256)
        except Exception as exc:
            item.result = failure_result(item.source, label, exc, self.skip_existing)
            return
        item.meta, item.name = meta, mname
        self.pending_names[mname] = item.index
        self.pending_shas[h.sha256] = mname
        self.submit_stage(item)

    def drop(self, item: _Item, items: list[_Item]) -> None:
        """``item`` was given ids but will not be committed: later models get new ids."""
        self.pending_names.pop(item.name, None)
        self.pending_shas.pop(item.header.sha256, None)
        item.ids = None
        self.next_ids.clear()
        for later in items[item.index + 1:]:
            if later.ids is not None and later.result is None:
                self.kinds.pop(later.staged, None)
                later.staged.cancel()
                self.submit_stage(later)

    def commit(self, batch: list[_Item]) -> None:
        """Commit the staged models of ``batch`` (consecutive in source order) in one step; if
        that fails, one by one, so that only a model that cannot be committed fails."""
        staged = []
        for item in batch:
            value = item.staged_value
            if isinstance(value, Prepared):  # the worker cannot see the database: stage it here
                try:
                    value = stage_model(value, item.meta, item.name, *item.ids, self.db.path, self.staging)
                except Exception as exc:  # e.g. the disk is full: this model fails, the others go on
                    item.result = failure_result(item.source, item.name, exc, self.skip_existing)
                    break
            staged.append(value)
        batch = batch[:len(staged)]
        if not batch:
            return
        try:
            commit_staged(self.db, staged)
        except DatabaseError:
            raise
        except Exception as exc:
            if len(batch) > 1:
                return self.commit(batch[:1])  # the next call goes on with the rest
            batch[0].result = failure_result(batch[0].source, batch[0].name, exc, self.skip_existing)
            return
        for item in batch:
            self.pending_names.pop(item.name, None)
            self.pending_shas.pop(item.header.sha256, None)
            item.ids = None
            item.result = ExtractResult(item.source, "added", item.name, "", item.header.n_layers,
                                        item.header.n_filters)

    # -- the loop ---------------------------------------------------------------------------

    def run(self, items: list[_Item], window: int) -> Iterator[ExtractResult]:
        todo = deque(items)
        next_decide = next_commit = 0
        while next_commit < len(items):
            while todo and todo[0].index < next_commit + window:
                self.start(todo.popleft())
            while next_decide < len(items):  # ids are given in source order
                d = items[next_decide]
                if d.result is None and d.header is None:
                    break
                if d.result is None:
                    self.decide(d)
                next_decide += 1
            item = items[next_commit]
            if item.result is not None:  # committed, or decided without committing
                if item.ids is not None:
                    self.drop(item, items)
                _release(item)
                next_commit += 1
                yield item.result
                continue
            if _staged(item):  # commit it with the staged models right behind it
                batch = [item]
                while len(batch) + next_commit < len(items) and _staged(items[next_commit + len(batch)]):
                    batch.append(items[next_commit + len(batch)])
                self.commit(batch)
                continue
            self.receive(next(self.ac))

    def receive(self, fut) -> None:
        kind, item = self.kinds.pop(fut, (None, None))
        if kind is None or item.result is not None:
            return
        value, exc = None, None
        try:  # fetched now: a worker that dies later takes nothing of ours with it (if the
            value = fut.result()  # one holding it died meanwhile, this waits for Dask to redo it)
        except BaseException as e:  # noqa: B036 - CancelledError is a BaseException
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            exc = e
        if exc is not None:  # workers kept dying on it, or it was lost
            if type(exc).__name__ in _RETRIED and not item.retried:
                # Dask counts a death against every task queued on the worker, not only the one
                # that killed it: one more round tells an innocent model from a killer
                item.retried = True
                if kind == "head":
                    self.submit_prepare(item)
                else:  # same ids; Dask loads the model again if it was lost with the worker
                    self.submit_stage(item, item.ids)
                return
            what = "loading and measuring" if kind == "head" else "writing"
            item.result = ExtractResult(item.source, "failed", item.name, f"{item.source}: failed on the cluster "
                                        f"while {what} it ({type(exc).__name__}: {exc})")
            return
        if kind == "stage":
            item.staged_value = value
            return
        if kind == "head":
            header = value
            if not header.unreadable:
                item.header = header
            elif item.shipped:
                item.result = ExtractResult(item.source, "failed", None, f"{item.source}: the workers cannot read it")
            else:  # this worker cannot read the file: send it its bytes
                item.shipped = True
                try:
                    payload = Path(item.path).read_bytes()
                except OSError as exc:
                    item.result = ExtractResult(item.source, "failed", None, f"{item.source}: cannot read it ({exc})")
                    return
                self.submit_prepare(item, payload)


#: Errors of the cluster, not of the model, after which a model is sent once more.
_RETRIED = ("KilledWorker", "CancelledError", "FutureCancelledError", "CommClosedError", "FutureLostError")


def _staged(item: _Item) -> bool:
    return item.result is None and item.staged_value is not None


def _release(item: _Item) -> None:
    for f in (item.prep, item.head, item.staged):
        if f is not None:
            f.release()
    item.prep = item.head = item.staged = None
