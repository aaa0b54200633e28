"""Depth bins: the first layer on its own, every other layer in a right-closed decile.

docs/definitions.md, "Depth bins": the first layer (``conv_depth == 0``) is its own bin ``"first"``;
every other layer falls into one of the right-closed deciles of ``conv_depth_norm``:
``(0.0, 0.1], (0.1, 0.2], ..., (0.9, 1.0]``. A model contributes one value per bin: the
weighted aggregate of :func:`filterlens.metrics.aggregate` over its layers in that bin.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import pandas as pd

from ..kernel_size import parse_kernel_size
from ..metrics import aggregate

#: The label of the first layer's bin.
FIRST = "first"
#: The label of the pseudo-bin that pools all layers of a model.
ALL = "all"
#: The ten deciles, in depth order.
DECILES: list[str] = [f"({i / 10:.1f}, {(i + 1) / 10:.1f}]" for i in range(10)]
#: Every real depth bin, in depth order.
BIN_LABELS: list[str] = [FIRST, *DECILES]
#: The metrics of the paper, in the order they are reported.
METRICS: tuple[str, ...] = ("sparsity", "variance_entropy", "orthogonality")

# conv_depth_norm values closer than this to a decile edge count as the edge itself, so a
# value like 0.30000000000000004 (3 * 0.1) still falls into (0.2, 0.3].
_EDGE_TOL = 1e-9


def depth_bin(conv_depth: Any, conv_depth_norm: Any) -> str | None:
    """The depth bin of one layer, or ``None`` when it cannot be placed.

    - ``conv_depth == 0`` -> ``"first"`` (whatever ``conv_depth_norm`` says);
    - otherwise ``conv_depth_norm`` in ``(i/10, (i+1)/10]`` -> ``DECILES[i]``; a value within
      ``1e-9`` of an edge is taken to be the edge (so ``0.1`` is in ``(0.0, 0.1]``);
    - ``conv_depth`` missing (NaN/None) and ``conv_depth_norm == 0`` -> ``"first"``;
    - ``conv_depth_norm`` missing, or outside ``[0, 1]``, or ``0`` for a layer whose
      ``conv_depth`` is not 0 -> ``None`` (the layer still counts in the ``"all"`` pool).
    """
    depth = _num(conv_depth)
    norm = _num(conv_depth_norm)
    if depth is not None and depth == 0:
        return FIRST
    if norm is None:
        return None
    if depth is None and norm == 0:
        return FIRST
    nearest = round(norm * 10)
    if abs(norm * 10 - nearest) < _EDGE_TOL * 10:
        norm = nearest / 10
    if not 0 < norm <= 1:
        return None
    return DECILES[min(9, max(0, math.ceil(norm * 10) - 1))]


def _num(value: Any) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def assign_bins(layers: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``layers`` with a ``depth_bin`` column (str, or NaN where unplaceable).

    Needs ``conv_depth_norm``; ``conv_depth`` is used when present (see :func:`depth_bin`).
    """
    if "conv_depth_norm" not in layers.columns:
        raise KeyError("layers need a 'conv_depth_norm' column for depth binning")
    out = layers.copy()
    depth = out["conv_depth"] if "conv_depth" in out.columns else pd.Series(None, index=out.index)
    out["depth_bin"] = [depth_bin(d, n) for d, n in zip(depth, out["conv_depth_norm"])]
    return out


def bin_order(labels: Iterable[Any]) -> list[str]:
    """The distinct labels among ``labels`` in report order: ``all``, ``first``, deciles."""
    present = {str(x) for x in labels if isinstance(x, str)}
    return [b for b in [ALL, *BIN_LABELS] if b in present]


def model_bin_table(
    layers: pd.DataFrame, by: str | list[str] = "model", include_all: bool = True
) -> pd.DataFrame:
    """Per-model-per-bin aggregates of the layer metrics.

    One row per (``by``..., ``depth_bin``) with ``n_layers, n_filters, n_sparse, sparsity,
    variance_entropy, orthogonality`` as computed by :func:`filterlens.metrics.aggregate`:
    ``sparsity = sum(n_sparse) / sum(n_filters)``; variance entropy weighted by
    ``n_nonsparse``; orthogonality weighted by ``out_channels``. Layers without a bin are
    left out of the bins but kept in the ``"all"`` row of their model (``include_all``).
    Rows are ordered by ``by`` (first appearance) then bin order.
    """
    by = [by] if isinstance(by, str) else list(by)
    binned = layers if "depth_bin" in layers.columns else assign_bins(layers)
    frames = []
    placed = binned[binned["depth_bin"].notna()].copy()
    placed["depth_bin"] = placed["depth_bin"].astype(object)
    if len(placed):
        frames.append(aggregate(placed, by=[*by, "depth_bin"]))
    if include_all and len(binned):
        whole = aggregate(binned, by=by)
        whole["depth_bin"] = ALL
        frames.append(whole)
    if not frames:
        return pd.DataFrame(columns=[*by, "depth_bin", "n_layers", "n_filters", "n_sparse", *METRICS])
    table = pd.concat(frames, ignore_index=True)
    order = {b: i for i, b in enumerate([ALL, *BIN_LABELS])}
    first_seen = {k: i for i, k in enumerate(dict.fromkeys(map(tuple, binned[by].to_numpy())))}
    keys = [first_seen.get(tuple(r), len(first_seen)) for r in table[by].to_numpy()]
    table = table.assign(_k=keys, _b=table["depth_bin"].map(order))
    table = table.sort_values(["_k", "_b"], kind="stable").drop(columns=["_k", "_b"])
    return table.reset_index(drop=True)


def select_layers(
    layers: pd.DataFrame,
    kernel_size: tuple[int, int] | None = (3, 3),
    include_transposed: bool = False,
) -> pd.DataFrame:
    """The layers the paper measures: ``kernel_size`` filters (``None``: any), no transposed,
    none flagged ``unused`` (never called by the forward pass: never analysed).

    Kernel size comes from a ``kernel_size`` column (see :func:`parse_kernel_size`) or from
    ``kh``/``kw`` columns; a table with neither is kept whole.
    """
    keep = pd.Series(True, index=layers.index)
    if "unused" in layers.columns:
        keep &= ~layers["unused"].fillna(False).astype(bool)
    if kernel_size is not None:
        want = tuple(int(k) for k in kernel_size)
        if "kernel_size" in layers.columns:
            keep &= layers["kernel_size"].map(parse_kernel_size).map(lambda k: k == want)
        elif {"kh", "kw"} <= set(layers.columns):
            keep &= (layers["kh"] == want[0]) & (layers["kw"] == want[1])
    if not include_transposed and "transposed" in layers.columns:
        keep &= ~layers["transposed"].fillna(False).astype(bool)
    return layers[keep]
