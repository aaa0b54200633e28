"""One self-contained HTML report of a comparison.

Images are embedded as base64 PNG ``data:`` URIs, the CSS is inline and nothing refers to
another file or the network, so the report can be mailed or archived as one file. Every
string that comes from the user or the data (model names, group names, selectors, notes)
is HTML-escaped.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from os import PathLike
from pathlib import Path
from string import Template
from typing import Any, Mapping

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..analysis.bins import ALL
from ..analysis.compare import ComparisonResult
from ..analysis.shift import FilterChunksFn, filter_array
from ..atomic import write_text_atomic
from ..metrics import used_layers
from . import figures as F
from . import first_layer as FL
from .markup import escape as _e
from .markup import figures_html, html_table, interval, notes_html, style_element, template

_TEMPLATE = "report.html"


def _layer_weight(row: pd.Series, filter_chunks_fn: FilterChunksFn) -> np.ndarray | None:
    chunks = [filter_array(c) for c in filter_chunks_fn(str(row["model"]), str(row["layer"]))]
    if not chunks:
        return None
    filters = np.concatenate(chunks)
    try:
        c_out = int(row["out_channels"])
        per = int(row["in_channels"]) // int(row.get("groups", 1) or 1)
    except (KeyError, TypeError, ValueError):
        return filters
    if c_out * per == len(filters):
        return filters.reshape(c_out, per, *filters.shape[1:])
    return filters


def example_filter_figures(
    result: ComparisonResult,
    layers: pd.DataFrame,
    filter_chunks_fn: FilterChunksFn,
    max_filters: int = 256,
) -> dict[str, tuple[Figure, str]]:
    """The first layer of the first model of each group: a filter grid, and RGB images when
    it takes 3 input channels. Keys are figure ids; values ``(figure, caption)``."""
    out: dict[str, tuple[Figure, str]] = {}
    for key in ("a", "b"):
        members = result.models.loc[result.models["group"] == key, "model"].tolist()
        if not members:
            continue
        model = members[0]
        rows = used_layers(layers[layers["model"].astype(str) == model])
        if rows.empty or "conv_depth" not in rows.columns:
            continue
        row = rows.sort_values("conv_depth", kind="stable").iloc[0]
        weight = _layer_weight(row, filter_chunks_fn)
        if weight is None:
            continue
        name = result.group_names[key]
        label = f"{model} / {row['layer']}"
        out[f"filters_{key}"] = (
            F.filter_grid(weight, max_filters, title=f"{name}: {label}"),
            f"Filters of the first layer of {model} ({name}); diverging colours centred at 0, "
            "one symmetric scale for the layer.",
        )
        if weight.ndim == 4 and weight.shape[1] == 3:
            out[f"rgb_{key}"] = (
                F.rgb_filters(weight, max_filters, title=f"{name}: {label} (RGB)"),
                f"First-layer filters of {model} ({name}) as RGB images, each filter min-max scaled to [0, 1].",
            )
    return out


def build_figures(
    result: ComparisonResult,
    layers: pd.DataFrame | None = None,
    filter_chunks_fn: FilterChunksFn | None = None,
) -> dict[str, tuple[Figure, str]]:
    """Every figure of the report, by id: ``(figure, caption)``.

    Metric boxplots per dataset; with a shift: bars by depth, and per dataset scope the
    shared PCA basis, the coefficient violins and the groups' cumulative explained
    variance; with ``layers`` and ``filter_chunks_fn``: example first-layer filters.
    """
    names = result.group_names
    figs: dict[str, tuple[Figure, str]] = {}
    for ds in dict.fromkeys(result.per_model["dataset"].astype(str)):
        figs[f"metrics_{ds}"] = (
            F.metric_by_depth(result.per_model, names, dataset=ds),
            f"Per-model metrics by depth bin ({ds}); boxes per group, one dot per model.",
        )
    sr = result.shift_result
    if sr is not None and len(sr.table):
        figs["shift_by_depth"] = (
            F.shift_by_depth(sr.table),
            "Weighted symmetric KL divergence between the groups' filter distributions, per depth bin.",
        )
        for (ds, bin_), basis in sr.bases.items():
            if bin_ != ALL:
                continue
            figs[f"basis_{ds}"] = (
                F.pca_basis(basis, title=f"shared PCA basis - {ds}"),
                f"Shared PCA basis of both groups' scaled non-sparse filters ({ds}), "
                "with explained variance ratios.",
            )
            figs[f"violins_{ds}"] = (
                F.coefficient_violins(sr.histograms[(ds, bin_)], names, title=f"coefficients - {ds}"),
                f"Distribution of the coefficients per basis component ({ds}); "
                f"left {names['a']}, right {names['b']}.",
            )
            figs[f"cumvar_{ds}"] = (
                F.cumulative_variance(sr.own_pca, names, ds),
                f"Cumulative explained variance of each group's own PCA ({ds}).",
            )
    if layers is not None and filter_chunks_fn is not None:
        figs.update(example_filter_figures(result, layers, filter_chunks_fn))
    return figs


def _groups_html(result: ComparisonResult) -> str:
    spec = result.settings.get("groups", {})
    parts = ["<ul>"]
    for key in ("a", "b"):
        members = result.models.loc[result.models["group"] == key, "model"].tolist()
        parts.append(
            f"<li><b>{_e(key)}: {_e(result.group_names[key])}</b> &mdash; selector <code>{_e(spec.get(key, ''))}</code>, "
            f"{len(members)} model(s): {_e(', '.join(members))}</li>"
        )
    parts.append("</ul>")
    if result.pairs is not None:
        parts.append("<h3>Pairs</h3>")
        parts.append(html_table(result.pairs, text_columns=["model_a", "model_b", "dataset", "arch", "source"]))
    return "".join(parts)


def _stats_html(stats: pd.DataFrame, names: Mapping[str, str], level: float) -> str:
    if stats.empty:
        return html_table(stats)
    table = stats.assign(ci=[interval(lo, hi) for lo, hi in zip(stats["ci_low"], stats["ci_high"])])
    cols = ["dataset", "metric", "depth_bin", "n_a", "n_b", "mean_a", "mean_b", "diff", "ci", "test",
            "p_value", "p_adj", "rank_biserial", "cohens_d", "note"]
    headers = {
        "mean_a": f"mean {names['a']}", "mean_b": f"mean {names['b']}",
        "n_a": f"n {names['a']}", "n_b": f"n {names['b']}",
        "diff": "diff (a-b)", "ci": f"{level:.0%} CI", "p_adj": "p (Holm)",
        "rank_biserial": "r (rank-biserial)", "cohens_d": "Cohen's d",
    }
    rows = ["significant" if s else "" for s in stats["significant"]]
    return html_table(table, cols, headers, rows, text_columns=["dataset", "metric", "depth_bin", "ci", "test", "note"])


def _claims_html(claims: pd.DataFrame) -> str:
    if claims.empty:
        return html_table(claims)
    out = ['<div class="scroll"><table><thead><tr>']
    for h in ("claim", "dataset", "verdict", "decided by", "statistic", "detail"):
        out.append(f'<th class="text">{_e(h)}</th>')
    out.append("</tr></thead><tbody>")
    for r in claims.itertuples():
        out.append(
            f'<tr><td class="text"><b>{_e(r.claim)}</b><br>{_e(r.statement)}</td><td class="text">{_e(r.dataset)}</td>'
            f'<td class="text verdict {_e(r.verdict)}">{_e(r.verdict)}</td><td class="text">{_e(r.decided_by)}</td>'
            f'<td class="text">{_e(r.statistic)}</td><td class="text">{_e(r.detail)}</td></tr>'
        )
    out.append("</tbody></table></div>")
    return "".join(out)


def _first_layer_html(first_layer: Any, dpi: int) -> str:
    """The first-layer section from an HTML string, a per-model DataFrame, a mapping with
    ``per_model`` (and optionally ``stats``, ``figures``, ``notes``) or a ``FirstLayerResult``."""
    if isinstance(first_layer, str):
        section = first_layer
    elif isinstance(first_layer, pd.DataFrame):
        section = FL.first_layer_section(first_layer, dpi=dpi)
    elif isinstance(first_layer, Mapping):
        if "per_model" not in first_layer:
            raise ValueError("a first-layer mapping needs the key 'per_model'")
        section = FL.first_layer_section(first_layer["per_model"], first_layer.get("stats"),
                                         first_layer.get("figures"), first_layer.get("notes"), dpi=dpi)
    elif hasattr(first_layer, "per_model") and hasattr(first_layer, "examples"):
        section = FL.first_layer_section_from_result(first_layer, dpi=dpi)
    else:
        raise TypeError(f"cannot build a first-layer section from a {type(first_layer).__name__}")
    if '<section id="first-layer"' not in section:
        section = f'<section id="first-layer"><h2>First layer</h2>\n{section}\n</section>'
    return section


def _insert_first_layer(page: str, section: str) -> str:
    """Place the first-layer section before the settings, with a link in the navigation."""
    page = page.replace('<section id="settings">', section + '\n<section id="settings">', 1)
    return page.replace('<a href="#settings">', '<a href="#first-layer">First layer</a><a href="#settings">', 1)


def render_html(
    result: ComparisonResult,
    figures: Mapping[str, tuple[Figure, str]] | None = None,
    title: str = "filterlens comparison",
    dpi: int = 110,
    first_layer: Any = None,
) -> str:
    """The report as one HTML string.

    Sections (ids): ``groups``, ``models``, ``figures``, ``statistics``, ``shift``,
    ``correlations``, ``claims``, ``settings``, ``notes``. ``figures`` defaults to
    :func:`build_figures` of ``result`` (without example filters). With ``first_layer`` (an
    HTML section string, e.g. from :func:`filterlens.report.first_layer.first_layer_section`,
    a per-model DataFrame, a mapping with ``per_model``/``stats``/``figures``/``notes``, or a
    ``FirstLayerResult``) a ``first-layer`` section is placed before ``settings``; without it
    the report is unchanged.
    """
    figs = build_figures(result) if figures is None else figures
    names = result.group_names
    shift_parts = [html_table(result.shift, text_columns=["dataset", "depth_bin", "note"])]
    if not result.shift_components.empty:
        shift_parts.append("<h3>Per component</h3>")
        shift_parts.append(html_table(result.shift_components, text_columns=["dataset", "depth_bin"]))
    model_cols = [c for c in result.models.columns if c not in ("group",)]
    models = result.models.assign(group=result.models["group"].map(names))
    values = {
        "title": _e(title),
        "subtitle": _e(
            f"{names['a']} ({(result.models['group'] == 'a').sum()} models) vs {names['b']} "
            f"({(result.models['group'] == 'b').sum()} models); generated "
            f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"
        ),
        "groups": _groups_html(result),
        "models": html_table(models, ["group", *model_cols]),
        "figures": figures_html(figs, dpi),
        "statistics": _stats_html(result.stats, names, float(result.settings.get("bootstrap", {}).get("ci", 0.95))),
        "shift": "".join(shift_parts),
        "correlations": html_table(result.correlations, text_columns=["dataset", "population", "metric", "accuracy", "note"]),
        "claims": _claims_html(result.claims),
        "settings": f"<pre>{_e(json.dumps(result.to_dict()['settings'], indent=2))}</pre>",
        "notes": notes_html(result.notes),
        "style": style_element(),
    }
    page = Template(template(_TEMPLATE)).substitute(values)
    if first_layer is not None:
        page = _insert_first_layer(page, _first_layer_html(first_layer, dpi))
    return page


def write_html(
    result: ComparisonResult,
    path: str | PathLike,
    layers: pd.DataFrame | None = None,
    filter_chunks_fn: FilterChunksFn | None = None,
    title: str = "filterlens comparison",
    dpi: int = 110,
    first_layer: Any = None,
) -> Path:
    """Build all figures (example filters too when ``layers`` and ``filter_chunks_fn`` are
    given), render the report and write it to ``path``; returns the path. ``first_layer``:
    an optional first-layer section, as for :func:`render_html`."""
    figs = build_figures(result, layers, filter_chunks_fn)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, render_html(result, figs, title, dpi, first_layer))
    return path
