"""Figures and an HTML section for the first-layer study (:mod:`filterlens.firstlayer`).

- :func:`activation_figure`: the paper's figure for any models side by side: the first-layer
  filters, the clean activation, the adversarial activation and their difference;
- :func:`metrics_figure`: per-filter measurements per model, coloured by group;
- :func:`build_first_layer_figures`: both for a :class:`FirstLayerResult`;
- :func:`first_layer_section`: the report section (``<section id="first-layer">``) from the
  per-model table, the statistics and figures; :func:`write_first_layer_html` a standalone page;
- :func:`save_first_layer`: everything a study writes into a folder (tables, JSON, figures, page).

Every figure is a new :class:`matplotlib.figure.Figure` (Agg canvas, no pyplot state); pass
``save="path/stem"`` to write ``stem.png`` and ``stem.pdf``.
"""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..atomic import write_text_atomic
from ..firstlayer.stats import first_layer_claims
from . import figures as F
from .markup import escape, figures_html, html_table, interval, standalone_page

if TYPE_CHECKING:  # pragma: no cover
    from ..firstlayer.result import FirstLayerExample, FirstLayerResult

#: Colours of the groups (robust like group a of the comparison report, normal like b).
FIRST_LAYER_COLORS = {"robust": F.GROUP_COLORS["a"], "normal": F.GROUP_COLORS["b"], "unknown": "#777777"}
ACT_CMAP = "magma"

#: Columns of the per-model table in the report (those present are shown).
SECTION_COLUMNS = [
    "model", "group", "training", "layer", "activation", "kernel", "in_channels", "out_channels", "n_images", "eps",
    "attack", "clean_acc", "adv_acc", "rel_change", "rel_change_nonsparse", "rel_change_pre", "pass_ratio",
    "low_freq_share", "spectral_centroid", "centre_peaked_share", "single_tap_share", "peak_energy_share", "sparse_share", "dead_share",
]
METRIC_LABELS = {
    "rel_change": "relative activation change",
    "rel_change_nonsparse": "relative change, non-sparse channels",
    "rel_change_pre": "relative change before the activation",
    "pass_ratio": "pass ratio (vs random filters)",
    "low_freq_share": "low-frequency (DC) share",
    "spectral_centroid": "spectral centroid (cycles/px)",
    "centre_peaked_share": "centre-peaked share",
    "single_tap_share": "single-tap share",
    "peak_energy_share": "peak-tap energy share",
}


def _channel_images(weight: np.ndarray) -> list[np.ndarray]:
    """One image per output channel: RGB (min-max per filter) for 3 inputs, else the mean kernel."""
    if weight.shape[1] == 3:
        lo = weight.min(axis=(1, 2, 3), keepdims=True)
        span = weight.max(axis=(1, 2, 3), keepdims=True) - lo
        scaled = np.where(span > 0, (weight - lo) / np.where(span > 0, span, 1.0), 0.5)
        return list(scaled.transpose(0, 2, 3, 1))
    return list(weight.mean(axis=1))


def _input_image(x: np.ndarray) -> tuple[np.ndarray, str | None]:
    if x.shape[0] == 3:
        return np.clip(x.transpose(1, 2, 0), 0, 1), None
    return x[0] if x.shape[0] == 1 else x.mean(0), "gray"


def select_channels(example: "FirstLayerExample", max_channels: int = 8) -> np.ndarray:
    """The ``max_channels`` output channels whose activations vary most over the positions of
    the example (variance of the clean plus that of the adversarial map), in channel order; a
    constant map (a channel that is its bias alone) ranks last."""
    energy = example.a_clean.reshape(len(example.a_clean), -1).var(axis=1) + \
        example.a_adv.reshape(len(example.a_adv), -1).var(axis=1)
    k = min(max_channels, len(energy))
    return np.sort(np.argsort(-energy, kind="stable")[:k])


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def activation_figure(
    examples: Sequence["FirstLayerExample"],
    per_model: pd.DataFrame | None = None,
    max_channels: int = 8,
    title: str | None = None,
    save: str | PathLike | None = None,
) -> Figure:
    """The paper's first-layer figure, one block per model, side by side.

    Each block has four rows: the filters (an RGB image per output channel for RGB input, else
    the kernel on a diverging scale symmetric around 0, one scale per model), the clean
    activation, the adversarial activation and their difference (adversarial minus clean). The
    first column holds the input: its label, the clean image, the adversarial image and the
    perturbation (diverging, scaled to its own max |d|). The other columns are the
    ``max_channels`` channels whose activations vary most on this image
    (:func:`select_channels`). Per channel, clean and adversarial activations share one scale
    ``[0, v]`` (``[-v, v]`` when the activation can be negative), ``v`` their largest magnitude,
    and the difference is drawn on ``[-v, v]``: a small difference *looks* small against the
    activation. With ``per_model`` (the study's table) the block titles give the model's
    relative change and pass ratio.
    """
    if not examples:
        raise ValueError("no examples to draw")
    chans = [select_channels(e, max_channels) for e in examples]
    ncols = [1 + len(c) for c in chans]
    fig = F.new_figure(max(4.0, 0.95 * sum(ncols) + 0.4 * len(examples)), 4.6)
    subs = fig.subfigures(1, len(examples), squeeze=False, width_ratios=ncols)[0]
    pm = per_model.set_index("model") if per_model is not None and len(per_model) else None
    for sub, ex, ch in zip(subs, examples, chans):
        axes = sub.subplots(4, 1 + len(ch), squeeze=False)
        for ax in axes.ravel():
            _off(ax)
        # the input column
        img, cmap = _input_image(ex.x)
        img_adv, _ = _input_image(ex.x_adv)
        d = (ex.x_adv - ex.x).mean(axis=0)
        dm = float(np.abs(d).max()) or 1.0
        axes[0, 0].text(0.5, 0.5, f"label {ex.label}", ha="center", va="center", fontsize=8)
        axes[1, 0].imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        axes[2, 0].imshow(img_adv, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        axes[3, 0].imshow(d, cmap=F.DIVERGING_CMAP, vmin=-dm, vmax=dm, interpolation="nearest")
        for r, label in enumerate(("filter", "clean", "adversarial", "difference")):
            axes[r, 0].set_ylabel(label, fontsize=8)
        axes[0, 0].set_title("input", fontsize=8)
        filt = _channel_images(ex.weight)
        t = float(np.abs(ex.weight).max()) or 1.0
        for j, c in enumerate(ch, start=1):
            f = filt[c]
            if f.ndim == 3:
                axes[0, j].imshow(f, interpolation="nearest")
            else:
                axes[0, j].imshow(f, cmap=F.DIVERGING_CMAP, vmin=-t, vmax=t, interpolation="nearest")
            axes[0, j].set_title(f"ch {c}", fontsize=8)
            a, b = ex.a_clean[c], ex.a_adv[c]
            v = float(max(np.abs(a).max(), np.abs(b).max())) or 1.0
            lo = 0.0 if min(a.min(), b.min()) >= 0 else -v
            cmap = ACT_CMAP if lo == 0 else F.DIVERGING_CMAP
            axes[1, j].imshow(a, cmap=cmap, vmin=lo, vmax=v, interpolation="nearest")
            axes[2, j].imshow(b, cmap=cmap, vmin=lo, vmax=v, interpolation="nearest")
            axes[3, j].imshow(b - a, cmap=F.DIVERGING_CMAP, vmin=-v, vmax=v, interpolation="nearest")
        head = f"{ex.model} ({ex.group}, {ex.activation})"
        if pm is not None and ex.model in pm.index:
            row = pm.loc[ex.model]
            head += f"\nrel. change {float(row['rel_change']):.3f}, pass ratio {float(row['pass_ratio']):.3f}"
        sub.suptitle(head, fontsize=9, color=FIRST_LAYER_COLORS.get(ex.group, "black"))
    if title:
        fig.suptitle(title, fontsize=10)
    return F.finish_figure(fig, save)


def metrics_figure(
    per_filter: pd.DataFrame,
    metrics: Sequence[str] = ("rel_change", "pass_ratio", "low_freq_share", "peak_energy_share"),
    title: str | None = None,
    save: str | PathLike | None = None,
) -> Figure:
    """One panel per metric: per model a box of its filters' (output channels') values with the
    values as dots, coloured by group; ``pass_ratio`` gets a reference line at 1."""
    metrics = [m for m in metrics if m in per_filter.columns]
    models = list(dict.fromkeys(per_filter["model"].astype(str)))
    fig = F.new_figure(max(5.0, 1.0 + 0.9 * len(models)) * min(2, len(metrics)) / 1.3, 2.6 * ((len(metrics) + 1) // 2))
    axes = fig.subplots((len(metrics) + 1) // 2, min(2, len(metrics)), squeeze=False).ravel()
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes, metrics):
        for i, model in enumerate(models):
            rows = per_filter[per_filter["model"].astype(str) == model]
            v = rows[metric].to_numpy(float)
            v = v[np.isfinite(v)]
            color = FIRST_LAYER_COLORS.get(str(rows["group"].iloc[0]), "#777777")
            if len(v):
                bp = ax.boxplot([v], positions=[i], widths=0.6, showfliers=False, patch_artist=True)
                for patch in bp["boxes"]:
                    patch.set_facecolor(color)
                    patch.set_alpha(0.35)
                ax.scatter(i + rng.uniform(-0.18, 0.18, len(v)), v, s=6, color=color, zorder=3)
        if metric == "pass_ratio":
            ax.axhline(1.0, color="#555", lw=0.8, ls="--")
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=20, ha="right", fontsize=7)
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=9)
    for ax in axes[len(metrics):]:
        ax.set_axis_off()
    fig.suptitle(title or "first-layer filters per model (one dot per output channel)", fontsize=10)
    return F.finish_figure(fig, save)


def _pick_pair(result: "FirstLayerResult") -> list[str]:
    pm = result.per_model
    names = []
    for group in ("robust", "normal"):
        rows = pm[pm["group"] == group]["model"].astype(str)
        rows = [m for m in rows if m in result.examples]
        if rows:
            names.append(rows[0])
    return names or [m for m in pm["model"].astype(str) if m in result.examples][:2]


def build_first_layer_figures(
    result: "FirstLayerResult", max_channels: int = 8, models: Sequence[str] | None = None
) -> dict[str, tuple[Figure, str]]:
    """``{id: (figure, caption)}``: the activation figure of ``models`` (default: the first robust
    and the first normal model) and the per-filter metrics of all models."""
    names = list(models) if models else _pick_pair(result)
    figs: dict[str, tuple[Figure, str]] = {}
    examples = [result.examples[m] for m in names if m in result.examples]
    if examples:
        eps = result.settings.get("eps")
        figs["first_layer_activations"] = (
            activation_figure(examples, result.per_model, max_channels),
            f"First-layer filters, clean and adversarial activations (eps {eps:g}) and their difference for "
            f"{', '.join(e.model + ' (' + e.group + ')' for e in examples)}; the channels whose activations vary most "
            "on this image. Per channel one colour scale for both activations and the difference.",
        )
    figs["first_layer_metrics"] = (
        metrics_figure(result.per_filter),
        "Per-filter (output channel) measurements of each model's first layer, coloured by group.",
    )
    return figs


def _stats_table(stats: pd.DataFrame) -> str:
    if stats is None or stats.empty:
        return '<p class="empty">(no statistics)</p>'
    ci = [interval(lo, hi) for lo, hi in zip(stats["ci_low"], stats["ci_high"])]
    table = stats.assign(ci=ci)
    cols = ["level", "metric", "n_robust", "n_normal", "mean_robust", "mean_normal", "diff", "ci", "p_value",
            "rank_biserial", "cohens_d", "note"]
    headers = {"diff": "diff (robust-normal)", "ci": "95% CI", "rank_biserial": "r (rank-biserial)",
               "cohens_d": "Cohen's d", "n_robust": "n robust", "n_normal": "n normal",
               "mean_robust": "mean robust", "mean_normal": "mean normal"}
    rows = ["significant" if np.isfinite(p) and p < 0.05 else "" for p in stats["p_value"].astype(float)]
    return html_table(table, [c for c in cols if c in table.columns], headers, rows,
                      text_columns=["level", "metric", "ci", "note"])


_INTRO = (
    "<p>Does a robust model's first layer eliminate adversarial perturbations? Per model, L-inf PGD "
    "perturbations <i>d</i> (crafted against the model itself unless a transfer source is named) and the "
    "clean images go through the first conv and its activation <i>a</i>. "
    "<b>rel_change</b>: mean over images of ||a(x+d) &minus; a(x)|| / ||a(x)|| (all channels; "
    "<b>rel_change_nonsparse</b>: without the sparse channels, which are their bias alone; "
    "<b>rel_change_pre</b>: on the conv output before the activation). "
    "<b>pass_ratio</b>: ||W&lowast;d|| against the mean of ||R&lowast;d|| over random filter banks R with the "
    "same per-kernel l2 norms (&lt; 1 suppresses the perturbation, &gt; 1 passes more than random filters). "
    "<b>low_freq_share</b>: energy-weighted share of the kernels' energy at DC of their own-size DFT "
    "(1 for a constant kernel, 1/9 for a 3x3 delta, 0 for a zero-mean kernel). "
    "<b>centre_peaked_share</b>: non-sparse kernels whose largest tap is the centre, with a centre-weighted "
    "profile and at least 1/3 of the energy at the centre; <b>single_tap_share</b>: non-sparse kernels with one "
    "tap holding &ge; 90 % of the energy (with bias and ReLU a thresholding filter); <b>peak_energy_share</b>: "
    "mean energy share of the largest tap. The paper (Gavrikov &amp; Keuper 2022) only showed a figure: robust "
    "first layers form centre-weighted, thresholding filters whose activations change less under attack.</p>"
)


def first_layer_section(
    per_model: pd.DataFrame,
    stats: pd.DataFrame | None = None,
    figures: Mapping[str, tuple[Figure, str]] | None = None,
    notes: Sequence[str] | None = None,
    settings: Mapping | None = None,
    dpi: int = 110,
) -> str:
    """The report's first-layer section (``<section id="first-layer">``) as an HTML string.

    ``per_model``: :attr:`FirstLayerResult.per_model`; ``stats``: :attr:`FirstLayerResult.stats`;
    ``figures``: ``{id: (figure, caption)}`` (e.g. :func:`build_first_layer_figures`). Every
    value is escaped; figures are embedded as PNG data URIs.
    """
    cols = [c for c in SECTION_COLUMNS if c in per_model.columns]
    parts = ['<section id="first-layer"><h2>First layer</h2>', _INTRO, "<h3>Per model</h3>",
             html_table(per_model, cols, text_columns=["model", "group", "training", "layer", "activation", "kernel",
                                                       "attack"])]
    parts += ["<h3>Robust vs normal</h3>",
              "<p>Model level: one value per model (Mann-Whitney U, percentile bootstrap CI of the difference of "
              "the means, Cohen's d). Filter level: the output channels of all models of a group pooled; "
              "descriptive, since the filters of one model are not independent. Highlighted: p &lt; 0.05 "
              "(unadjusted).</p>",
              _stats_table(stats if stats is not None else pd.DataFrame())]
    if stats is not None and len(stats):
        claims = first_layer_claims(stats)
        parts += ["<h3>The paper's first-layer claim</h3>",
                  html_table(claims, ["claim", "statement", "level", "verdict", "diff", "p_value", "detail"],
                             text_columns=["claim", "statement", "level", "verdict", "detail"])]
    if figures:
        parts += ["<h3>Figures</h3>", figures_html(figures, dpi)]
    if notes:
        parts.append("<h3>Notes</h3><ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
    if settings:
        parts.append(f"<details><summary>Settings</summary><pre>{escape(json.dumps(dict(settings), indent=2, default=str))}"
                     "</pre></details>")
    parts.append("</section>")
    return "\n".join(parts)


def first_layer_section_from_result(
    result: "FirstLayerResult",
    figures: Mapping[str, tuple[Figure, str]] | None = None,
    dpi: int = 110,
    max_channels: int = 8,
) -> str:
    """:func:`first_layer_section` of a :class:`FirstLayerResult`; figures default to
    :func:`build_first_layer_figures`."""
    figs = build_first_layer_figures(result, max_channels) if figures is None else figures
    return first_layer_section(result.per_model, result.stats, figs, result.notes, result.settings, dpi)


def render_first_layer_page(section: str, title: str = "filterlens first layer") -> str:
    """A standalone, self-contained HTML page around a first-layer section."""
    return standalone_page(title, section)


def write_first_layer_html(
    result: "FirstLayerResult",
    path: str | PathLike,
    figures: Mapping[str, tuple[Figure, str]] | None = None,
    title: str = "filterlens first layer",
    dpi: int = 110,
) -> Path:
    """Write a standalone page with the first-layer section of ``result``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, render_first_layer_page(first_layer_section_from_result(result, figures, dpi), title))
    return path


def save_first_layer(result: "FirstLayerResult", out_dir: str | PathLike, max_channels: int = 8) -> list[Path]:
    """Write everything of ``result`` into ``out_dir`` (created): the tables and JSON
    (:meth:`FirstLayerResult.save`), the figures as PNG and PDF
    (:func:`build_first_layer_figures`) and the standalone page ``first_layer.html``.
    Returns the paths written."""
    out_dir = Path(out_dir)
    paths = result.save(out_dir)
    figs = build_first_layer_figures(result, max_channels)
    for fid, (fig, _) in figs.items():
        paths += F.save_figure(fig, out_dir / fid)
    paths.append(write_first_layer_html(result, out_dir / "first_layer.html", figs))
    return paths


__all__ = [
    "activation_figure", "build_first_layer_figures", "first_layer_section", "first_layer_section_from_result",
    "metrics_figure", "render_first_layer_page", "save_first_layer", "select_channels", "write_first_layer_html",
]
