"""The analysis passes on a Dask cluster: one task per model, merged on the client in model order.

The streaming passes of :mod:`filterlens.analysis.paper` (``max_pass``, ``layer_pass``,
``range_pass``, ``hist_pass``) are reductions. :class:`DaskSegments` is a segment source that
runs them itself: it splits the layers by model, runs the *same* serial pass on a worker over
that model's filters (the worker opens the database read-only and streams exactly the segments
the serial run streams), and merges the per-model partial results in model order:

- ``max_pass`` / ``layer_pass``: per-layer results, disjoint between models -> the union, in the
  order of the layers asked for (each layer's moments were merged chunk by chunk in the same
  order as serially, so every value is bit-identical);
- ``range_pass``: min of minima, max of maxima (exact);
- ``hist_pass``: per target, the sum of the models' weighted counts (integer-valued floats:
  exact in any order; summed in model order all the same).

Workers read the filters files from the database directory: on a local cluster they share the
filesystem; on a remote cluster the database must be at the same path on every worker (a shared
filesystem). A worker that cannot open the database there, or finds a different model under the
same name (checked by its sha256), says so and the client runs that model's pass itself; so
does the client for a model whose task keeps killing workers (Dask's ``KilledWorker``).

A :class:`DaskSegments` is also an ordinary segment source and a ``filter_chunks_fn`` (called in
this process), so code that streams filters without a pass (the per-bin shift variant, report
figures) runs unchanged, serially.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from . import paper
from .paper import LayerKey

if TYPE_CHECKING:
    from distributed import Client

#: The worker could not use the database at the client's path (absent, another database, ...).
UNSEEN = "unseen"


def merge_layers(parts: Sequence[Mapping[LayerKey, Any]], keys: Sequence[LayerKey]) -> dict[LayerKey, Any]:
    """Per-layer partial results of disjoint models as one dict, in the order of ``keys``."""
    union: dict[LayerKey, Any] = {}
    for part in parts:
        union.update(part)
    return {key: union[key] for key in keys}


def merge_range(parts: Iterable[tuple[float, float]]) -> tuple[float, float]:
    """``(min of lows, max of highs)``; ``(inf, -inf)`` for no parts (as the serial pass)."""
    low, high = np.inf, -np.inf
    for lo, hi in parts:
        low, high = min(low, lo), max(high, hi)
    return float(low), float(high)


def merge_counts(parts: Iterable[Mapping[object, np.ndarray]]) -> dict[object, np.ndarray]:
    """Per target, the sum of the parts' count arrays (in the order given)."""
    out: dict[object, np.ndarray] = {}
    for part in parts:
        for target, counts in part.items():
            if target in out:
                out[target] = out[target] + counts
            else:
                out[target] = np.array(counts, dtype=np.float64, copy=True)
    return out


@dataclass(frozen=True)
class SourceSpec:
    """How a worker opens the same segment stream as the client: the database path, the model's
    sha256 (to refuse another database at the same path), and the stream kind: ``"chunks"``
    (layer by layer, as :func:`~filterlens.analysis.compare.chunks_from`) or ``"db"`` (one read
    per model, as :func:`~filterlens.analysis.paper.segments_from_db`)."""

    path: str
    kind: str
    chunk_size: int
    k: int


def open_source(db, spec: SourceSpec, layers: pd.DataFrame) -> paper.SegmentSource:
    """The serial segment source of ``spec`` over an open database (client and workers alike)."""
    if spec.kind == "db":
        return paper.segments_from_db(db, layers, spec.chunk_size)
    from .compare import chunks_from

    return paper.segments_from_chunks(chunks_from(db, spec.chunk_size), spec.k)


#: Databases this worker has opened, by path: opened once per worker, not once per task (its
#: snapshot is re-read whenever the database's manifest changes, so it never goes stale).
_OPEN: dict[str, Any] = {}


def run_model_pass(spec: SourceSpec, model: str, sha256: str | None, layers: pd.DataFrame, name: str,
                   args: tuple, kwargs: dict) -> Any:
    """On a worker: the serial pass ``name`` over one model's filters, or :data:`UNSEEN` when the
    database at ``spec.path`` cannot be opened here or holds another model under that name."""
    from ..db import FilterDB
    from ..errors import FilterlensError

    try:
        db = _OPEN.get(spec.path)
        if db is None:
            db = _OPEN[spec.path] = FilterDB.open(spec.path)
        row = db.models().set_index("model").loc[model] if sha256 is not None else None
    except (FilterlensError, OSError, KeyError):
        return UNSEEN
    if row is not None and str(row.get("sha256")) != sha256:
        return UNSEEN
    return getattr(paper, name)(open_source(db, spec, layers), *args, **kwargs)


class DaskSegments:
    """A segment source over a :class:`~filterlens.db.FilterDB` whose passes run on ``client``.

    ``kind="chunks"`` streams like ``compare`` (layer by layer), ``"db"`` like ``reproduce`` (one
    read per model); the serial run with the same kind reads the same segments, so the results
    are identical. Called directly (``source(keys)`` or ``source(model, layer)``) it streams in
    this process."""

    def __init__(self, db, client: "Client", layers: pd.DataFrame | None = None, *, kind: str = "chunks",
                 chunk_size: int = 1 << 16, k: int = 9):
        if kind not in ("chunks", "db"):
            raise ValueError("kind must be 'chunks' or 'db'")
        self.db, self.client = db, client
        self.layers = (db.layers() if layers is None else layers).assign(
            model=lambda t: t["model"].astype(str), layer=lambda t: t["layer"].astype(str))
        self.spec = SourceSpec(str(os.path.abspath(db.path)), kind, int(chunk_size), int(k))
        models = db.models()
        self.sha = dict(zip(models["model"].astype(str), models["sha256"])) if "sha256" in models.columns else {}
        self.n_filters = dict(zip(zip(self.layers["model"], self.layers["layer"]), self.layers["n_filters"]))
        self._local = open_source(db, self.spec, self.layers)
        self._chunks = None
        self.tasks = 0  # model passes run on workers
        self.fallbacks: list[str] = []  # models whose pass ran here: the worker could not read the database

    # an ordinary source / filter_chunks_fn, in this process
    def __call__(self, *args):
        if len(args) == 2:  # filter_chunks_fn(model, layer)
            from .compare import chunks_from

            self._chunks = self._chunks or chunks_from(self.db, self.spec.chunk_size)
            return self._chunks(*args)
        return self._local(*args)

    def segments(self, k: int) -> "DaskSegments":
        """This source for filters of ``k`` values (what ``paper_distribution_shift`` asks for)."""
        if k == self.spec.k:
            return self
        return DaskSegments(self.db, self.client, self.layers, kind=self.spec.kind, chunk_size=self.spec.chunk_size,
                            k=k)

    # the passes, one task per model
    def max_pass(self, keys: Sequence[LayerKey]) -> dict[LayerKey, float]:
        parts = self._map("max_pass", {m: (ks,) for m, ks in _by_model(keys).items()}, {})
        return merge_layers(parts, keys)

    def layer_pass(self, keys: Sequence[LayerKey], layer_max: Mapping[LayerKey, float | None], k: int = 9,
                   threshold: float = paper.DEFAULT_THRESHOLD, progress: Callable[[int], None] | None = None,
                   out_channels: Mapping[LayerKey, tuple[int, int]] | None = None) -> dict:
        calls = {}
        for m, ks in _by_model(keys).items():
            oc = None if out_channels is None else {key: out_channels[key] for key in ks if key in out_channels}
            calls[m] = (ks, {key: layer_max.get(key) for key in ks}, k, threshold, None, oc)
        return merge_layers(self._map("layer_pass", calls, {}, progress), keys)

    def range_pass(self, keys: Sequence[LayerKey], basis, progress: Callable[[int], None] | None = None):
        return merge_range(self._map("range_pass", {m: (ks, basis) for m, ks in _by_model(keys).items()}, {},
                                     progress))

    def hist_pass(self, units: Mapping[LayerKey, Sequence[tuple[object, float]]], limits: Mapping[LayerKey, float],
                  basis, low: float, high: float, n_bins: int = paper.N_BINS,
                  progress: Callable[[int], None] | None = None) -> dict:
        keys = [key for key, targets in units.items() if targets]
        calls = {m: ({key: units[key] for key in ks}, {key: limits[key] for key in ks}, basis, low, high, n_bins)
                 for m, ks in _by_model(keys).items()}
        return merge_counts(self._map("hist_pass", calls, {}, progress))

    def _map(self, name: str, calls: Mapping[str, tuple], kwargs: dict,
             progress: Callable[[int], None] | None = None) -> list:
        """Run ``paper.<name>(source_of_model, *calls[model])`` for every model; results in model order."""
        from distributed import KilledWorker, as_completed

        layers_of = ({m: t[["layer_id", "model", "layer"]] for m, t in self.layers.groupby("model", sort=False)}
                     if self.spec.kind == "db" else {})
        futures = {}
        for model, args in calls.items():
            futures[model] = self.client.submit(
                run_model_pass, self.spec, model, self.sha.get(model), layers_of.get(model, _EMPTY), name, args,
                kwargs, key=f"filterlens-{name}-{model}-{id(self)}-{len(futures)}", pure=False)
        model_of = {f.key: m for m, f in futures.items()}
        results = {}
        for fut in as_completed(list(futures.values())):
            model = model_of[fut.key]
            try:
                value = fut.result()
            except KilledWorker:  # the model's task killed its workers (memory?): a read-only pass, redo it here
                value = UNSEEN
            if isinstance(value, str) and value == UNSEEN:  # the worker cannot read the database: do it here
                value = getattr(paper, name)(self._local, *calls[model], **kwargs)
                self.fallbacks.append(model)
            else:
                self.tasks += 1
            results[model] = value
            if progress:
                progress(int(sum(self.n_filters.get(key, 0) for key in _keys_of(calls[model][0]))))
        return [results[m] for m in calls]


_EMPTY = pd.DataFrame(columns=["layer_id", "model", "layer"])


def _by_model(keys: Iterable[LayerKey]) -> dict[str, list[LayerKey]]:
    out: dict[str, list[LayerKey]] = {}
    for key in keys:
        out.setdefault(key[0], []).append(key)
    return out


def _keys_of(first_arg) -> Iterable[LayerKey]:
    return first_arg.keys() if isinstance(first_arg, Mapping) else first_arg


def preload() -> None:
    """What the analysis tasks run, imported before local workers are forked (``connect(warm=)``):
    they then start their first pass at once instead of each importing scipy, pandas, duckdb."""
    import scipy.stats  # noqa: F401

    from ..db import FilterDB  # noqa: F401
    from . import compare  # noqa: F401


def compare_on_cluster(db, groups=None, pairs=None, *, client: "Client", **kwargs: Any):
    """:func:`~filterlens.analysis.compare.compare` over a filter database with the shift's passes
    on ``client`` (one task per model); ``kwargs`` as for ``compare``. Equal to the serial run."""
    from .compare import compare

    return compare(db.models(), db.layers(), DaskSegments(db, client), groups=groups, pairs=pairs, **kwargs)
