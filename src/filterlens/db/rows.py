"""Table rows of a model and its layers, and the checks a model passes before it is stored.

Pure functions of what they are given: nothing here reads or writes the database, and nothing
measures (metrics arrive measured, see :func:`filterlens.measure.measure_layers`).
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from ..metrics import UNUSED_NOTE
from ..types import ConvLayer, ModelFilters
from .errors import DatabaseError, DuplicateModelError
from .filestore import storage_dtype
from .schema import METRIC_COLUMNS
from .snapshot import Snapshot

#: Per-layer metrics: a table with a ``layer`` column (as :func:`filterlens.measure.measure_model`
#: returns; layers it lacks are "not measured"), or one dict per layer in layer order.
LayerMetrics = pd.DataFrame | Sequence[Mapping[str, Any]]

NOT_MEASURED = {"notes": "not measured"}


def check_layer(model: str, layer: ConvLayer, seen: set[str]) -> None:
    """A layer can be stored: a 4-D floating-point weight, a name not in ``seen`` (then added)."""
    w = np.asarray(layer.weight)
    if w.ndim != 4:
        raise DatabaseError(f"{model}: layer {layer.name} has a {w.ndim}-D weight, expected 4-D")
    if w.dtype.kind != "f":
        raise DatabaseError(f"{model}: layer {layer.name} has {w.dtype} weights, expected floating point")
    if layer.name in seen:
        raise DatabaseError(f"{model}: two layers are named {layer.name}")
    seen.add(layer.name)


def validate_layers(mf: ModelFilters) -> None:
    """Every layer of ``mf`` can be stored, and there is at least one."""
    if not mf.layers:
        raise DatabaseError(f"{mf.name}: no conv layers to store")
    seen: set[str] = set()
    for layer in mf.layers:
        check_layer(mf.name, layer, seen)


def filters_of(layer: ConvLayer) -> np.ndarray:
    """The layer's filters as stored: ``(dim0 * dim1, kh, kw)``, little-endian, C-contiguous."""
    w = np.ascontiguousarray(layer.weight, dtype=storage_dtype(layer.weight.dtype))
    a, b, kh, kw = w.shape
    return w.reshape(a * b, kh, kw)


def metrics_by_layer(mf: ModelFilters, given: LayerMetrics | None) -> list[dict]:
    """One metrics dict (``METRIC_COLUMNS``) per layer of ``mf``, in layer order, from ``given``."""
    if given is None:
        return [dict(NOT_MEASURED) for _ in mf.layers]
    if not isinstance(given, pd.DataFrame):
        out = [dict(m) for m in given]
        if len(out) != len(mf.layers):
            raise DatabaseError(f"{mf.name}: {len(out)} layer metrics for {len(mf.layers)} layers")
        return out
    if "layer" not in given.columns:
        raise DatabaseError("layer_metrics needs a 'layer' column")
    cols = [c for c in METRIC_COLUMNS if c in given.columns]
    by_name = {r["layer"]: r for r in given[["layer", *cols]].to_dict("records")}
    out = []
    for layer in mf.layers:
        r = by_name.get(layer.name)
        out.append({c: None if pd.isna(r[c]) else r[c] for c in cols} if r else dict(NOT_MEASURED))
    return out


def opt_int(v) -> int | None:
    return None if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else int(v)


def opt_float(v) -> float | None:
    return None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else float(v)


def layer_row(layer: ConvLayer, index: int, layer_id: int, model_id: int, name: str, depth_source: str, file: str,
              offset: int, sha: str, metrics: Mapping[str, Any], extra: Mapping[str, Any] | None) -> dict:
    """The layers-table row of one layer (see :data:`~filterlens.db.schema.LAYERS_SCHEMA`)."""
    a, b, kh, kw = layer.weight.shape
    row = {
        "layer_id": layer_id, "model_id": model_id, "model": name, "layer_index": index, "layer": layer.name,
        "op_type": layer.op_type, "kernel_size": kh if kh == kw else None, "kernel_h": kh, "kernel_w": kw,
        "in_channels": layer.in_channels, "out_channels": layer.out_channels, "groups": layer.groups,
        "transposed": bool(layer.transposed), "unused": bool(layer.unused), "dim0": a, "dim1": b,
        "dtype": storage_dtype(layer.weight.dtype).name,
        "depth": opt_int(layer.depth), "conv_depth": opt_int(layer.conv_depth),
        "conv_depth_norm": opt_float(layer.conv_depth_norm), "depth_source": depth_source, "sha256": sha,
        "file": file, "row_offset": offset, "n_filters": a * b,
        "extra": json.dumps(extra, sort_keys=True, default=str) if extra else None,
    }
    if layer.unused:  # never measured, whatever the caller passed (science.md, "Depth")
        metrics = {"notes": UNUSED_NOTE}
    for c in METRIC_COLUMNS:
        v = metrics.get(c)
        if c == "notes":
            row[c] = v or None
        elif c.startswith("n_"):
            row[c] = opt_int(v)
        else:
            row[c] = opt_float(v)
    return row


def model_row(mf: ModelFilters, meta: Mapping[str, Any], name: str, model_id: int, sha: str, n_layers: int,
              n_filters: int, added_at) -> dict:
    """The models-table row: ``meta`` (normalised metadata) over what ``mf`` knows."""
    meta = dict(meta)
    extra = meta.pop("extra", None)
    return {
        "model_id": model_id, "model": name, "source": meta.pop("source", None) or mf.source,
        "sha256": sha, "arch": meta.pop("arch", None) or mf.arch,
        "dataset": meta.pop("dataset", None), "training": meta.pop("training", None) or "unknown",
        "threat_model": meta.pop("threat_model", None), "eps": meta.pop("eps", None),
        "clean_acc": meta.pop("clean_acc", None), "robust_acc": meta.pop("robust_acc", None),
        "tags": meta.pop("tags", None), "depth_source": mf.depth_source,
        "n_layers": int(n_layers), "n_filters": int(n_filters),
        "added_at": added_at, "warnings": "; ".join(mf.warnings) or None,
        "extra": json.dumps(extra, sort_keys=True, default=str) if extra else None,
    }


def check_new(snap: Snapshot, name: str, sha: str | None) -> None:
    """Neither the weights (``sha``, when known) nor the name are stored yet."""
    t = snap.models_table
    if sha is not None:
        hit = t.filter(pc.equal(t.column("sha256"), sha))
        if hit.num_rows:
            existing = hit.column("model")[0].as_py()
            raise DuplicateModelError(f"{name}: the same weights are already in the database as {existing}",
                                      existing)
    if name in set(t.column("model").to_pylist()):
        raise DuplicateModelError(f"{name}: a model of that name is already in the database "
                                  "(choose another name, or remove it first)", name)
