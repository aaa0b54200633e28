"""HDF5 import and export in the layout of the published CNN-Filter-DB / robustness filter data.

``dataset.h5`` holds

- ``filters``: an ``N x 3 x 3`` float32 dataset (``N x 9`` and the name ``filter`` are read too);
  the row number is the filter id;
- ``meta``: a pandas table (``pandas.HDFStore``), indexed by ``model_id, conv_depth,
  conv_depth_norm, layer_id``, one row per layer, whose ``filter_ids`` column says which rows
  of ``filters`` the layer owns as text ``"start:end"`` (inclusive); the other columns
  (``model``, ``Name``, ``Robust``, ``Training-Dataset``, ``Clean Accuracy``, ...) describe the
  layer and its model.

Import streams the file model by model (h5py slices by ``filter_ids``, never the whole array)
and keeps each meta row, so exporting the same models writes the same file contents back.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from ..errors import FilterlensError
from ..training import UNKNOWN, TrainingLabelError, training_label
from ..types import ConvLayer, ModelFilters
from .errors import DatabaseError, DuplicateModelError
from .filestore import FiltersReader
from .store import FilterDB
from .writer import MeasuredLayer

INDEX = ["model_id", "conv_depth", "conv_depth_norm", "layer_id"]
#: meta column -> models-table field, for the columns the published tables have.
MODEL_COLUMNS = {
    "Network": "arch",
    "Training-Dataset": "dataset",
    "Clean Accuracy": "clean_acc",
    "Robust Accuracy": "robust_acc",
    "Threat Model": "threat_model",
    "threat_model": "threat_model",
    "Epsilon": "eps",
    "eps": "eps",
}
LAYOUT_ATTR = "h5_layout"
#: meta columns the published tables give in percent; the database stores fractions.
PERCENT_COLUMNS = ("Clean Accuracy", "Robust Accuracy")


def _from_percent(v: Any) -> Any:
    """A percent accuracy of the published meta table (``68.46``) as a fraction (``0.6846``)."""
    try:
        return float(v) / 100.0
    except (TypeError, ValueError):
        return v  # not a number: normalize_metadata reports it


def _to_percent(v: Any) -> Any:
    """A fraction of the database as the published tables' percent (NaN stays NaN)."""
    return v * 100.0 if isinstance(v, (int, float)) and not isinstance(v, bool) else v


@dataclass
class ImportResult:
    """What :func:`import_h5` did: models added, and models skipped with the reason."""

    added: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    n_filters: int = 0


def _plain(v: Any) -> Any:
    """A JSON-friendly Python value of a meta cell."""
    if v is None or v is pd.NA:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return float("nan")
    if isinstance(v, (pd.Timestamp, np.datetime64)):
        return str(v)
    return v


def parse_filter_ids(text: Any) -> tuple[int, int]:
    """``"start:end"`` (inclusive) -> ``(start, stop)`` with ``stop`` exclusive."""
    try:
        a, b = str(text).split(":")
        start, end = int(a), int(b)
    except ValueError:
        raise DatabaseError(f"filter_ids must look like 'start:end', not {text!r}") from None
    if end < start or start < 0:
        raise DatabaseError(f"filter_ids {text!r}: empty or negative range")
    return start, end + 1


def _training_of(first: pd.Series) -> str | None:
    """A model's training from its meta row (:func:`filterlens.training.training_label`): the
    ``training`` column where it names one (export_h5 writes it), else the paper's ``Robust``
    flag; a word neither knows is stored as ``unknown`` (the file is not refused for it)."""
    if "training" in first.index and not pd.isna(first["training"]):
        label = _label(first["training"])
        if label is not None or str(first["training"]).strip().lower() == UNKNOWN:
            return label or UNKNOWN
    if "Robust" in first.index and not pd.isna(first["Robust"]):
        return _label(first["Robust"]) or UNKNOWN
    return None


def _label(value: Any) -> str | None:
    try:
        return training_label(value)
    except TrainingLabelError:
        return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _require_h5() -> None:
    """h5py and PyTables are optional (the ``hdf5`` extra): say how to get them."""
    import importlib.util

    missing = [m for m in ("h5py", "tables") if importlib.util.find_spec(m) is None]
    if missing:
        raise DatabaseError(f"HDF5 import/export needs {' and '.join(missing)}: "
                            "pip install 'filterlens[hdf5]'")


def _read_meta(path: Path) -> tuple[pd.DataFrame, str]:
    from ..safe_pickle import UnsafePickleError, pytables_guard

    with open(path, "rb") as f:  # PyTables' own error for a foreign file is a multi-line dump
        if f.read(8) != b"\x89HDF\r\n\x1a\n" and not _hdf5_signature_later(path):
            raise DatabaseError(f"{path}: not an HDF5 file")
    try:
        # the meta table's object columns and node attributes are pickles: plain data only
        with pytables_guard(), pd.HDFStore(path, mode="r") as store:
            if "/meta" not in store.keys():
                raise DatabaseError(f"{path}: no 'meta' table (expected the CNN-Filter-DB layout)")
            fmt = "table" if store.get_storer("meta").is_table else "fixed"
            meta = store["meta"]
    except DatabaseError:
        raise
    except UnsafePickleError as exc:
        raise DatabaseError(f"{path}: refused to read the meta table: {exc}") from None
    except MemoryError:
        raise DatabaseError(f"{path}: the meta table asks for more memory than is available") from None
    except Exception as exc:  # PyTables/pandas raise assorted errors on damaged files
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DatabaseError(f"{path}: not a readable HDF5 filter file ({msg})") from None
    if not isinstance(meta, pd.DataFrame):
        raise DatabaseError(f"{path}: 'meta' is a {type(meta).__name__}, not a table")
    names = list(meta.index.names)
    if names != INDEX:
        raise DatabaseError(f"{path}: the meta table is indexed by {names}, expected {INDEX}")
    if "filter_ids" not in meta.columns:
        raise DatabaseError(f"{path}: the meta table has no 'filter_ids' column")
    return meta, fmt


def _hdf5_signature_later(path: Path) -> bool:
    """HDF5 allows a user block: the signature may sit at 512, 1024, 2048, ... bytes."""
    size, at = path.stat().st_size, 512
    with open(path, "rb") as f:
        while at + 8 <= size:
            f.seek(at)
            if f.read(8) == b"\x89HDF\r\n\x1a\n":
                return True
            at *= 2
    return False


def import_h5(
    file: str | os.PathLike,
    db: FilterDB,
    *,
    measure: bool = True,
    on_model: Callable[[str, str], None] | None = None,
) -> ImportResult:
    """Import a CNN-Filter-DB ``dataset.h5`` into ``db``, one model (one commit) at a time.

    Each ``model_id`` becomes a model; each meta row a 3x3 layer whose weight is
    ``(out_channels, n / out_channels, 3, 3)`` when ``out_channels`` divides its filter count
    (so orthogonality is per output channel), else ``(n, 1, 3, 3)``. Metrics are computed
    unless ``measure`` is False. Models already in the database (same weights or name) are
    skipped and listed in the result. ``on_model(name, status)`` reports progress.
    """
    _require_h5()
    import h5py

    path = Path(file)
    if not path.is_file():
        raise DatabaseError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    meta, fmt = _read_meta(path)
    result = ImportResult()
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise DatabaseError(f"{path}: not a readable HDF5 file ({exc})") from None
    with h5:
        ds_name = next((n for n in ("filters", "filter") if isinstance(h5.get(n), h5py.Dataset)), None)
        if ds_name is None:
            raise DatabaseError(f"{path}: no 'filters' dataset")
        ds = h5[ds_name]
        if (not isinstance(h5.get(ds_name, getlink=True), h5py.HardLink) or ds.external
                or getattr(ds, "is_virtual", False)):  # data read from other files is not this file's
            raise DatabaseError(f"{path}: the '{ds_name}' dataset refers to data outside the file (an external "
                                "link, external storage or a virtual dataset); refusing to read it")
        if ds.ndim == 3:
            kh, kw = int(ds.shape[1]), int(ds.shape[2])
        elif ds.ndim == 2 and ds.shape[1] == 9:
            kh = kw = 3
        else:
            raise DatabaseError(f"{path}: filters dataset of shape {ds.shape}, expected N x 3 x 3 or N x 9")
        layout = {
            "filters_dataset": ds_name, "filters_shape": list(ds.shape[1:]), "filters_dtype": str(ds.dtype),
            "format": fmt, "index": INDEX, "index_dtypes": [str(meta.index.get_level_values(i).dtype) for i in range(4)],
            "columns": list(meta.columns), "dtypes": {c: str(t) for c, t in meta.dtypes.items()},
        }
        flat = meta.reset_index()
        flat["_pos"] = np.arange(len(flat))
        check_filter_ranges(flat, int(ds.shape[0]), path)  # all of them, before anything is committed
        names_seen: set[str] = set()
        for mid, grp in flat.groupby("model_id", sort=False):
            first = grp.iloc[0]
            name = next((str(first[c]) for c in ("model", "Name") if c in grp.columns and not pd.isna(first[c])),
                        f"model_{mid}")
            if name in names_seen:
                name = f"{name}#{mid}"
            names_seen.add(name)
            depth_per_layer = "depth" in grp.columns and grp["depth"].nunique(dropna=True) > 1
            mf = ModelFilters(name=name, source=f"{path.resolve()}#model_id={mid}", layers=[], depth_source="h5")
            md: dict[str, Any] = {"extra": {"h5_model_id": _plain(mid)}}
            for col, key in MODEL_COLUMNS.items():
                if col in grp.columns and not pd.isna(first[col]):
                    md[key] = _from_percent(first[col]) if col in PERCENT_COLUMNS else first[col]
            training = _training_of(first)
            if training is not None:
                md["training"] = training
            try:
                # one layer in memory at a time: read, measured, written, dropped
                row = db.add_layers(mf, _h5_layers(ds, grp, flat.columns, (kh, kw), depth_per_layer, measure, path), md)
            except _ReadError as exc:
                raise exc.error from None
            except DuplicateModelError as exc:
                result.skipped.append((name, str(exc)))
                if on_model:
                    on_model(name, "skipped")
                continue
            except (FilterlensError, OSError) as exc:  # e.g. a full or read-only disk
                raise DatabaseError(_partial_message(path, name, exc, result)) from None
            result.added.append(name)
            result.n_filters += int(row["n_filters"])
            if on_model:
                on_model(name, "added")
    try:
        db.set_attr(LAYOUT_ATTR, layout)
    except (FilterlensError, OSError) as exc:
        raise DatabaseError(_partial_message(path, "the file layout", exc, result)) from None
    return result


class _ReadError(Exception):
    """An error reading the file itself (raised as it is, not as an interrupted store)."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


#: Layers are read and measured in batches of about this many bytes (the threads of
#: :func:`~filterlens.metrics.measure_weights` share a batch); memory stays at one batch.
BATCH_BYTES = 64 << 20


def _h5_layers(ds, grp: pd.DataFrame, columns: Sequence[str], kernel: tuple[int, int], depth_per_layer: bool,
               measure: bool, path: Path) -> Iterator[MeasuredLayer]:
    """The layers of one model, read from the filters dataset a batch at a time, measured (all
    kernel sizes) unless ``measure`` is False."""
    from ..measure import measure_layers  # the metrics, not the storage layer, measure

    taken: set[str] = set()
    batch: list[tuple[ConvLayer, dict]] = []
    size = 0
    for _, row in grp.iterrows():
        try:
            start, stop = parse_filter_ids(row["filter_ids"])
            if stop > ds.shape[0]:
                raise DatabaseError(f"{path}: filter_ids {row['filter_ids']} beyond the {ds.shape[0]} filters")
            filters = np.asarray(ds[start:stop]).reshape(stop - start, *kernel)
            layer = _layer_from_row(row, filters, depth_per_layer, taken)
        except Exception as exc:  # noqa: BLE001 - handed back to import_h5 as it is
            raise _ReadError(exc) from None
        taken.add(layer.name)
        record = {c: _plain(row[c]) for c in columns if c not in ("filter_ids", "_pos")}
        batch.append((layer, {"h5": {"pos": int(row["_pos"]), "filter_start": start, "row": record}}))
        size += filters.nbytes
        if size >= BATCH_BYTES:
            yield from _measured(batch, measure_layers if measure else None)
            batch, size = [], 0
    yield from _measured(batch, measure_layers if measure else None)


def _measured(batch: list[tuple[ConvLayer, dict]], measure_layers: Callable | None) -> list[MeasuredLayer]:
    layers = [layer for layer, _ in batch]
    metrics = measure_layers(layers, None) if measure_layers else [{"notes": "not measured"} for _ in layers]
    return [MeasuredLayer(layer, m, extra) for (layer, extra), m in zip(batch, metrics)]


def _partial_message(path: Path, what: str, exc: BaseException, result: ImportResult) -> str:
    """Says exactly what an interrupted import committed (each model is committed on its own)."""
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    done = (f"; {len(result.added)} model(s) were imported before it and are kept: {', '.join(result.added)}"
            if result.added else "; nothing was imported")
    return f"{path}: could not store {what} ({why}){done}"


def check_filter_ranges(flat: pd.DataFrame, n_filters: int, path: Path | str = "") -> None:
    """Every row's ``filter_ids`` parses, lies inside the ``n_filters`` filters and overlaps no
    other row's; raises :class:`DatabaseError` naming the offending rows."""
    spans = []
    for mid, lid, text in zip(flat["model_id"], flat["layer_id"], flat["filter_ids"]):
        where = f"model_id {_plain(mid)}, layer_id {_plain(lid)}"
        try:
            start, stop = parse_filter_ids(text)
        except DatabaseError as exc:
            raise DatabaseError(f"{path}: {where}: {exc}; nothing was imported") from None
        if stop > n_filters:
            raise DatabaseError(f"{path}: {where}: filter_ids {text} beyond the {n_filters} filters; "
                                "nothing was imported")
        spans.append((start, stop, where, text))
    spans.sort(key=lambda t: t[:2])
    for (a0, a1, wa, ta), (b0, b1, wb, tb) in zip(spans, spans[1:]):
        if b0 < a1:
            raise DatabaseError(f"{path}: filter_ids overlap: {wa} ({ta}) and {wb} ({tb}); nothing was imported")


def _layer_from_row(row: pd.Series, filters: np.ndarray, depth_per_layer: bool, taken: set[str]) -> ConvLayer:
    n = filters.shape[0]
    out_c = _int_or_none(row.get("out_channels"))
    in_c = _int_or_none(row.get("in_channels"))
    a = out_c if out_c and n % out_c == 0 else n
    b = n // a
    groups = in_c // b if in_c and b and in_c % b == 0 and in_c // b >= 1 else 1
    name = next((str(row[c]) for c in ("layer", "layer_name") if c in row.index and not pd.isna(row[c])),
                f"layer_{row['layer_id']}")
    if name in taken:
        name = f"{name}#{row['layer_id']}"
    return ConvLayer(
        name=name,
        weight=filters.reshape(a, b, filters.shape[1], filters.shape[2]),
        groups=groups,
        depth=_int_or_none(row.get("depth")) if depth_per_layer else None,
        conv_depth=_int_or_none(row["conv_depth"]),
        conv_depth_norm=None if pd.isna(row["conv_depth_norm"]) else float(row["conv_depth_norm"]),
    )


def _int_or_none(v: Any) -> int | None:
    if v is None or v is pd.NA:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else int(f)


#: Column types of the meta rows built for models that were not imported (PyTables needs plain types).
NATIVE_DTYPES = {"model_id": "int64", "conv_depth": "float64", "conv_depth_norm": "float64", "layer_id": "int64",
                 "model": "str", "Name": "str", "layer": "str", "in_channels": "int64", "out_channels": "int64",
                 "depth": "float64", "Robust": "bool", "training": "str", "Training-Dataset": "str",
                 "Clean Accuracy": "float64", "Robust Accuracy": "float64", "Network": "str", "Backbone": "str"}


def _native_row(layer: pd.Series, model: pd.Series) -> dict:
    """A meta row for a layer that was not imported from HDF5 (missing values as NaN)."""
    def na(v):
        return np.nan if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v

    return {
        "model_id": int(model["model_id"]),
        "conv_depth": na(layer["conv_depth"]),
        "conv_depth_norm": na(layer["conv_depth_norm"]),
        "layer_id": int(layer["layer_index"]),
        "model": model["model"],
        "Name": model["model"],
        "layer": layer["layer"],
        "in_channels": int(layer["in_channels"]),
        "out_channels": int(layer["out_channels"]),
        "depth": na(layer["depth"]),
        "Robust": model["training"] == "adversarial",
        "training": model["training"],
        "Training-Dataset": na(model["dataset"]),
        "Clean Accuracy": _to_percent(na(model["clean_acc"])),
        "Robust Accuracy": _to_percent(na(model["robust_acc"])),
        "Network": na(model["arch"]),
        "Backbone": na(model["arch"]),
    }


def export_h5(
    db: FilterDB,
    file: str | os.PathLike,
    models: Sequence[str] | None = None,
    *,
    include_transposed: bool = False,
) -> dict[str, Any]:
    """Write the 3x3 filters of ``db`` (or of ``models``) as a CNN-Filter-DB ``dataset.h5``
    (unused layers, never called by the forward pass, left out).

    Models imported with :func:`import_h5` get their meta rows, filter ids and column types
    back as they were; other models get rows built from the database (``Robust`` is True for
    adversarial training, ``training`` keeps the exact value). Filters of other dtypes are
    converted to float32 (say so in the result). Writes to a temporary file, then renames.
    Returns counts.
    """
    _require_h5()
    import h5py

    path = Path(file)
    if path.is_dir():
        raise DatabaseError(f"{path}: is a directory; give the name of the .h5 file to write")
    if not path.parent.is_dir():
        raise DatabaseError(f"{path}: the folder {path.parent} does not exist")
    snap = db.snapshot()
    layout = snap.manifest.get("attrs", {}).get(LAYOUT_ATTR) or {}
    kh, kw = (3, 3)
    layers = snap.layers
    mods = snap.models
    if models is not None:
        missing = set(models) - set(mods["model"])
        if missing:
            raise DatabaseError(f"no model {', '.join(sorted(missing))} in the database")
        mods = mods[mods["model"].isin(models)]
    sel = layers[layers["model_id"].isin(mods["model_id"]) & (layers["kernel_h"] == kh) & (layers["kernel_w"] == kw)]
    sel = sel[~sel["unused"]]  # never called by the forward pass: the paper's route never saw it
    if not include_transposed:
        sel = sel[~sel["transposed"]]
    if sel.empty:
        raise DatabaseError("no 3x3 layers to export")
    extras = [json.loads(e).get("h5") if isinstance(e, str) else None for e in sel["extra"]]
    model_order = {mid: i for i, mid in enumerate(mods["model_id"])}
    # imported rows keep their original order; others follow, by model then layer
    keys = [(0, h["pos"], 0) if h else (1, model_order[m], li)
            for h, m, li in zip(extras, sel["model_id"], sel["layer_index"])]
    order = sorted(range(len(sel)), key=lambda i: keys[i])
    sel = sel.iloc[order].reset_index(drop=True)
    extras = [extras[i] for i in order]
    counts = sel["n_filters"].to_numpy(np.int64)
    total = int(counts.sum())
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    if all(h is not None for h in extras):  # keep the original filter ids if they tile 0..N
        orig = np.array([h["filter_start"] for h in extras], dtype=np.int64)
        o = np.argsort(orig, kind="stable")
        if orig[o][0] == 0 and (orig[o][1:] == (orig[o] + counts[o])[:-1]).all():
            starts = orig
    by_id = mods.set_index("model_id", drop=False)
    rows = []
    for r, h, s, n in zip(sel.itertuples(index=False), extras, starts, counts):
        row = dict(h["row"]) if h else _native_row(pd.Series(r._asdict()), by_id.loc[r.model_id])
        row["filter_ids"] = f"{int(s)}:{int(s + n - 1)}"
        rows.append(row)
    meta = _meta_frame(rows, layout)

    ds_name = layout.get("filters_dataset", "filters")
    shape = (total, *layout.get("filters_shape", [kh, kw]))
    converted = sorted(set(sel["dtype"]) - {"float32"})
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with h5py.File(tmp, "w") as h5:
            ds = h5.create_dataset(ds_name, shape=shape, dtype=np.float32)
            reader: FiltersReader | None = None
            for r, s, n in zip(sel.itertuples(index=False), starts, counts):
                if reader is None or reader.path != db.path / r.file:
                    if reader is not None:
                        reader.close()
                    reader = FiltersReader(db.path / r.file, (kh, kw), r.dtype)
                pos = int(s)
                for piece in reader.pieces(int(r.row_offset), int(r.row_offset) + int(n)):
                    ds[pos:pos + piece.shape[0]] = piece.astype(np.float32, copy=False).reshape(piece.shape[0], *shape[1:])
                    pos += piece.shape[0]
            if reader is not None:
                reader.close()
        meta.to_hdf(tmp, key="meta", mode="a", format=layout.get("format", "table"))
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a folder we may not write to
        raise DatabaseError(f"{path}: cannot write ({exc.strerror or _first_line(exc)})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": str(path), "n_models": int(sel["model_id"].nunique()), "n_layers": len(sel),
            "n_filters": total, "converted_to_float32": converted}


def _meta_frame(rows: list[dict], layout: dict) -> pd.DataFrame:
    """The meta table from row dicts, with the imported file's column order and dtypes."""
    df = pd.DataFrame(rows)
    index = layout.get("index", INDEX)
    columns = [c for c in layout.get("columns", []) if c in df.columns]
    columns += [c for c in df.columns if c not in columns and c not in index]
    dtypes = {**NATIVE_DTYPES, **layout.get("dtypes", {})}
    for c, dt in dtypes.items():
        if c in df.columns and c not in index:
            try:
                df[c] = df[c].astype(dt)
            except (TypeError, ValueError):
                pass
    levels = []
    for name, dt in zip(index, layout.get("index_dtypes", [None] * len(index))):
        col = df[name]
        dt = dt or (NATIVE_DTYPES.get(name) if col.isna().any() else None)
        if dt:
            try:
                col = col.astype(dt)
            except (TypeError, ValueError):
                pass
        levels.append(col)
    df.index = pd.MultiIndex.from_arrays(levels, names=index)
    return df[columns]
