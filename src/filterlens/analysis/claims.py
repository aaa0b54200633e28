"""The paper's findings (docs/definitions.md, "The paper's claims"), each judged on the data.

Group ``a`` plays the paper's robust models, group ``b`` the normal ones. Every claim gets
one verdict per dataset scope: ``supported``, ``contradicted`` or ``inconclusive``, with
the statistic that decided it.

Decision rules (``alpha`` default 0.05):

- a claim about one cell (one metric in one depth bin) is decided by that cell's
  unadjusted p-value (the claim is a hypothesis fixed in advance): ``p < alpha`` and the
  difference ``mean_a - mean_b`` in the claimed direction -> supported; ``p < alpha`` the
  other way -> contradicted; otherwise inconclusive;
- "in almost every depth bin" uses the Holm-adjusted p-values over the bins: supported
  when at least ``majority`` (0.7) of the tested bins differ significantly in the claimed
  direction; contradicted when more bins differ significantly the other way than the
  claimed way; otherwise inconclusive;
- claims about the distribution shift are descriptive (the divergence has no test here):
  "largest in the last deciles and the first layer" is supported when the bin with the
  largest divergence is the first layer or one of the last two deciles and each of those
  present exceeds the median of the middle bins, contradicted when the largest is a middle
  bin; the dataset ordering is supported when the divergences of CIFAR-10 > CIFAR-100 >
  ImageNet (those present, at least two) are in that order, contradicted otherwise;
- correlations: Spearman rho among group-``a`` models with ``p < alpha`` in the claimed
  direction -> supported, the other direction -> contradicted, else inconclusive.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .bins import ALL, DECILES, FIRST
from .stats import ALL_DATASETS

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"

CLAIM_COLUMNS = ["claim", "statement", "dataset", "verdict", "decided_by", "statistic", "value", "p_value", "detail"]

CLAIMS: dict[str, str] = {
    "fewer_sparse_filters": "Robust models have fewer sparse filters overall (paper: ~9% vs ~39%).",
    "more_diverse": "Robust filters are more diverse: higher variance entropy overall.",
    "more_diverse_deepest": "The higher diversity is clearest in the deepest layers.",
    "more_orthogonal": "Robust output channels are more orthogonal in almost every depth bin.",
    "shift_last_and_first": "The distribution shift is largest in the last deciles and in the first layer.",
    "shift_by_dataset": "The shift is largest for CIFAR-10, smaller for CIFAR-100, small for ImageNet.",
    "first_layer_less_diverse": "Robust first layers are less diverse (lower variance entropy).",
    "first_layer_sparser": "Robust first layers are often sparser.",
    "first_layer_thresholding": "Robust first layers form centre-weighted thresholding filters "
    "whose activations change less under attack.",
    "robust_acc_vs_entropy": "Among robust models, robust accuracy correlates positively with variance entropy.",
    "robust_acc_vs_sparsity": "Among robust models, robust accuracy correlates negatively with sparsity.",
}

_LAST = set(DECILES[-2:])


def _fmt(x: Any) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def _row(claim: str, dataset: str, verdict: str, decided_by: str, statistic: str, value=np.nan, p=np.nan, detail="") -> dict:
    return {
        "claim": claim,
        "statement": CLAIMS[claim],
        "dataset": dataset,
        "verdict": verdict,
        "decided_by": decided_by,
        "statistic": statistic,
        "value": float(value) if value is not None else np.nan,
        "p_value": float(p) if p is not None else np.nan,
        "detail": detail,
    }


def _cell(stats: pd.DataFrame, dataset: str, metric: str, bin_: str) -> pd.Series | None:
    hit = stats[(stats["dataset"] == dataset) & (stats["metric"] == metric) & (stats["depth_bin"] == bin_)]
    return None if hit.empty else hit.iloc[0]


def _cell_text(c: pd.Series) -> str:
    return (
        f"mean_a={_fmt(c['mean_a'])}, mean_b={_fmt(c['mean_b'])}, diff={_fmt(c['diff'])} "
        f"[{_fmt(c['ci_low'])}, {_fmt(c['ci_high'])}], p={_fmt(c['p_value'])} ({c['test']}), "
        f"n={c['n_a']}/{c['n_b']}"
    )


def _directional(claim: str, dataset: str, cell: pd.Series | None, sign: int, alpha: float, where: str) -> dict:
    decided = f"{where}: difference of means, {'' if cell is None else cell['test']} p-value"
    if cell is None:
        return _row(claim, dataset, INCONCLUSIVE, decided, "", detail=f"no data for {where}")
    p, diff = cell["p_value"], cell["diff"]
    text = _cell_text(cell)
    if not np.isfinite(p):
        return _row(claim, dataset, INCONCLUSIVE, decided, text, diff, p, cell["note"] or "no p-value")
    if p < alpha and np.sign(diff) == sign:
        return _row(claim, dataset, SUPPORTED, decided, text, diff, p)
    if p < alpha and np.sign(diff) == -sign:
        return _row(claim, dataset, CONTRADICTED, decided, text, diff, p)
    return _row(claim, dataset, INCONCLUSIVE, decided, text, diff, p, f"not significant at alpha={alpha}")


def _majority_bins(stats: pd.DataFrame, dataset: str, metric: str, sign: int, majority: float) -> dict:
    claim = "more_orthogonal"
    cells = stats[(stats["dataset"] == dataset) & (stats["metric"] == metric) & (stats["depth_bin"] != ALL)]
    tested = cells[np.isfinite(cells["p_adj"].astype(float))]
    n = len(tested)
    sig = tested[tested["significant"].astype(bool)]
    n_pos = int((np.sign(sig["diff"]) == sign).sum())
    n_neg = int((np.sign(sig["diff"]) == -sign).sum())
    text = f"{n_pos} of {n} tested bins significantly in the claimed direction, {n_neg} the other way (Holm)"
    decided = "per-bin differences, Holm-adjusted p-values"
    if n == 0:
        return _row(claim, dataset, INCONCLUSIVE, decided, text, detail="no bin could be tested")
    frac = n_pos / n
    if frac >= majority:
        return _row(claim, dataset, SUPPORTED, decided, text, frac)
    if n_neg > n_pos:
        return _row(claim, dataset, CONTRADICTED, decided, text, frac)
    return _row(claim, dataset, INCONCLUSIVE, decided, text, frac, detail=f"needs >= {majority:.0%} of bins")


def _deepest(stats: pd.DataFrame, dataset: str, metric: str) -> str | None:
    cells = stats[(stats["dataset"] == dataset) & (stats["metric"] == metric) & stats["depth_bin"].isin(DECILES)]
    cells = cells[np.isfinite(cells["p_value"].astype(float))]
    if cells.empty:
        return None
    return max(cells["depth_bin"], key=DECILES.index)


def _shift_by_depth(shift: pd.DataFrame, dataset: str) -> dict:
    claim = "shift_last_and_first"
    sub = shift[(shift["dataset"] == dataset) & (shift["depth_bin"] != ALL)]
    # The histogram KL grows as filters get few (the first layer has the fewest), so bins are
    # compared by their excess over the label-shuffled null when it is known.
    column = "excess" if "excess" in sub and np.isfinite(sub["excess"].astype(float)).any() else "divergence"
    decided = ("descriptive: weighted symmetric KL by depth bin, minus the label-shuffled null (no test)"
               if column == "excess" else "descriptive: weighted symmetric KL by depth bin (no test)")
    div = {b: float(v) for b, v in zip(sub["depth_bin"], sub[column]) if np.isfinite(v)}
    edge = {b: v for b, v in div.items() if b == FIRST or b in _LAST}
    middle = {b: v for b, v in div.items() if b not in edge}
    if not edge or not middle:
        return _row(claim, dataset, INCONCLUSIVE, decided, "", detail="needs the first/last bins and middle bins")
    top = max(div, key=div.get)
    med = float(np.median(list(middle.values())))
    first = edge.get(FIRST)
    last = max((v for b, v in edge.items() if b in _LAST), default=None)
    text = (
        f"largest: {top} ({_fmt(div[top])}); first: {_fmt(first)}; last deciles max: {_fmt(last)}; "
        f"middle bins median: {_fmt(med)}"
    )
    if top in middle:
        return _row(claim, dataset, CONTRADICTED, decided, text, div[top])
    if all(v > med for v in (first, last) if v is not None):
        return _row(claim, dataset, SUPPORTED, decided, text, div[top])
    return _row(claim, dataset, INCONCLUSIVE, decided, text, div[top], detail="not all edge bins exceed the middle")


def canonical_dataset(name: str) -> str:
    """``"CIFAR-10"``, ``"cifar_10"`` -> ``"cifar10"``; ``"ImageNet-1k"`` -> ``"imagenet"``."""
    s = "".join(ch for ch in str(name).lower() if ch.isalnum())
    return "imagenet" if s.startswith("imagenet") else s


def _shift_by_dataset(shift: pd.DataFrame) -> dict:
    claim = "shift_by_dataset"
    decided = "descriptive: whole-group weighted symmetric KL per dataset (no test)"
    whole = shift[(shift["depth_bin"] == ALL) & (shift["dataset"] != ALL_DATASETS)]
    found = {}
    for ds, v in zip(whole["dataset"], whole["divergence"]):
        key = canonical_dataset(ds)
        if key in ("cifar10", "cifar100", "imagenet") and np.isfinite(v):
            found[key] = (str(ds), float(v))
    order = [k for k in ("cifar10", "cifar100", "imagenet") if k in found]
    text = "; ".join(f"{found[k][0]}: {_fmt(found[k][1])}" for k in order)
    if len(order) < 2:
        detail = "needs at least two of CIFAR-10, CIFAR-100, ImageNet"
        return _row(claim, ALL_DATASETS, INCONCLUSIVE, decided, text, detail=detail)
    vals = [found[k][1] for k in order]
    ok = all(x > y for x, y in zip(vals, vals[1:]))
    return _row(claim, ALL_DATASETS, SUPPORTED if ok else CONTRADICTED, decided, text)


def _correlation(corr: pd.DataFrame, claim: str, dataset: str, population: str, metric: str, sign: int, alpha: float) -> dict:
    decided = f"Spearman rho of robust_acc and {metric} among {population} models"
    hit = corr[
        (corr["dataset"] == dataset)
        & (corr["population"] == population)
        & (corr["metric"] == metric)
        & (corr["accuracy"] == "robust_acc")
    ]
    if hit.empty:
        return _row(claim, dataset, INCONCLUSIVE, decided, "", detail="no robust accuracies")
    c = hit.iloc[0]
    text = f"rho={_fmt(c['rho'])}, p={_fmt(c['p_value'])}, n={c['n']}"
    if not np.isfinite(c["p_value"]):
        return _row(claim, dataset, INCONCLUSIVE, decided, text, c["rho"], c["p_value"], c["note"])
    if c["p_value"] < alpha:
        verdict = SUPPORTED if np.sign(c["rho"]) == sign else CONTRADICTED
        return _row(claim, dataset, verdict, decided, text, c["rho"], c["p_value"])
    return _row(claim, dataset, INCONCLUSIVE, decided, text, c["rho"], c["p_value"], f"not significant at alpha={alpha}")


def evaluate_claims(
    stats: pd.DataFrame,
    shift: pd.DataFrame | None,
    correlations: pd.DataFrame,
    group_names: dict[str, str],
    alpha: float = 0.05,
    majority: float = 0.7,
) -> pd.DataFrame:
    """One row per (claim, dataset scope) with the verdict and the deciding statistic.

    ``stats`` from :func:`~filterlens.analysis.stats.group_stats`, ``shift`` the table of
    :func:`~filterlens.analysis.shift.distribution_shift` (or ``None``), ``correlations``
    from :func:`~filterlens.analysis.stats.accuracy_correlations`. The rules are in the
    module docstring.
    """
    rows = []
    datasets = list(dict.fromkeys(stats["dataset"]))
    no_shift = "no filters to compute the shift from"
    a_name = group_names["a"]
    for ds in datasets:
        entropy = "variance_entropy"
        deep = _deepest(stats, ds, entropy)
        deep_cell = None if deep is None else _cell(stats, ds, entropy, deep)
        rows += [
            _directional("fewer_sparse_filters", ds, _cell(stats, ds, "sparsity", ALL), -1, alpha, "all layers"),
            _directional("more_diverse", ds, _cell(stats, ds, entropy, ALL), +1, alpha, "all layers"),
            _directional("more_diverse_deepest", ds, deep_cell, +1, alpha,
                         "no testable decile" if deep is None else f"deepest tested bin {deep}"),
            _majority_bins(stats, ds, "orthogonality", +1, majority),
            _shift_by_depth(shift, ds)
            if shift is not None
            else _row("shift_last_and_first", ds, INCONCLUSIVE, "not computed", "", detail=no_shift),
            _directional("first_layer_less_diverse", ds, _cell(stats, ds, entropy, FIRST), -1, alpha, "first layer"),
            _directional("first_layer_sparser", ds, _cell(stats, ds, "sparsity", FIRST), +1, alpha, "first layer"),
            _row(
                "first_layer_thresholding", ds, INCONCLUSIVE, "not measured", "",
                detail="the paper showed this with a figure only; filterlens measures filters, "
                "not activations (see the first-layer figures)",
            ),
            _correlation(correlations, "robust_acc_vs_entropy", ds, a_name, entropy, +1, alpha),
            _correlation(correlations, "robust_acc_vs_sparsity", ds, a_name, "sparsity", -1, alpha),
        ]
    if shift is not None:
        rows.append(_shift_by_dataset(shift))
    else:
        rows.append(_row("shift_by_dataset", ALL_DATASETS, INCONCLUSIVE, "not computed", "", detail=no_shift))
    table = pd.DataFrame(rows, columns=CLAIM_COLUMNS)
    order = {c: i for i, c in enumerate(CLAIMS)}
    return table.sort_values("claim", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)


def with_first_layer(claims: pd.DataFrame, first_layer_claims: pd.DataFrame, dataset: str | None) -> pd.DataFrame:
    """Replace the unmeasured ``first_layer_thresholding`` row(s) with the verdicts of a
    first-layer study (:func:`filterlens.firstlayer.first_layer_claims`), one row per
    part of the claim."""
    if first_layer_claims is None or first_layer_claims.empty:
        return claims
    keep = claims[~((claims["claim"] == "first_layer_thresholding")
                    & ((dataset is None) | (claims["dataset"] == dataset)))]
    rows = [
        {
            "claim": f"first_layer_thresholding/{r['claim']}",
            "statement": r["statement"],
            "dataset": dataset or "all",
            "verdict": r["verdict"],
            "decided_by": f"first-layer study, {r['level'] or 'no'}-level Mann-Whitney test",
            "statistic": r["detail"],
            "value": r["diff"],
            "p_value": r["p_value"],
            "detail": r["detail"],
        }
        for _, r in first_layer_claims.iterrows()
    ]
    return pd.concat([keep, pd.DataFrame(rows)], ignore_index=True)[claims.columns]
