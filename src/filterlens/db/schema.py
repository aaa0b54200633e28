"""Layout and table schemas of a filter database (schema version 1).

A database is a directory::

    filterlens-db.json          marker: format name and schema version (written once)
    manifest.json               the committed state, replaced atomically (the commit point)
    tables/models.NNNNNN.parquet  one row per model, generation NNNNNN
    tables/layers.NNNNNN.parquet  one row per conv layer, with its metrics and where its filters are
    filters/<uid>.<kh>x<kw>.<dtype>.parquet   the filters of one model of one kernel shape and dtype
    tmp/                        files being written (never read)
    .lock                       writers' lock (fcntl)

A filters file has the columns ``layer_id`` (int64), ``filter`` (int32, the filter's index in
its layer: ``weight[a, b]`` is filter ``a * weight.shape[1] + b``) and ``w``: the filter's
``kh * kw`` values as raw little-endian bytes of the layer's dtype in a fixed-size binary column.
That decodes to a numpy array without a copy and reads back bit-exact; the ``filters`` DuckDB
view decodes it to a ``DOUBLE[]`` (exact for float16/32/64). The rows of a layer are contiguous;
``layers.file`` / ``row_offset`` / ``n_filters`` say where.
"""

from __future__ import annotations

import pyarrow as pa

from ..metrics import LAYER_METRIC_COLUMNS
from ..training import TRAINING_VALUES  # noqa: F401 - the labels a models-table ``training`` holds

FORMAT = "filterlens-db"
SCHEMA_VERSION = 1

MARKER = "filterlens-db.json"
MANIFEST = "manifest.json"
TABLES_DIR = "tables"
FILTERS_DIR = "filters"
TMP_DIR = "tmp"
LOCK = ".lock"

#: Target size of a row group of a filters file (131072 3x3 float32 filters). Groups of a few
#: MB stream fastest: they stay in the CPU cache while pyarrow decodes them.
ROW_GROUP_BYTES = 9 << 19

MODELS_SCHEMA = pa.schema(
    [
        ("model_id", pa.int64()),
        ("model", pa.string()),
        ("source", pa.string()),
        ("sha256", pa.string()),
        ("arch", pa.string()),
        ("dataset", pa.string()),
        ("training", pa.string()),
        ("threat_model", pa.string()),
        ("eps", pa.float64()),
        ("clean_acc", pa.float64()),
        ("robust_acc", pa.float64()),
        ("tags", pa.string()),
        ("depth_source", pa.string()),
        ("n_layers", pa.int64()),
        ("n_filters", pa.int64()),
        ("added_at", pa.timestamp("us", tz="UTC")),
        ("warnings", pa.string()),
        ("extra", pa.string()),  # JSON object: metadata without a column of its own
    ]
)

#: Per-layer metric columns, as :func:`filterlens.metrics.measure_weight` returns them (its
#: ``n_filters`` is the layer's own column). Tables written with other metric columns still read:
#: missing columns come back null.
METRIC_COLUMNS = [c for c in LAYER_METRIC_COLUMNS if c != "n_filters"]


def _metric_type(column: str) -> pa.DataType:
    if column == "notes":
        return pa.string()
    return pa.int64() if column.startswith("n_") else pa.float64()


LAYERS_SCHEMA = pa.schema(
    [
        ("layer_id", pa.int64()),  # unique in the database
        ("model_id", pa.int64()),
        ("model", pa.string()),
        ("layer_index", pa.int64()),  # position in the model's layer list
        ("layer", pa.string()),
        ("op_type", pa.string()),
        ("kernel_size", pa.int64()),  # kh for a square kernel, else null
        ("kernel_h", pa.int64()),
        ("kernel_w", pa.int64()),
        ("in_channels", pa.int64()),
        ("out_channels", pa.int64()),
        ("groups", pa.int64()),
        ("transposed", pa.bool_()),
        ("unused", pa.bool_()),  # never called by the forward pass: stored, never measured or analysed
        ("dim0", pa.int64()),  # weight.shape[0]; the weight is (dim0, dim1, kernel_h, kernel_w)
        ("dim1", pa.int64()),
        ("dtype", pa.string()),  # numpy dtype name of the stored filters
        ("depth", pa.int64()),
        ("conv_depth", pa.int64()),
        ("conv_depth_norm", pa.float64()),
        ("depth_source", pa.string()),
        ("sha256", pa.string()),  # of this layer's weight (dtype, shape, bytes)
        ("file", pa.string()),  # relative to the database directory
        ("row_offset", pa.int64()),
        ("n_filters", pa.int64()),
        *[(c, _metric_type(c)) for c in METRIC_COLUMNS],
        ("extra", pa.string()),  # JSON object, e.g. the row of an imported HDF5 meta table
    ]
)

#: Layers-table columns added after schema version 1 was first written, with the value a table
#: written before them reads as (such a table is otherwise unchanged and still opens).
ADDED_LAYER_COLUMNS = {"unused": False}

#: Integer columns that may be null (pandas ``Int64``).
NULLABLE_INT = {"kernel_size", "depth", "conv_depth"} | {c for c in METRIC_COLUMNS if c.startswith("n_")}

FILTERS_COLUMNS = ("layer_id", "filter", "w")


def filters_schema(row_bytes: int) -> pa.Schema:
    """Schema of a filters file whose filters take ``row_bytes`` bytes each."""
    return pa.schema([pa.field("layer_id", pa.int64(), nullable=False), pa.field("filter", pa.int32(), nullable=False),
                      pa.field("w", pa.binary(row_bytes), nullable=False)])
