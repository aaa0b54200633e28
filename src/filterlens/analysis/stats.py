"""Group statistics on per-model metric values: differences, CIs, tests, effect sizes.

Everything takes plain arrays (or the long per-model table of
:func:`filterlens.analysis.bins.model_bin_table`) so any source of numbers works.
Small samples never raise: a quantity that cannot be computed is NaN and ``note`` says why.
"""

from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from .bins import METRICS, bin_order
from .groups import Pairs

#: The pseudo-dataset that pools all datasets when models span several.
ALL_DATASETS = "all"

_BOOT_BLOCK = 4_000_000  # index entries drawn at once; bounds bootstrap memory


def _clean(x: Iterable[float]) -> np.ndarray:
    v = np.asarray(list(x) if not isinstance(x, np.ndarray) else x, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def _percentiles(samples: np.ndarray, ci: float) -> tuple[float, float]:
    lo, hi = np.percentile(samples, [50 * (1 - ci), 50 * (1 + ci)])
    return float(lo), float(hi)


def bootstrap_diff_ci(
    a: Sequence[float],
    b: Sequence[float],
    n_boot: int = 10_000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``mean(a) - mean(b)`` for two independent samples.

    Each of ``n_boot`` replicates resamples ``a`` and ``b`` with replacement (sizes kept)
    and takes the difference of the means; the CI is the ``(1-ci)/2`` and ``(1+ci)/2``
    percentiles (linear interpolation) of the replicates. Vectorised; seeded with
    ``numpy.random.default_rng(seed)`` so the result is reproducible. NaN/inf values are
    dropped first. Either sample with fewer than 2 values: ``(nan, nan)``.
    """
    x, y = _clean(a), _clean(b)
    if len(x) < 2 or len(y) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    step = max(1, _BOOT_BLOCK // (len(x) + len(y)))
    for start in range(0, n_boot, step):
        k = min(step, n_boot - start)
        ma = x[rng.integers(0, len(x), size=(k, len(x)))].mean(axis=1)
        mb = y[rng.integers(0, len(y), size=(k, len(y)))].mean(axis=1)
        diffs[start : start + k] = ma - mb
    return _percentiles(diffs, ci)


def bootstrap_mean_ci(
    d: Sequence[float], n_boot: int = 10_000, ci: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``mean(d)`` (paired differences); ``(nan, nan)`` if ``n < 2``."""
    x = _clean(d)
    if len(x) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    step = max(1, _BOOT_BLOCK // len(x))
    for start in range(0, n_boot, step):
        k = min(step, n_boot - start)
        means[start : start + k] = x[rng.integers(0, len(x), size=(k, len(x)))].mean(axis=1)
    return _percentiles(means, ci)


def cohens_d(a: Sequence[float], b: Sequence[float]) -> float:
    """``(mean(a) - mean(b)) / s_pooled``, ``s_pooled**2 = ((na-1) va + (nb-1) vb) / (na+nb-2)``
    with sample variances (ddof 1). NaN when either group has fewer than 2 values or
    ``s_pooled == 0``."""
    x, y = _clean(a), _clean(b)
    if len(x) < 2 or len(y) < 2:
        return float("nan")
    pooled = ((len(x) - 1) * x.var(ddof=1) + (len(y) - 1) * y.var(ddof=1)) / (len(x) + len(y) - 2)
    if pooled <= 0:
        return float("nan")
    return float((x.mean() - y.mean()) / np.sqrt(pooled))


def cohens_dz(d: Sequence[float]) -> float:
    """Paired effect size ``mean(d) / sd(d)`` (ddof 1); NaN for ``n < 2`` or ``sd == 0``."""
    x = _clean(d)
    if len(x) < 2:
        return float("nan")
    sd = x.std(ddof=1)
    return float(x.mean() / sd) if sd > 0 else float("nan")


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float, str]:
    """Two-sided Mann-Whitney U test of ``a`` against ``b``.

    Returns ``(U_a, p, r, note)`` where ``U_a`` is scipy's statistic for ``a`` (pairs with
    ``a > b`` plus half the ties) and ``r = 2 U_a / (na nb) - 1`` the rank-biserial
    correlation in ``[-1, 1]`` (positive: ``a`` tends to be larger). scipy picks the exact
    distribution for small samples without ties, else the normal approximation. Fewer than
    2 values in a group: all NaN and a note. All values equal: ``p = 1``, ``r = 0``.
    """
    x, y = _clean(a), _clean(b)
    if len(x) < 2 or len(y) < 2:
        return float("nan"), float("nan"), float("nan"), f"too few models (n={len(x)}, {len(y)}; need 2 each)"
    if np.ptp(np.concatenate([x, y])) == 0:
        return len(x) * len(y) / 2, 1.0, 0.0, "all values equal"
    res = sps.mannwhitneyu(x, y, alternative="two-sided")
    u = float(res.statistic)
    return u, float(res.pvalue), 2 * u / (len(x) * len(y)) - 1, ""


def wilcoxon_signed_rank(d: Sequence[float]) -> tuple[float, float, float, str]:
    """Two-sided Wilcoxon signed-rank test of paired differences ``d = a - b``.

    Returns ``(W, p, r, note)``: scipy's statistic, its p-value and the matched-pairs
    rank-biserial correlation ``r = (R+ - R-) / (R+ + R-)`` over the non-zero differences
    ranked by ``|d|`` (average ranks for ties; positive: ``a`` tends to be larger). Zero
    differences are dropped (Wilcoxon's method). Fewer than 2 pairs: NaN and a note; all
    differences zero: ``p = 1``, ``r = 0``.
    """
    x = _clean(d)
    if len(x) < 2:
        return float("nan"), float("nan"), float("nan"), f"too few pairs (n={len(x)}; need 2)"
    nz = x[x != 0]
    if len(nz) == 0:
        return 0.0, 1.0, 0.0, "all paired differences are zero"
    ranks = sps.rankdata(np.abs(nz))
    r_plus, r_minus = ranks[nz > 0].sum(), ranks[nz < 0].sum()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = sps.wilcoxon(x, zero_method="wilcox", alternative="two-sided")
    return float(res.statistic), float(res.pvalue), float((r_plus - r_minus) / (r_plus + r_minus)), ""


def holm(p: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values; NaNs stay NaN and do not count as tests."""
    p = np.asarray(p, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if len(ok) == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def compare_values(
    a: pd.Series,
    b: pd.Series,
    paired: bool = False,
    n_boot: int = 10_000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict:
    """All statistics of one cell (one metric, one depth bin, one dataset).

    ``a``/``b`` are per-model values indexed by model name. Unpaired: ``diff = mean(a) -
    mean(b)``, bootstrap CI of it, Mann-Whitney U, rank-biserial ``r``, Cohen's ``d``.
    ``paired=True``: ``a`` and ``b`` are aligned per pair (same index), pairs with a NaN on
    either side are dropped, ``diff = mean(a - b)`` (equal to the difference of the means of
    the kept pairs), bootstrap CI of the mean difference, Wilcoxon signed-rank, matched-pairs
    rank-biserial ``r`` and Cohen's ``d_z``.
    """
    notes = []
    if paired:
        ok = a.notna().to_numpy() & b.notna().to_numpy() & np.isfinite(a.to_numpy(float)) & np.isfinite(b.to_numpy(float))
        xa, xb = a[ok].to_numpy(float), b[ok].to_numpy(float)
        d = xa - xb
        stat, p, r, note = wilcoxon_signed_rank(d)
        lo, hi = bootstrap_mean_ci(d, n_boot, ci, seed)
        effect = cohens_dz(d)
        test = "wilcoxon"
        diff = float(d.mean()) if len(d) else float("nan")
    else:
        xa, xb = _clean(a.to_numpy(float)), _clean(b.to_numpy(float))
        stat, p, r, note = mann_whitney(xa, xb)
        lo, hi = bootstrap_diff_ci(xa, xb, n_boot, ci, seed)
        effect = cohens_d(xa, xb)
        test = "mann-whitney"
        diff = float(xa.mean() - xb.mean()) if len(xa) and len(xb) else float("nan")
    if note:
        notes.append(note)
    if np.isnan(lo) and not note:
        notes.append("bootstrap needs 2 values per group")
    if np.isnan(effect) and len(xa) >= 2 and len(xb) >= 2:
        notes.append("Cohen's d undefined (zero variance)")
    return {
        "n_a": int(len(xa)),
        "n_b": int(len(xb)),
        "values_a": {str(k): float(v) for k, v in a.items() if np.isfinite(v)},
        "values_b": {str(k): float(v) for k, v in b.items() if np.isfinite(v)},
        "mean_a": float(xa.mean()) if len(xa) else float("nan"),
        "mean_b": float(xb.mean()) if len(xb) else float("nan"),
        "diff": diff,
        "ci_low": lo,
        "ci_high": hi,
        "test": test,
        "statistic": stat,
        "p_value": p,
        "rank_biserial": r,
        "cohens_d": effect,
        "note": "; ".join(notes),
    }


STATS_COLUMNS = [
    "dataset", "metric", "depth_bin", "n_a", "n_b", "mean_a", "mean_b", "diff", "ci_low",
    "ci_high", "test", "statistic", "p_value", "p_adj", "significant", "rank_biserial",
    "cohens_d", "values_a", "values_b", "note",
]


def dataset_scopes(datasets: Iterable) -> list[str]:
    """The datasets to report: each distinct one (sorted), plus ``"all"`` when several."""
    names = sorted({str(d) for d in datasets})
    return names + [ALL_DATASETS] if len(names) > 1 else names


def group_stats(
    per_model: pd.DataFrame,
    metrics: Sequence[str] = METRICS,
    pairs: Pairs | None = None,
    n_boot: int = 10_000,
    ci: float = 0.95,
    seed: int = 0,
    alpha: float = 0.05,
    adjust: str = "holm",
) -> pd.DataFrame:
    """Statistics table: one row per (dataset, metric, depth bin).

    ``per_model`` is the long table of :func:`~filterlens.analysis.bins.model_bin_table` with
    columns ``group`` (``"a"``/``"b"``) and ``dataset`` added. Without ``pairs`` the groups are
    compared as independent samples; with ``pairs`` each pair ``(model_a, model_b)`` is one
    observation (the pair's dataset is ``model_a``'s). When models span several datasets a
    pooled ``dataset == "all"`` is added. ``p_adj``: Holm-adjusted within each
    (dataset, metric) over its depth bins (``adjust="none"``: equal to ``p_value``);
    ``significant = p_adj < alpha``. Every cell uses the same bootstrap ``seed``.
    """
    rows = []
    datasets = dataset_scopes(per_model["dataset"].dropna())
    for ds in datasets:
        scope = per_model if ds == ALL_DATASETS else per_model[per_model["dataset"].astype(str) == ds]
        for metric in metrics:
            family = []
            for bin_ in bin_order(scope["depth_bin"]):
                cell = scope[scope["depth_bin"] == bin_]
                values = cell.set_index("model")[metric].astype(float)
                if pairs is not None:
                    pt = pairs.table
                    if ds != ALL_DATASETS:
                        pt = pt[pt["dataset"].astype(str) == ds]
                    a = values.reindex(pt["model_a"]).rename(None)
                    b = values.reindex(pt["model_b"]).rename(None)
                    a.index = b.index = [f"{x} / {y}" for x, y in zip(pt["model_a"], pt["model_b"])]
                    res = compare_values(a, b, True, n_boot, ci, seed)
                    res["values_a"] = dict(zip(pt["model_a"], a.to_numpy(float)))
                    res["values_b"] = dict(zip(pt["model_b"], b.to_numpy(float)))
                    res["values_a"] = {k: v for k, v in res["values_a"].items() if np.isfinite(v)}
                    res["values_b"] = {k: v for k, v in res["values_b"].items() if np.isfinite(v)}
                else:
                    groups = cell.set_index("model")["group"]
                    a = values[groups == "a"]
                    b = values[groups == "b"]
                    res = compare_values(a, b, False, n_boot, ci, seed)
                family.append({"dataset": ds, "metric": metric, "depth_bin": bin_, **res})
            p = [r["p_value"] for r in family]
            adj = holm(p) if adjust == "holm" else np.asarray(p, dtype=float)
            for r, pa in zip(family, adj):
                r["p_adj"] = float(pa)
                r["significant"] = bool(np.isfinite(pa) and pa < alpha)
            rows.extend(family)
    return pd.DataFrame(rows, columns=STATS_COLUMNS)


CORR_COLUMNS = ["dataset", "population", "metric", "accuracy", "n", "rho", "p_value", "note"]


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, int, str]:
    """Spearman's rho and its two-sided p over the pairs where both values are finite.

    Returns ``(rho, p, n, note)``; fewer than 3 pairs or a constant side: NaN with a note.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(len(x))
    if n < 3:
        return float("nan"), float("nan"), n, f"too few models with both values (n={n}; need 3)"
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan"), n, "a constant variable"
    res = sps.spearmanr(x, y)
    return float(res.statistic), float(res.pvalue), n, ""


def accuracy_correlations(
    per_model_all: pd.DataFrame,
    models: pd.DataFrame,
    group_names: dict[str, str],
    metrics: Sequence[str] = METRICS,
    accuracies: Sequence[str] = ("robust_acc", "clean_acc"),
) -> pd.DataFrame:
    """Spearman correlation of each model's pooled metric with its accuracies.

    ``per_model_all``: one row per model (columns ``model, group, dataset`` and the metrics),
    e.g. the ``depth_bin == "all"`` rows of the per-model table. Computed per dataset (plus
    ``"all"`` when several) and per population: each group alone (named by
    ``group_names``) and both together. Only models whose accuracy is known count; an
    accuracy column missing from ``models`` is skipped.
    """
    acc_cols = [c for c in accuracies if c in models.columns]
    table = per_model_all.merge(
        models[["model", *acc_cols]].assign(model=models["model"].astype(str)), on="model", how="left"
    )
    rows = []
    for ds in dataset_scopes(table["dataset"].dropna()):
        scope = table if ds == ALL_DATASETS else table[table["dataset"].astype(str) == ds]
        populations = [(group_names[g], scope[scope["group"] == g]) for g in ("a", "b")] + [("both", scope)]
        for pop, sub in populations:
            for metric in metrics:
                for acc in acc_cols:
                    rho, p, n, note = spearman(sub[metric], pd.to_numeric(sub[acc], errors="coerce"))
                    rows.append({"dataset": ds, "population": pop, "metric": metric, "accuracy": acc,
                                 "n": n, "rho": rho, "p_value": p, "note": note})
    return pd.DataFrame(rows, columns=CORR_COLUMNS)
