"""Figures of a comparison (matplotlib, no pyplot state: every function builds a new Figure).

Each function returns a :class:`matplotlib.figure.Figure`; pass ``save="path/stem"`` to
write ``stem.png`` and ``stem.pdf`` too (see :func:`save_figure`). Rendering uses the Agg
canvas, so no display is needed.
"""

from __future__ import annotations

import textwrap

from os import PathLike
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..analysis.bins import ALL, BIN_LABELS, METRICS
from ..analysis.shift import Histograms, PCABasis
from ..atomic import atomic_path

#: Colours of group a and group b.
GROUP_COLORS = {"a": "#d95f02", "b": "#1b9e77"}
METRIC_LABELS = {
    "sparsity": "sparsity",
    "variance_entropy": "variance entropy",
    "orthogonality": "orthogonality",
}
DIVERGING_CMAP = "RdBu_r"


def new_figure(width: float, height: float) -> Figure:
    """An empty figure of ``width`` x ``height`` inches, constrained layout, on an Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, stem: str | PathLike, formats: Sequence[str] = ("png", "pdf"), dpi: int = 150) -> list[Path]:
    """Write ``fig`` as ``stem.<fmt>`` for each format (parents created); returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        with atomic_path(path) as tmp:  # a failed save leaves the previous figure as it was
            fig.savefig(tmp, format=fmt, dpi=dpi)
        paths.append(path)
    return paths


def finish_figure(fig: Figure, save: str | PathLike | None) -> Figure:
    """``fig``, written first as ``save.png`` and ``save.pdf`` when ``save`` is given."""
    if save is not None:
        save_figure(fig, save)
    return fig


def _short_bin(label: str) -> str:
    return label if not label.startswith("(") else label.split(",")[1].strip(" ]")


def metric_by_depth(
    per_model: pd.DataFrame,
    group_names: dict[str, str],
    metrics: Sequence[str] = METRICS,
    dataset: str | None = None,
    title: str | None = None,
    save: str | PathLike | None = None,
) -> Figure:
    """The paper's main figure: for each metric, x = depth bins, one box per group per bin.

    ``per_model`` is the per-model-per-bin table (columns ``model, group, dataset,
    depth_bin`` and the metrics). Only real bins are drawn (``first`` and the deciles,
    labelled by their upper edge); each model is a dot over its box. ``dataset`` limits
    the models shown.
    """
    data = per_model if dataset is None else per_model[per_model["dataset"].astype(str) == str(dataset)]
    bins = [b for b in BIN_LABELS if (data["depth_bin"] == b).any()]
    fig = new_figure(max(6.0, 0.75 * len(bins) + 2), 2.6 * len(metrics))
    axes = fig.subplots(len(metrics), 1, squeeze=False)[:, 0]
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes, metrics):
        for gi, key in enumerate(("a", "b")):
            pos = np.arange(len(bins)) + (gi - 0.5) * 0.36
            values = [
                data.loc[(data["depth_bin"] == b) & (data["group"] == key), metric].dropna().to_numpy(float)
                for b in bins
            ]
            keep = [i for i, v in enumerate(values) if len(v)]
            if keep:
                box = ax.boxplot(
                    [values[i] for i in keep], positions=pos[keep], widths=0.3, patch_artist=True,
                    showfliers=False, medianprops={"color": "black"},
                )
                for patch in box["boxes"]:
                    patch.set_facecolor(GROUP_COLORS[key])
                    patch.set_alpha(0.55)
            for i in keep:
                jitter = rng.uniform(-0.08, 0.08, len(values[i]))
                ax.plot(pos[i] + jitter, values[i], ".", ms=3, color=GROUP_COLORS[key], alpha=0.9)
            ax.plot([], [], "s", color=GROUP_COLORS[key], label=group_names[key])
        ax.set_xticks(np.arange(len(bins)), [_short_bin(b) for b in bins])
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        ax.grid(axis="y", alpha=0.3)
    axes[-1].set_xlabel("depth bin (first layer; upper edge of conv_depth_norm decile)")
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(title or ("metrics by depth" + (f" - {dataset}" if dataset else "")))
    return finish_figure(fig, save)


def shift_by_depth(shift: pd.DataFrame, title: str | None = None, save: str | PathLike | None = None) -> Figure:
    """Bars of the weighted symmetric KL divergence per depth bin, one colour per dataset.

    ``shift`` is the shift table (``dataset, depth_bin, divergence``); the ``"all"`` bin is
    drawn as its own bar at the left. NaN bins are left empty. When the table has
    ``divergence_null`` (label-shuffled pseudo-groups), it is drawn as a black tick on each bar:
    the part of the bar below it is what sampling noise alone gives.
    """
    bins = [b for b in [ALL, *BIN_LABELS] if (shift["depth_bin"] == b).any()] if len(shift) else []
    datasets = list(dict.fromkeys(shift["dataset"])) if len(shift) else []
    fig = new_figure(max(6.0, 0.7 * len(bins) + 2), 3.4)
    ax = fig.subplots()
    width = 0.8 / max(1, len(datasets))
    for i, ds in enumerate(datasets):
        sub = shift[shift["dataset"] == ds].set_index("depth_bin")["divergence"]
        vals = [float(sub.get(b, np.nan)) for b in bins]
        pos = np.arange(len(bins)) + (i - (len(datasets) - 1) / 2) * width
        ax.bar(pos, vals, width, label=str(ds))
        if "divergence_null" in shift:
            null = shift[shift["dataset"] == ds].set_index("depth_bin")["divergence_null"]
            nulls = [float(null.get(b, np.nan)) for b in bins]
            ax.hlines(nulls, pos - width / 2, pos + width / 2, colors="black", linewidth=2,
                      label="shuffled null" if i == 0 else None)
    ax.set_xticks(np.arange(len(bins)), [_short_bin(b) for b in bins])
    ax.set_xlabel("depth bin")
    ax.set_ylabel("weighted symmetric KL")
    ax.grid(axis="y", alpha=0.3)
    if datasets:
        ax.legend(fontsize=8)
    ax.set_title(title or "distribution shift by depth")
    return finish_figure(fig, save)


def pca_basis(basis: PCABasis, title: str | None = None, save: str | PathLike | None = None) -> Figure:
    """The basis filters as images (shared symmetric colour scale around 0), each labelled
    with its explained variance ratio."""
    comps = basis.components
    fig = new_figure(1.1 * len(comps) + 0.8, 1.9)
    axes = fig.subplots(1, len(comps), squeeze=False)[0]
    t = float(np.abs(comps).max()) or 1.0
    im = None
    for i, (ax, c) in enumerate(zip(axes, comps)):
        im = ax.imshow(c, cmap=DIVERGING_CMAP, vmin=-t, vmax=t)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"$v_{{{i}}}$", fontsize=10)
        ax.set_xlabel(f"{basis.explained_variance_ratio[i]:.3f}", fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.8)
    fig.suptitle(title or f"PCA basis (n = {basis.n:g} filters); labels: explained variance ratio", fontsize=10)
    return finish_figure(fig, save)


def coefficient_violins(
    hist: Histograms, group_names: dict[str, str], title: str | None = None, save: str | PathLike | None = None
) -> Figure:
    """Split violins of the coefficient distribution per component: group ``a`` to the left,
    group ``b`` to the right, drawn from the (streamed) histograms, each scaled to its own
    maximum density."""
    k = hist.counts.shape[1]
    fig = new_figure(max(6.0, 0.9 * k + 1), 3.6)
    ax = fig.subplots()
    for c in range(k):
        edges = hist.edges[c]
        centres = (edges[:-1] + edges[1:]) / 2
        for g, side in ((0, -1), (1, 1)):
            counts = hist.counts[g, c]
            total = counts.sum()
            if total == 0:
                continue
            dens = counts / total
            dens = 0.45 * dens / dens.max()
            ax.fill_betweenx(centres, c, c + side * dens, color=GROUP_COLORS["ab"[g]], alpha=0.7, lw=0, step="mid")
    for g in (0, 1):
        ax.plot([], [], "s", color=GROUP_COLORS["ab"[g]], label=group_names["ab"[g]])
    ax.set_xticks(range(k), [f"$v_{{{c}}}$" for c in range(k)])
    ax.set_ylabel("coefficient")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title or "coefficient distributions per component")
    return finish_figure(fig, save)


def cumulative_variance(
    own_pca: pd.DataFrame,
    group_names: dict[str, str],
    dataset: str,
    depth_bin: str = ALL,
    save: str | PathLike | None = None,
) -> Figure:
    """Cumulative explained variance of each group's own PCA (a flatter spectrum rises slower)."""
    sub = own_pca[(own_pca["dataset"] == dataset) & (own_pca["depth_bin"] == depth_bin)]
    fig = new_figure(5.0, 3.4)
    ax = fig.subplots()
    for key in ("a", "b"):
        g = sub[sub["group"] == key].sort_values("component")
        if len(g):
            ax.plot(g["component"], g["cum_evr"], "o-", color=GROUP_COLORS[key], label=group_names[key])
    ax.set_xlabel("principal components")
    ax.set_ylabel("cumulative explained variance")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"own PCA spectra - {dataset}, {depth_bin}")
    return finish_figure(fig, save)


def filter_grid(
    filters: np.ndarray, max_filters: int = 256, title: str | None = None, save: str | PathLike | None = None
) -> Figure:
    """The filters of one layer as a grid of small images.

    ``filters``: a 4-D weight ``(c_out, c_in, kh, kw)`` (row ``o`` = output channel) or
    ``(n, kh, kw)``. Diverging colormap centred at 0 with one symmetric scale for the layer:
    ``[-max|W|, max|W|]`` (an all-zero layer uses ``[-1, 1]``). At most ``max_filters``
    filters are drawn (the first ones).
    """
    w = np.asarray(filters, dtype=np.float64)
    xlabel = ylabel = None
    if w.ndim == 4:
        # lay the longer axis out horizontally (a 16x3 first layer as 3 rows of 16)
        grid4 = w if w.shape[0] <= w.shape[1] else w.transpose(1, 0, 2, 3)
        ylabel, xlabel = ("output channel", "input channel") if w.shape[0] <= w.shape[1] else (
            "input channel", "output channel")
        rows, cols = grid4.shape[0], grid4.shape[1]
        if rows * cols > max_filters:
            cols = min(cols, max_filters)
            rows = max(1, max_filters // cols)
        grid = grid4[:rows, :cols]
    elif w.ndim == 3:
        n = min(len(w), max_filters)
        cols = int(np.ceil(np.sqrt(n)))
        rows = int(np.ceil(n / cols)) if n else 1
        pad = np.full((rows * cols, *w.shape[1:]), np.nan)
        pad[:n] = w[:n]
        grid = pad.reshape(rows, cols, *w.shape[1:])
    else:
        raise ValueError(f"expected (c_out, c_in, kh, kw) or (n, kh, kw), got shape {w.shape}")
    kh, kw = grid.shape[2:]
    mosaic = np.full((rows * (kh + 1) - 1, cols * (kw + 1) - 1), np.nan)
    for r in range(rows):
        for c in range(cols):
            mosaic[r * (kh + 1) : r * (kh + 1) + kh, c * (kw + 1) : c * (kw + 1) + kw] = grid[r, c]
    t = float(np.nanmax(np.abs(w))) if w.size else 0.0
    t = t if t > 0 else 1.0
    fig = new_figure(max(4.5, min(12.0, 1.5 + 0.22 * cols * (kw + 1) / 4)),
                  max(2.0, min(12.0, 1.2 + 0.22 * rows * (kh + 1) / 4)))
    ax = fig.subplots()
    im = ax.imshow(mosaic, cmap=DIVERGING_CMAP, vmin=-t, vmax=t, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(textwrap.fill(title or "filters", 60), fontsize=9)
    return finish_figure(fig, save)


def rgb_filters(
    weight: np.ndarray, max_filters: int = 256, title: str | None = None, save: str | PathLike | None = None
) -> Figure:
    """First-layer filters on RGB input as colour images.

    ``weight``: ``(c_out, 3, kh, kw)``. Each filter (all three channels together) is
    min-max scaled to ``[0, 1]`` on its own: ``(w - min) / (max - min)``; a constant filter
    becomes mid-grey 0.5. Drawn as ``(kh, kw, 3)`` images, first ``max_filters`` only.
    """
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim != 4 or w.shape[1] != 3:
        raise ValueError(f"expected a (c_out, 3, kh, kw) weight, got shape {w.shape}")
    w = w[:max_filters]
    lo = w.min(axis=(1, 2, 3), keepdims=True)
    span = w.max(axis=(1, 2, 3), keepdims=True) - lo
    scaled = np.where(span > 0, (w - lo) / np.where(span > 0, span, 1.0), 0.5)
    images = scaled.transpose(0, 2, 3, 1)
    n = len(images)
    cols = int(np.ceil(np.sqrt(n))) if n else 1
    rows = int(np.ceil(n / cols)) if n else 1
    fig = new_figure(max(4.5, min(12.0, 0.6 * cols + 1)), min(12.0, 0.6 * rows + 0.8))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if i < n:
            ax.imshow(images[i], interpolation="nearest")
    fig.suptitle(textwrap.fill(title or "first-layer filters (each min-max scaled, RGB)", 60), fontsize=9)
    return finish_figure(fig, save)
