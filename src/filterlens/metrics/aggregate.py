"""Aggregate per-layer metrics over models, depth bins or any grouping."""

from __future__ import annotations

import numpy as np
import pandas as pd

#: How each metric is weighted when layers are pooled (docs/definitions.md, "Pooling layers").
WEIGHTS = {
    "sparsity": "n_filters",  # sum of sparse filters / sum of filters
    "variance_entropy": "n_nonsparse",
    "orthogonality": "out_channels",
}


def _weighted(values: pd.Series, weights: pd.Series) -> float:
    ok = values.notna() & (weights > 0)
    if not ok.any():
        return float("nan")
    w = weights[ok].astype(np.float64)
    return float((values[ok].astype(np.float64) * w).sum() / w.sum())


#: The ``notes`` of a conv layer the forward pass never calls: it is stored, never measured.
UNUSED_NOTE = "not measured (unused: the forward pass never calls it)"


def used_layers(layers: pd.DataFrame) -> pd.DataFrame:
    """The rows of a per-layer table that take part in analyses: not flagged ``unused``
    (never called by the forward pass). A table without that column is kept whole."""
    if "unused" not in layers.columns:
        return layers
    return layers[~layers["unused"].fillna(False).astype(bool)]


def aggregate_layers(layers: pd.DataFrame) -> dict:
    """Pool the rows of a per-layer table into one value per metric (a dict).

    - ``sparsity = sum(n_sparse) / sum(n_filters)`` (never a mean of ratios);
    - ``variance_entropy``: mean weighted by each layer's number of non-sparse filters;
    - ``orthogonality``: mean weighted by each layer's ``out_channels``.

    Layers whose value is NaN (undefined or unmeasurable) are left out of that metric. Unused
    layers (``unused`` True: never called by the forward pass) are left out entirely, from the
    counts too (science.md, "Depth").
    """
    layers = used_layers(layers)
    measured = layers[layers["n_filters"] > 0]
    finite = measured["sparsity"].notna()
    n_filters = int(measured.loc[finite, "n_filters"].sum())
    n_sparse = int(measured.loc[finite, "n_sparse"].sum())
    return {
        "n_layers": int(len(layers)),
        "n_filters": n_filters,
        "n_sparse": n_sparse,
        "sparsity": n_sparse / n_filters if n_filters else float("nan"),
        "variance_entropy": _weighted(layers["variance_entropy"], layers["n_nonsparse"]),
        "orthogonality": _weighted(layers["orthogonality"], layers["out_channels"]),
    }


def aggregate(layers: pd.DataFrame, by: str | list[str] = "model") -> pd.DataFrame:
    """:func:`aggregate_layers` for each group of ``by`` (default: one row per model); unused
    layers are left out, so a group of only unused layers gets no row."""
    by = [by] if isinstance(by, str) else list(by)
    layers = used_layers(layers)
    rows = []
    for key, group in layers.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(by, key)), **aggregate_layers(group)})
    return pd.DataFrame(rows)
