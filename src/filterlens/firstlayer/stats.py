"""Robust vs normal first layers: groups, statistics and the verdicts on the paper's claim.

Pure functions of the study's tables (no torch): :func:`training_group` puts a model in a
group, :func:`first_layer_stats` compares the groups per metric at the model level (one value
per model) and at the filter level (output channels pooled, descriptive), and
:func:`first_layer_claims` judges the parts of the paper's first-layer claim.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..analysis.stats import compare_values
from ..training import ADVERSARIAL, training_label

#: Group labels.
ROBUST, NORMAL, UNKNOWN = "robust", "normal", "unknown"
#: Per-model metrics compared between the groups.
FIRST_LAYER_METRICS = (
    "rel_change", "rel_change_nonsparse", "rel_change_pre", "pass_ratio", "low_freq_share", "spectral_centroid",
    "centre_peaked_share", "single_tap_share", "peak_energy_share",
)
#: The per-filter (output channel) metrics that are also compared, pooled over the models.
FILTER_METRICS = ("rel_change", "rel_change_pre", "pass_ratio", "low_freq_share", "spectral_centroid",
                  "centre_peaked_share", "single_tap_share", "peak_energy_share")


def training_group(training: object) -> str:
    """The study's group of a model: ``"robust"`` for adversarial training, ``"normal"`` or
    ``"unknown"``, from any spelling :func:`filterlens.training.training_label` accepts
    (``robust``, ``pgd``, ``fgsm-rs``, ``trades``, ``True`` ...; ``normal``, ``standard``,
    ``clean`` ...; None, ``""``, ``unknown``). An unknown word raises
    :class:`~filterlens.training.TrainingLabelError`."""
    label = training_label(training)
    if label is None:
        return UNKNOWN
    return ROBUST if label == ADVERSARIAL else NORMAL


def first_layer_stats(
    per_model: pd.DataFrame,
    per_filter: pd.DataFrame | None = None,
    metrics: Sequence[str] = FIRST_LAYER_METRICS,
    n_boot: int = 10_000,
    ci: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Robust (a) vs normal (b) per metric: model level, and filter level when ``per_filter``.

    Parameters
    ----------
    per_model : DataFrame
        One row per model with ``model``, ``group`` and the metric columns
        (:attr:`FirstLayerResult.per_model`).
    per_filter : DataFrame, optional
        One row per model and output channel (:attr:`FirstLayerResult.per_filter`).
    metrics : sequence of str
        The metrics to compare (those missing from a table are skipped).
    n_boot, ci, seed
        The percentile bootstrap of the difference.

    Uses :func:`filterlens.analysis.stats.compare_values` (Mann-Whitney U, rank-biserial r,
    percentile bootstrap CI of the difference of the means, Cohen's d). Models of group
    ``unknown`` are left out. Columns: ``level, metric, n_robust, n_normal, mean_robust,
    mean_normal, diff, ci_low, ci_high, p_value, rank_biserial, cohens_d, note``.
    """
    rows = []
    levels = [("model", per_model, "model")]
    if per_filter is not None and len(per_filter):
        pf = per_filter.assign(_key=per_filter["model"].astype(str) + "/" + per_filter["out_channel"].astype(str))
        levels.append(("filter", pf, "_key"))
    for level, table, key in levels:
        for metric in metrics:
            if metric not in table.columns:
                continue
            values = table.set_index(key)[metric].astype(float)
            group = table.set_index(key)["group"]
            res = compare_values(values[group == ROBUST], values[group == NORMAL], False, n_boot, ci, seed)
            note = res["note"]
            if level == "filter":
                note = "; ".join(x for x in ("filters pooled over models (not independent samples)", note) if x)
            rows.append({
                "level": level, "metric": metric, "n_robust": res["n_a"], "n_normal": res["n_b"],
                "mean_robust": res["mean_a"], "mean_normal": res["mean_b"], "diff": res["diff"],
                "ci_low": res["ci_low"], "ci_high": res["ci_high"], "p_value": res["p_value"],
                "rank_biserial": res["rank_biserial"], "cohens_d": res["cohens_d"], "note": note,
            })
    return pd.DataFrame(rows, columns=["level", "metric", "n_robust", "n_normal", "mean_robust", "mean_normal",
                                       "diff", "ci_low", "ci_high", "p_value", "rank_biserial", "cohens_d", "note"])


#: The parts of the paper's first-layer claim: (id, statement, metric, expected sign of robust - normal).
CLAIM_PARTS = (
    ("activations_change_less", "Robust first-layer activations change less under attack.", "rel_change", -1),
    ("centre_weighted", "Robust first layers have more centre-peaked filters.", "centre_peaked_share", +1),
    ("thresholding", "Robust first layers have more single-tap (thresholding) filters.", "single_tap_share", +1),
)


def first_layer_claims(stats: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Verdicts on the paper's first-layer claim from :func:`first_layer_stats`.

    Parameters
    ----------
    stats : DataFrame
        The table of :func:`first_layer_stats`.
    alpha : float
        Significance level.

    Each part is decided at the model level when both groups have at least 2 models with a
    p-value, else at the filter level (filters pooled; weaker evidence, ``level`` says which):
    ``supported`` when the difference has the expected sign and ``p < alpha``,
    ``contradicted`` when it has the other sign and ``p < alpha``, else ``inconclusive``.
    """
    rows = []
    for cid, statement, metric, sign in CLAIM_PARTS:
        cells = stats[stats["metric"] == metric].set_index("level") if len(stats) else pd.DataFrame()
        cell, level = None, None
        for lv in ("model", "filter"):
            if lv in cells.index and np.isfinite(float(cells.loc[lv, "p_value"])):
                cell, level = cells.loc[lv], lv
                break
        if cell is None:
            rows.append({"claim": cid, "statement": statement, "metric": metric, "level": None,
                         "verdict": "inconclusive", "diff": float("nan"), "p_value": float("nan"),
                         "detail": "no test possible (too few models or filters per group)"})
            continue
        diff, p = float(cell["diff"]), float(cell["p_value"])
        verdict = "inconclusive" if not p < alpha else ("supported" if np.sign(diff) == sign else "contradicted")
        rows.append({"claim": cid, "statement": statement, "metric": metric, "level": level, "verdict": verdict,
                     "diff": diff, "p_value": p,
                     "detail": f"robust {float(cell['mean_robust']):.4g} vs normal {float(cell['mean_normal']):.4g}"
                     + (" (filters pooled over models)" if level == "filter" else "")})
    return pd.DataFrame(rows, columns=["claim", "statement", "metric", "level", "verdict", "diff", "p_value", "detail"])


__all__ = [
    "CLAIM_PARTS", "FILTER_METRICS", "FIRST_LAYER_METRICS", "NORMAL", "ROBUST", "UNKNOWN", "first_layer_claims",
    "first_layer_stats", "training_group",
]
