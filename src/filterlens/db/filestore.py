"""Filters files: one Parquet file per model and (kernel shape, dtype), read in row-group pieces.

Each filter is one row; its ``kh * kw`` values are raw little-endian bytes in a fixed-size binary
column, which pyarrow decodes as one contiguous buffer: a row group becomes an
``(n, kh, kw)`` numpy view without a copy, and bit-exact by construction.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import DatabaseError
from .schema import ROW_GROUP_BYTES, filters_schema


def storage_dtype(dtype: np.dtype | str) -> np.dtype:
    """The little-endian form of ``dtype`` in which filters are stored."""
    return _storage_dtype(np.dtype(dtype).str if not isinstance(dtype, str) else dtype)


@lru_cache(maxsize=None)
def _storage_dtype(name: str) -> np.dtype:
    return np.dtype(name).newbyteorder("<")


class FiltersFileWriter:
    """Write the filters of several layers to one Parquet file, one layer at a time.

    Each :meth:`write` takes ``(layer_id, filters)`` with ``filters`` a C-contiguous
    ``(n, kh, kw)`` little-endian array of the file's kernel shape and dtype, and returns the
    layer's row offset. Row groups hold whole layers up to ``target_bytes`` (default
    :data:`~filterlens.db.schema.ROW_GROUP_BYTES`); a larger layer is split over several
    groups. Memory: at most one row group of pending layers.
    """

    def __init__(self, path: Path, kernel: tuple[int, int], dtype: np.dtype | str,
                 target_bytes: int | None = None, metadata: dict[str, str] | None = None):
        self.kernel = (int(kernel[0]), int(kernel[1]))
        self.dtype = storage_dtype(dtype)
        self.row_bytes = self.kernel[0] * self.kernel[1] * self.dtype.itemsize
        schema = filters_schema(self.row_bytes)
        self._schema = schema.with_metadata(metadata) if metadata else schema
        self.rows_per_group = max(1, (target_bytes or ROW_GROUP_BYTES) // self.row_bytes)
        self.n_rows = 0
        self._pending: list[tuple[int, np.ndarray, int]] = []  # (layer_id, rows, index of first row in layer)
        self._pending_rows = 0
        # layer_id: long runs, dictionary + RLE costs ~nothing; filter: +1 steps, delta-encoded;
        # w: plain, uncompressed, non-null, one data page per row group -> decoded with one copy
        self._writer = pq.ParquetWriter(path, self._schema, compression="none", use_dictionary=["layer_id"],
                                        column_encoding={"filter": "DELTA_BINARY_PACKED"}, data_page_size=64 << 20,
                                        data_page_version="1.0", max_rows_per_page=self.rows_per_group,
                                        write_statistics=["layer_id", "filter"])

    def _flush(self) -> None:
        if not self._pending_rows:
            return
        ids, idx, ws = [], [], []
        for layer_id, rows, start in self._pending:
            n = rows.shape[0]
            ids.append(pa.array(np.full(n, layer_id, dtype=np.int64)))
            idx.append(pa.array(np.arange(start, start + n, dtype=np.int32)))
            ws.append(pa.FixedSizeBinaryArray.from_buffers(pa.binary(self.row_bytes), n,
                                                           [None, pa.py_buffer(rows)]))
        table = pa.Table.from_arrays(
            [pa.chunked_array(ids, pa.int64()), pa.chunked_array(idx, pa.int32()),
             pa.chunked_array(ws, pa.binary(self.row_bytes))], schema=self._schema)
        self._writer.write_table(table, row_group_size=self._pending_rows)
        self._pending, self._pending_rows = [], 0

    def write(self, layer_id: int, filters: np.ndarray) -> int:
        """Append one layer's filters; return its row offset in the file."""
        if filters.shape[1:] != self.kernel or filters.dtype != self.dtype:
            raise ValueError("all pieces of a filters file must share kernel shape and dtype")
        offset = self.n_rows
        n = filters.shape[0]
        self.n_rows += n
        per = self.rows_per_group
        if self._pending_rows and self._pending_rows + n > per:
            self._flush()
        start = 0
        while n - start > per:  # a layer larger than a group: whole groups of it
            self._pending.append((layer_id, filters[start:start + per], start))
            self._pending_rows += per
            self._flush()
            start += per
        if n - start > 0 or n == 0:
            self._pending.append((layer_id, filters[start:], start))
            self._pending_rows += n - start
        return offset

    def close(self) -> None:
        """Write what is pending and close the file."""
        try:
            self._flush()
        finally:
            self._writer.close()

    def __enter__(self) -> "FiltersFileWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_filters_file(
    path: Path,
    pieces: Sequence[tuple[int, np.ndarray]],
    target_bytes: int | None = None,
    metadata: dict[str, str] | None = None,
) -> list[int]:
    """Write the filters of several layers to one Parquet file; return each layer's row offset
    (all at once; see :class:`FiltersFileWriter`)."""
    first = pieces[0][1]
    with FiltersFileWriter(path, first.shape[1:], first.dtype, target_bytes, metadata) as writer:
        return [writer.write(layer_id, filters) for layer_id, filters in pieces]


class DamagedFileError(DatabaseError):
    """A filters file that cannot be read as written (truncated, overwritten, bit rot)."""


@contextmanager
def _damaged(path: Path) -> Iterator[None]:
    """Turn what pyarrow, the Thrift reader and numpy raise on a damaged file into one line.
    A missing file passes through (the store says whose filters are gone)."""
    try:
        yield
    except (FileNotFoundError, DatabaseError):
        raise
    except (pa.ArrowException, OSError, ValueError, IndexError, TypeError, KeyError, MemoryError) as exc:
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DamagedFileError(f"{path}: damaged filters file ({msg}); run 'filterlens db check'") from None


#: Read the ``w`` column chunks of our own files straight into numpy (see :class:`FiltersReader`).
FAST_PATH = True


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    out = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        out |= (b & 0x7F) << shift
        if not b & 0x80:
            return out, pos
        shift += 7


def _skip(buf: bytes, pos: int, ttype: int) -> int:
    """Skip one Thrift compact-protocol value of type ``ttype``."""
    if ttype in (1, 2):  # bool in the field header
        return pos
    if ttype == 3:
        return pos + 1
    if ttype in (4, 5, 6):
        return _varint(buf, pos)[1]
    if ttype == 7:
        return pos + 8
    if ttype == 8:
        n, pos = _varint(buf, pos)
        return pos + n
    if ttype in (9, 10):
        head = buf[pos]
        pos += 1
        n, etype = head >> 4, head & 0x0F
        if n == 15:
            n, pos = _varint(buf, pos)
        for _ in range(n):
            pos = _skip(buf, pos, etype)
        return pos
    if ttype == 12:
        return _struct(buf, pos, {})[1]
    raise ValueError(f"thrift type {ttype}")


def _struct(buf: bytes, pos: int, want: dict[int, dict | None]) -> tuple[dict, int]:
    """Read a compact-protocol struct; integer fields by id, sub-structs listed in ``want``."""
    out: dict = {}
    fid = 0
    while True:
        head = buf[pos]
        pos += 1
        if head == 0:
            return out, pos
        delta, ttype = head >> 4, head & 0x0F
        if delta:
            fid += delta
        else:
            z, pos = _varint(buf, pos)
            fid = (z >> 1) ^ -(z & 1)
        if ttype in (5, 6):
            z, pos = _varint(buf, pos)
            out[fid] = (z >> 1) ^ -(z & 1)
        elif ttype == 12 and fid in want:
            out[fid], pos = _struct(buf, pos, want[fid] or {})
        else:
            pos = _skip(buf, pos, ttype)


def _plain_payload(fd: int, cc, rows: int, row_bytes: int) -> int | None:
    """File offset of the raw values of a ``w`` column chunk that is one uncompressed PLAIN data
    page without levels (how :func:`write_filters_file` writes it), else None."""
    if cc.compression != "UNCOMPRESSED" or cc.has_dictionary_page:
        return None
    size = rows * row_bytes
    try:
        head = os.pread(fd, 512, cc.data_page_offset)
        page, end = _struct(head, 0, {5: {}})  # PageHeader, with its DataPageHeader (field 5)
    except (IndexError, ValueError, OSError):
        return None
    dp = page.get(5, {})
    ok = (page.get(1) == 0 and page.get(2) == size and page.get(3) == size  # DATA_PAGE, uncompressed
          and dp.get(1) == rows and dp.get(2) == 0  # num_values, PLAIN
          and end + size == cc.total_compressed_size)
    return cc.data_page_offset + end if ok else None


class FiltersReader:
    """Reads row ranges of one filters file as ``(n, kh, kw)`` arrays, a row group at a time.

    A row group of a file written by :func:`write_filters_file` is read with one ``pread``
    straight into the array (its values are one uncompressed PLAIN data page of raw bytes); any
    other layout goes through pyarrow. Arrays handed out are read-only (copy them to modify).
    """

    def __init__(self, path: Path, kernel: tuple[int, int], dtype: np.dtype | str):
        with _damaged(path):
            self._open(path, kernel, dtype)

    def _open(self, path: Path, kernel: tuple[int, int], dtype: np.dtype | str) -> None:
        self.path = path
        self.kh, self.kw = kernel
        self.dtype = storage_dtype(dtype)
        self.row_bytes = self.kh * self.kw * self.dtype.itemsize
        self._fd = os.open(path, os.O_RDONLY)
        try:
            self._pf = pq.ParquetFile(pa.OSFile(str(path)), memory_map=False, pre_buffer=False)
            self._w = self._pf.schema_arrow.get_field_index("w")
            md = self._pf.metadata
            sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
            self._raw = [
                _plain_payload(self._fd, md.row_group(i).column(self._w), n, self.row_bytes) if FAST_PATH else None
                for i, n in enumerate(sizes)
            ]
        except BaseException:
            os.close(self._fd)
            raise
        self.group_starts = np.concatenate([[0], np.cumsum(np.array(sizes, dtype=np.int64))])
        self.num_rows = int(self.group_starts[-1])
        self._cache: tuple[int, np.ndarray] | None = None

    def close(self) -> None:
        if self._fd >= 0:
            self._pf.close()
            os.close(self._fd)
            self._fd = -1
        self._cache = None

    def __enter__(self) -> "FiltersReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def group(self, i: int) -> np.ndarray:
        """Row group ``i`` as an ``(n, kh, kw)`` array (the last one read is kept)."""
        if self._cache is not None and self._cache[0] == i:
            return self._cache[1]
        with _damaged(self.path):
            return self._group(i)

    def _group(self, i: int) -> np.ndarray:
        n = int(self.group_starts[i + 1] - self.group_starts[i])
        if self._raw[i] is not None:
            out = np.empty((n, self.kh, self.kw), dtype=self.dtype)
            view, offset = memoryview(out).cast("B"), self._raw[i]
            while view.nbytes:
                got = os.preadv(self._fd, [view], offset)
                if got <= 0:
                    raise OSError(f"{self.path}: file ends inside row group {i}")
                view, offset = view[got:], offset + got
            out.flags.writeable = False
            self._cache = (i, out)
            return out
        col = self._pf.reader.read_row_group(i, column_indices=[self._w], use_threads=False).column(0)
        arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
        if arr.type.byte_width != self.row_bytes:
            raise ValueError(f"{self.path}: filters of {arr.type.byte_width} bytes, expected {self.row_bytes}")
        n = len(arr)
        flat = np.frombuffer(arr.buffers()[1], dtype=self.dtype, count=n * self.kh * self.kw,
                             offset=arr.offset * self.row_bytes)
        out = flat.reshape(n, self.kh, self.kw)
        out.flags.writeable = False  # the cached group is shared by the views handed out
        self._cache = (i, out)
        return out

    def pieces(self, start: int, stop: int) -> Iterator[np.ndarray]:
        """Rows ``[start, stop)`` as consecutive views, one per row group they touch."""
        if not 0 <= start <= stop <= self.num_rows:
            raise DamagedFileError(f"{self.path}: damaged filters file: rows {start}:{stop} asked for, it holds "
                                   f"0:{self.num_rows} (run 'filterlens db check')")
        g = int(np.searchsorted(self.group_starts, start, side="right")) - 1
        while start < stop:
            g0 = int(self.group_starts[g])
            arr = self.group(g)
            end = min(stop, g0 + arr.shape[0])
            yield arr[start - g0:end - g0]
            start = end
            g += 1

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as one array (a view when they lie in one row group)."""
        parts = list(self.pieces(start, stop))
        if len(parts) == 1:
            return parts[0]
        if not parts:
            return np.empty((0, self.kh, self.kw), dtype=self.dtype)
        return np.concatenate(parts)
