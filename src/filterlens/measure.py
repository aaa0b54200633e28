"""Measure models: per-layer metric tables (pandas) from any model source."""

from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import pandas as pd

from .errors import FilterlensError
from .kernel_size import KernelSize, kernel_label, kernel_pair
from .metrics import (DEFAULT_THRESHOLD, LAYER_METRIC_COLUMNS, UNUSED_NOTE, aggregate, measure_weights,
                      used_layers)
from .sources import ModelSource, load_model
from .types import ConvLayer, ModelFilters

#: Columns of a per-layer table, in order.
LAYER_COLUMNS = [
    "model",
    "layer",
    "op_type",
    "kernel_size",
    "kernel_h",
    "kernel_w",
    "in_channels",
    "out_channels",
    "groups",
    "transposed",
    "unused",
    "depth",
    "conv_depth",
    "conv_depth_norm",
    "depth_source",
] + LAYER_METRIC_COLUMNS


class NoLayersError(FilterlensError):
    """No conv layer of the requested kind to measure."""




def selects(layer: ConvLayer, kernel_size: KernelSize, include_transposed: bool) -> bool:
    """Whether a layer is measured: used by the forward pass, its kernel size matches (None =
    any), transposed only if asked."""
    return not layer.unused and _of_kind(layer, kernel_size, include_transposed)


def _of_kind(layer: ConvLayer, kernel_size: KernelSize, include_transposed: bool) -> bool:
    """The layer is of the kind asked for (kernel size, transposed), used or not."""
    if layer.transposed and not include_transposed:
        return False
    if kernel_size is None:
        return True
    return layer.kernel_size == kernel_pair(kernel_size)


def unused_metrics(layer: ConvLayer) -> dict:
    """The metrics of an unused layer: none (NaN), its filters counted, ``notes`` saying why."""
    row = {c: float("nan") for c in LAYER_METRIC_COLUMNS}
    row.update(n_filters=layer.n_filters, n_sparse=0, n_nonsparse=0, notes=UNUSED_NOTE)
    return row


def layer_record(mf: ModelFilters, layer: ConvLayer, metrics: dict) -> dict:
    """One row of the per-layer table: the layer's description and its ``metrics``."""
    kh, kw = layer.kernel_size
    return {
        "model": mf.name,
        "layer": layer.name,
        "op_type": layer.op_type,
        "kernel_size": kh if kh == kw else pd.NA,
        "kernel_h": kh,
        "kernel_w": kw,
        "in_channels": layer.in_channels,
        "out_channels": layer.out_channels,
        "groups": layer.groups,
        "transposed": layer.transposed,
        "unused": layer.unused,
        "depth": layer.depth,
        "conv_depth": layer.conv_depth,
        "conv_depth_norm": layer.conv_depth_norm,
        "depth_source": mf.depth_source,
        **metrics,
    }


def measure_model(
    mf: ModelFilters,
    kernel_size: KernelSize = 3,
    threshold: float = DEFAULT_THRESHOLD,
    inclusive: bool = True,
    include_transposed: bool = False,
) -> pd.DataFrame:
    """Per-layer metrics of an extracted model (see :data:`LAYER_COLUMNS`).

    Only layers of ``kernel_size`` (3x3 by default, ``None`` for all) are measured;
    transposed convs only with ``include_transposed``. Unused convs of that kind (never
    called by the forward pass) are listed, ``unused`` True, but not measured: NaN metrics
    and a note; :func:`summarize` and the analyses leave them out. Depth is always ranked over
    all conv layers of the model, whatever is selected. May return an empty table.
    """
    layers = [layer for layer in mf.layers if _of_kind(layer, kernel_size, include_transposed)]
    used = [layer for layer in layers if not layer.unused]
    metrics = dict(zip(map(id, used), measure_weights([layer.weight for layer in used], threshold, inclusive)))
    rows = [layer_record(mf, layer, metrics[id(layer)] if id(layer) in metrics else unused_metrics(layer))
            for layer in layers]
    df = pd.DataFrame(rows, columns=LAYER_COLUMNS)
    check_measurable(mf, df)
    return df.astype({"conv_depth": "Int64", "depth": "Int64", "kernel_size": "Int64"})


def measure_layers(
    layers: Iterable[ConvLayer],
    kernel_size: KernelSize = 3,
    threshold: float = DEFAULT_THRESHOLD,
    inclusive: bool = True,
    include_transposed: bool = False,
) -> list[dict]:
    """One metrics dict per layer, in order, for storing (see :meth:`FilterDB.add`): the layers
    :func:`selects` picks are measured; the others get ``notes`` "not measured (kernel KxK)",
    "not measured (transposed)" or :data:`~filterlens.metrics.UNUSED_NOTE`. Each layer is
    measured on its own, so measuring a model one layer at a time gives the same values."""
    layers = list(layers)
    chosen = [layer for layer in layers if selects(layer, kernel_size, include_transposed)]
    measured = dict(zip(map(id, chosen), measure_weights([layer.weight for layer in chosen], threshold, inclusive)))
    out = []
    for layer in layers:
        if id(layer) in measured:
            out.append(measured[id(layer)])
        elif layer.unused:
            out.append({"notes": UNUSED_NOTE})
        else:
            why = "transposed" if layer.transposed else f"kernel {layer.kernel_size[0]}x{layer.kernel_size[1]}"
            out.append({"notes": f"not measured ({why})"})
    return out


def check_measurable(mf: ModelFilters, df: pd.DataFrame) -> None:
    """The rule ``metrics`` and ``extract`` share: a model whose every selected layer has NaN,
    Inf or complex weights is refused (:class:`NoLayersError`), not stored or shown as NaN.
    Unused layers take no part."""
    df = used_layers(df)
    if df.empty:
        return
    notes = df["notes"].fillna("")
    non_finite = notes.str.contains("non-finite")
    if (non_finite | notes.str.contains("complex weights")).all():
        what = "NaN or Inf" if non_finite.all() else "NaN, Inf or complex"
        raise NoLayersError(f"{mf.source}: nothing could be measured: every layer has {what} weights")


def describe_kernels(mf: ModelFilters) -> str:
    sizes = sorted({f"{l.kernel_size[0]}x{l.kernel_size[1]}" for l in mf.layers if not l.unused})
    return ", ".join(sizes)


def measure(
    source: ModelSource,
    arch: str | None = None,
    kernel_size: KernelSize = 3,
    threshold: float = DEFAULT_THRESHOLD,
    inclusive: bool = True,
    include_transposed: bool = False,
    name: str | None = None,
) -> pd.DataFrame:
    """Load ``source`` (see :func:`filterlens.load_model`) and return its per-layer metrics.

    Raises :class:`NoLayersError` when the model has no layer of ``kernel_size``. Notes about
    the source (approximate depth, layers with NaN or Inf weights) are issued as
    :class:`MeasureWarning` (a ``UserWarning``), one per note.
    """
    mf = load_model(source, arch=arch, name=name)
    df = measure_model(mf, kernel_size, threshold, inclusive, include_transposed)
    if used_layers(df).empty:
        raise no_layers_error(mf, kernel_size)
    for note in measure_notes(mf, df):
        warnings.warn(note, MeasureWarning, stacklevel=2)
    return df


class MeasureWarning(UserWarning):
    """A note about a measured model: approximate depth, a layer with NaN or Inf weights."""


def measure_notes(mf: ModelFilters, df: pd.DataFrame) -> list[str]:
    """The notes :func:`measure` warns about: the source's own, then one per layer whose
    weights are NaN or Inf (its metrics are NaN)."""
    notes = [f"{mf.name}: {note}" for note in mf.warnings]
    bad = df[df["notes"].str.contains("non-finite", na=False)] if "notes" in df.columns else df.iloc[:0]
    notes += [f"{mf.name}: layer {layer} has NaN or Inf weights; its metrics are NaN" for layer in bad["layer"]]
    return notes


def no_layers_error(mf: ModelFilters, kernel_size: KernelSize) -> NoLayersError:
    """The error for a model without layers of ``kernel_size``, naming the sizes it has."""
    return NoLayersError(
        f"{mf.source}: no {kernel_label(kernel_size)} conv layers to measure (kernel sizes present: "
        f"{describe_kernels(mf)}); choose one with kernel_size / --kernel-size"
    )


def summarize(layers: pd.DataFrame, by: str | Sequence[str] = "model") -> pd.DataFrame:
    """Aggregate a per-layer table per model (or per ``by``) with the documented weights
    (unused layers left out, see :func:`filterlens.metrics.aggregate`)."""
    return aggregate(layers, by=list(by) if not isinstance(by, str) else by)


def measure_many(sources: Iterable[ModelSource], **kwargs) -> pd.DataFrame:
    """:func:`measure` for several sources, concatenated."""
    return pd.concat([measure(s, **kwargs) for s in sources], ignore_index=True)
