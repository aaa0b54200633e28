"""The HTML report of ``filterlens reproduce``: computed beside published, and the paper's figures.

One self-contained file (PNG figures as data URIs, inline CSS), every data string escaped. The
figures are the paper's, redrawn from the replay: per dataset the boxplots by depth of the
three metrics over the pair lists, the KL by depth per dataset, and the PCA bases (all pair
models, robust, normal).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from os import PathLike
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from ..atomic import write_text_atomic
from ..reproduce.core import ReproduceResult
from ..reproduce.published import PRECISION
from . import figures as F
from .markup import escape as _e
from .markup import figures_html, html_table, notes_html, style_element

NAMES = {"a": "robust", "b": "normal"}


def build_figures(result: ReproduceResult) -> dict[str, tuple[Figure, str]]:
    """``{id: (figure, caption)}`` of the report."""
    figs: dict[str, tuple[Figure, str]] = {}
    pm = result.per_model
    if len(pm):
        wide = pm.pivot_table(index=["dataset", "group", "entry", "model", "depth_bin"], columns="metric",
                              values="value", aggfunc="first").reset_index()
        wide["group"] = wide["group"].map({"robust": "a", "normal": "b"})
        wide["model"] = wide["model"] + "#" + wide["entry"].astype(str)  # a pair list entry per dot
        for ds in dict.fromkeys(wide["dataset"]):
            figs[f"metrics_{ds}"] = (
                F.metric_by_depth(wide, NAMES, dataset=ds, title=f"{ds}: metrics by depth over the pair lists"),
                f"{ds}: sparsity, variance entropy and orthogonality per depth bin; one value per pair-list "
                "entry (a normal model serving k pairs stands k times), as in the paper's boxplots.",
            )
    rows = [{"dataset": ds, "depth_bin": b, "divergence": v if v is not None else float("nan")}
            for ds, bins in result.numbers["kl_by_depth"].items() for b, v in bins.items()]
    if rows:
        figs["kl_by_depth"] = (F.shift_by_depth(pd.DataFrame(rows), title="weighted symmetric KL by depth"),
                               "Weighted symmetric KL divergence between the robust and normal pair lists per depth "
                               "bin (the paper's divergence_by_depth figure); empty where a bin has no filters.")
    for key, label in (("full", "all pair models"), ("robust", "robust models"), ("normal", "normal models")):
        if key in result.bases:
            figs[f"basis_{key}"] = (F.pca_basis(result.bases[key], title=f"PCA basis - {label}"),
                                    f"PCA basis of the scaled non-sparse filters of the {label} (each model once), "
                                    "with explained variance ratios (the paper's pca_basis figures).")
    return figs


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "\u2013"
    if isinstance(v, bool) or isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def comparison_table(result: ReproduceResult) -> pd.DataFrame:
    """The computed-vs-published rows with text cells (6 significant digits)."""
    cmp = result.comparison()
    out = pd.DataFrame({
        "number": cmp["key"],
        "computed": [_fmt(v) for v in cmp["computed"]],
        "published": [_fmt(v) for v in cmp["published"]],
        "difference": [_fmt(v) for v in cmp["diff"]],
        "source": ["paper's figure (+-0.001)" if k.startswith("kl_by_depth") else "paper's repository outputs"
                   for k in cmp["key"]],
    })
    return out


def render_html(result: ReproduceResult, figures: dict | None = None, dpi: int = 110,
                title: str = "filterlens reproduce") -> str:
    """The report as one HTML string (sections ``published``, ``figures``, ``quirks``, ``numbers``,
    ``settings``)."""
    figs = build_figures(result) if figures is None else figures
    cmp = comparison_table(result)
    quirks = pd.DataFrame([{"quirk": q["name"], "what": q["detail"],
                            "models": ", ".join(q["models"]) if isinstance(q["models"], list)
                            else ", ".join(f"{k} x{v}" for k, v in q["models"].items())} for q in result.quirks])
    flat = result.to_dict()
    per_model = pd.DataFrame([{"model": k, "pca_entropy": v} for k, v in result.numbers["pca_entropy_per_model"].items()])
    s = result.settings
    parts = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>{_e(title)}</title>{style_element()}</head><body><main>",
        f"<h1>{_e(title)}</h1>",
        f"<p class=\"meta\">{_e(s.get('file'))}: {s.get('models_in_file')} models, {s.get('filters')} filters, "
        f"{s.get('pairs')} pairs; generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}</p>",
        "<section id=\"published\"><h2>Computed beside published</h2>",
        "<p>The published values are the paper's (science.md, \"The published numbers\"); the KL by depth was "
        f"{_e(PRECISION['kl_by_depth'])}. On a file other than the paper's, differences are expected.</p>",
        html_table(cmp, text_columns=list(cmp.columns)),
        "</section><section id=\"figures\"><h2>The paper's figures, redrawn</h2>",
        figures_html(figs, dpi),
        "</section><section id=\"quirks\"><h2>Quirks of the paper's notebooks followed</h2>",
        html_table(quirks, text_columns=list(quirks.columns)),
        "</section><section id=\"numbers\"><h2>Per-model PCA spectrum entropy</h2>",
        html_table(per_model, text_columns=["model"]),
        "<h3>All numbers (JSON)</h3>",
        f"<pre>{_e(json.dumps({k: flat[k] for k in result.numbers}, indent=2))}</pre>",
        "</section><section id=\"settings\"><h2>Settings</h2>",
        f"<pre>{_e(json.dumps(flat['settings'], indent=2))}</pre>",
        "</section><section id=\"notes\"><h2>Notes</h2>", notes_html(result.notes), "</section>",
        "</main></body></html>",
    ]
    return "\n".join(parts)


def write_report(result: ReproduceResult, path: str | PathLike, dpi: int = 110) -> Path:
    """Render the report and write it to ``path`` atomically; returns the path."""
    import matplotlib.pyplot as plt

    figs = build_figures(result)
    try:
        page = render_html(result, figs, dpi)
    finally:
        for fig, _ in figs.values():
            plt.close(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, page)
    return path
