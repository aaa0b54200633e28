"""The filter database: extracted conv filters plus per-layer metrics, as Parquet files in a directory.

::

    from filterlens import load_model, measure_model
    from filterlens.db import FilterDB
    db = FilterDB.open_or_create("filters.db")
    mf = load_model("resnet20.th", arch="cifar_resnet20")
    db.add(mf, {"training": "normal", "dataset": "cifar10"}, measure_model(mf))   # measured layers
    db.query("SELECT training, avg(variance_entropy) FROM layers_full GROUP BY training")
    for layers, filters in db.iter_filters(kernel_size=3):   # (n, 3, 3) blocks, streamed
        ...

See :mod:`filterlens.db.schema` for the layout and :mod:`filterlens.db.store` for the
consistency guarantees.
"""

from .errors import DatabaseError, DuplicateModelError
from .extract import ExtractResult, extract_sources
from .h5 import ImportResult, export_h5, import_h5
from .meta import MetaTable, normalize_metadata, parse_eps, parse_training
from .schema import SCHEMA_VERSION
from .store import FilterChunk, FilterDB, MeasuredLayer, Snapshot, layer_sha256, model_sha256

__all__ = [
    "DatabaseError",
    "DuplicateModelError",
    "ExtractResult",
    "FilterChunk",
    "FilterDB",
    "ImportResult",
    "MeasuredLayer",
    "MetaTable",
    "SCHEMA_VERSION",
    "Snapshot",
    "export_h5",
    "extract_sources",
    "import_h5",
    "layer_sha256",
    "model_sha256",
    "normalize_metadata",
    "parse_eps",
    "parse_training",
]
