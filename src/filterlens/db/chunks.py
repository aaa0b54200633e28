"""Streaming filters out of a snapshot in blocks (:class:`FilterChunk`), one block in memory at a time."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from .filestore import FiltersReader
from .snapshot import Snapshot

CHUNK_KEY_DTYPE = np.dtype([("layer_id", np.int64), ("start", np.int64), ("stop", np.int64),
                            ("offset", np.int64)])

#: ``open_reader(file, (kh, kw), dtype, model) -> FiltersReader``
OpenReader = Callable[[str, tuple[int, int], str, str], FiltersReader]


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
    _lookup: "LayerLookup" = field(repr=False)

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


class LayerLookup:
    """Rows of a snapshot's layers table by layer id, indexed on first use."""

    def __init__(self, snap: Snapshot):
        self._snap = snap
        self._indexed: pd.DataFrame | None = None

    def rows(self, layer_ids: np.ndarray) -> pd.DataFrame:
        if self._indexed is None:
            self._indexed = self._snap.layers.set_index("layer_id", drop=False)
        return self._indexed.loc[layer_ids].reset_index(drop=True)


def chunk_keys(lo: list[int], hi: list[int], ids: list[int], cs: int, ce: int) -> np.ndarray:
    """Keys of the file rows ``[cs, ce)`` given sorted, disjoint layer row ranges ``[lo, hi)``."""
    i = bisect.bisect_right(hi, cs)
    keys = []
    while i < len(lo) and lo[i] < ce:
        s, e = max(lo[i], cs), min(hi[i], ce)
        if e > s:
            keys.append((ids[i], s - lo[i], e - lo[i], s - cs))
        i += 1
    return np.array(keys, dtype=CHUNK_KEY_DTYPE)


def runs(lo: list[int], hi: list[int]) -> list[tuple[int, int]]:
    """Merge sorted ``[lo, hi)`` ranges that touch into runs."""
    out: list[list[int]] = []
    for a, b in zip(lo, hi):
        if out and a == out[-1][1]:
            out[-1][1] = b
        else:
            out.append([a, b])
    return [(a, b) for a, b in out if b > a]


def chunked(pieces: Iterator[np.ndarray], size: int | None) -> Iterator[np.ndarray]:
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


def iter_chunks(snap: Snapshot, sel: pa.Table, chunk_size: int | None, open_reader: OpenReader
                ) -> Iterator[FilterChunk]:
    """The filters of the selected rows ``sel`` of ``snap``'s layers table, in blocks: by model
    (in table order), then filters file, then row; see :meth:`FilterDB.iter_filters`."""
    if sel.num_rows == 0:
        return
    lookup = LayerLookup(snap)
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
        with open_reader(key[1], (kh[i0], kw[i0]), dts[i0], names[i0]) as reader:
            for start, stop in runs(lo, hi):
                pos = start
                for arr in chunked(reader.pieces(start, stop), chunk_size):
                    end = pos + arr.shape[0]
                    yield FilterChunk(chunk_keys(lo, hi, gid, pos, end), arr, lookup)
                    pos = end
