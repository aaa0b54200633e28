"""The DuckDB side of a snapshot: a locked-down connection whose views read the snapshot's
Arrow tables and filters files, and the function that decodes raw filter bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import _fs
from . import sql as _sql
from .filestore import storage_dtype
from .schema import FILTERS_DIR
from .snapshot import Snapshot

#: ``filters_raw`` over filters files of any kernel shape: the fixed-size ``w`` read as bytes.
FILTERS_RAW_SCHEMA = pa.schema([pa.field("layer_id", pa.int64()), pa.field("filter", pa.int32()),
                                pa.field("w", pa.large_binary())])


class StaleSnapshot(Exception):
    """The files of a snapshot were replaced by newer commits while it was being queried."""


def decode_udf(w: pa.ChunkedArray, dtype: pa.ChunkedArray) -> pa.Array:
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


def connect_views(root: Path, snap: Snapshot):
    """A new query connection over ``snap``: views ``models``, ``layers``, ``layers_full``,
    ``filters_raw`` and ``filters``, then locked down (see :mod:`filterlens.db.sql`)."""
    import duckdb

    m = snap.manifest
    con = _sql.connect()
    con.create_function("fl_decode", decode_udf, [duckdb.sqltype("BLOB"), duckdb.sqltype("VARCHAR")],
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
        files = [str(_fs.inside(root, f, FILTERS_DIR)) for f in m["files"]]
        con.register("_fl_filters", pads.dataset(files, schema=FILTERS_RAW_SCHEMA, format="parquet"))
        con.execute("CREATE OR REPLACE VIEW filters_raw AS SELECT * FROM _fl_filters")
    else:
        con.execute("CREATE OR REPLACE VIEW filters_raw AS SELECT NULL::BIGINT AS layer_id, "
                    "NULL::INTEGER AS filter, NULL::BLOB AS w WHERE false")
    con.execute(
        "CREATE OR REPLACE VIEW filters AS SELECT l.model, l.layer, f.layer_id, f.filter, l.kernel_h, "
        "l.kernel_w, l.dtype, fl_decode(f.w, l.dtype) AS w FROM filters_raw f JOIN layers l USING (layer_id)")
    _sql.lock_down(con)
    return con
