"""Compare two groups of models end to end: bins, statistics, shift, correlations, claims."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from os import PathLike
from typing import Any, Iterable, Literal

import numpy as np
import pandas as pd

from ..atomic import write_text_atomic
from ..errors import FilterlensError
from ..jsonable import to_jsonable
from .bins import ALL, assign_bins, model_bin_table, select_layers
from .claims import evaluate_claims
from .groups import GroupSpec, Pairs, load_pairs, match_pairs, split_groups
from .settings import CompareSettings
from .shift import FilterChunksFn, ShiftResult, distribution_shift
from .stats import accuracy_correlations, group_stats

@dataclass
class ComparisonResult:
    """The outcome of :func:`compare`.

    - ``group_names``: ``{"a": ..., "b": ...}``;
    - ``models``: the compared models (the input rows) with ``group`` (``a``/``b``) and
      ``dataset``;
    - ``per_model``: per model and depth bin (incl. ``"all"``) the pooled metrics;
    - ``stats``: per dataset, metric and depth bin both groups' per-model values, means,
      difference, bootstrap CI, test, p (raw and Holm-adjusted), effect sizes;
    - ``shift``/``shift_components``/``own_pca``: the distribution shift (empty when not
      computed); ``shift_result`` keeps the bases and histograms for figures;
    - ``pca_entropy``: the paper's PCA spectrum entropy per model, per group and pooled
      (computed with the paper's shift; empty otherwise);
    - ``correlations``: Spearman of pooled metrics with accuracies;
    - ``claims``: the paper's findings with verdicts;
    - ``pairs``: the pairs used (or ``None``); ``settings``; ``notes``.
    """

    group_names: dict[str, str]
    models: pd.DataFrame
    per_model: pd.DataFrame
    stats: pd.DataFrame
    shift: pd.DataFrame
    shift_components: pd.DataFrame
    own_pca: pd.DataFrame
    correlations: pd.DataFrame
    claims: pd.DataFrame
    settings: dict
    pairs: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)
    shift_result: ShiftResult | None = None
    pca_entropy: pd.DataFrame = field(default_factory=pd.DataFrame)

    def to_dict(self) -> dict:
        """JSON-ready dict: settings, groups, per-cell statistics, shift, correlations, claims.

        Each ``stats`` entry holds the dataset, metric and depth bin, both groups' per-model
        values and means, the difference, its CI (``[low, high]``), the test and p-values.
        NaN becomes ``null``.
        """
        stats = []
        for r in self.stats.to_dict("records"):
            stats.append(
                {
                    "dataset": r["dataset"],
                    "metric": r["metric"],
                    "depth_bin": r["depth_bin"],
                    "n_a": r["n_a"],
                    "n_b": r["n_b"],
                    "values_a": r["values_a"],
                    "values_b": r["values_b"],
                    "mean_a": r["mean_a"],
                    "mean_b": r["mean_b"],
                    "diff": r["diff"],
                    "ci": [r["ci_low"], r["ci_high"]],
                    "test": r["test"],
                    "p_value": r["p_value"],
                    "p_adj": r["p_adj"],
                    "significant": r["significant"],
                    "rank_biserial": r["rank_biserial"],
                    "cohens_d": r["cohens_d"],
                    "note": r["note"],
                }
            )
        members = self.models.groupby("group")["model"].agg(list).to_dict()
        out = {
            "groups": {
                k: {"name": self.group_names[k], "models": members.get(k, [])} for k in ("a", "b")
            },
            "settings": self.settings,
            "stats": stats,
            "shift": self.shift.to_dict("records"),
            "pca_entropy": self.pca_entropy.to_dict("records"),
            "correlations": self.correlations.to_dict("records"),
            "claims": self.claims.to_dict("records"),
            "pairs": None if self.pairs is None else self.pairs.to_dict("records"),
            "notes": self.notes,
        }
        return to_jsonable(out)

    def to_json(self, path: str | PathLike | None = None, indent: int = 2) -> str:
        """:meth:`to_dict` as JSON text (strict JSON: NaN is ``null``); written to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False)
        if path is not None:
            write_text_atomic(path, text + "\n")
        return text


def chunks_from(source: Any, chunk_size: int = 65536) -> FilterChunksFn:
    """Adapt anything with ``iter_filters(model=, layer=, chunk_size=)`` (e.g. ``FilterDB``).

    Its chunks may be arrays or objects with a ``filters`` array (``FilterChunk``)."""

    def fn(model: str, layer: str) -> Iterable[np.ndarray]:
        return source.iter_filters(model=model, layer=layer, chunk_size=chunk_size)

    return fn


def require_models(db: Any) -> pd.DataFrame:
    """The models table of a database to compare; one :class:`FilterlensError` line if empty."""
    models = db.models()
    if models.empty:
        raise FilterlensError(f"{getattr(db, 'path', db)}: the database holds no models; "
                              "add some with 'filterlens extract'")
    return models


def compare_db(db: Any, groups: GroupSpec | None = None,
               pairs: str | PathLike | pd.DataFrame | Pairs | Literal["auto"] | None = None,
               **kwargs: Any) -> ComparisonResult:
    """:func:`compare` over a filter database (e.g. :class:`~filterlens.db.FilterDB`): its models
    and layers tables, its filters streamed for the shift. ``kwargs`` as for :func:`compare`."""
    models = require_models(db)
    return compare(models, db.layers(), chunks_from(db), groups=groups, pairs=pairs, **kwargs)


#: Columns :func:`compare` needs in the layers table (plus ``layer`` for the shift).
LAYER_COLUMNS = (
    "model", "conv_depth_norm", "n_filters", "n_sparse", "n_nonsparse", "sparsity",
    "variance_entropy", "orthogonality", "out_channels",
)


def compare(
    models: pd.DataFrame,
    layers: pd.DataFrame,
    filter_chunks_fn: FilterChunksFn | None = None,
    groups: GroupSpec | None = None,
    pairs: str | PathLike | pd.DataFrame | Pairs | Literal["auto"] | None = None,
    settings: CompareSettings | None = None,
    **overrides: Any,
) -> ComparisonResult:
    """Compare group ``a`` with group ``b`` (default: adversarially vs normally trained).

    Only ``settings.kernel_size`` layers (3x3, the paper's) that are not transposed are used
    unless told otherwise. With pairs the statistics are paired (Wilcoxon) and only paired
    models are compared. The shift follows the paper's procedure unless
    ``shift_procedure="per_bin"``. See :mod:`~filterlens.analysis.stats`,
    :mod:`~filterlens.analysis.shift` and :mod:`~filterlens.analysis.claims` for the definitions.

    Parameters
    ----------
    models : DataFrame
        One row per model (``model``; optional ``dataset, arch, training, eps, clean_acc,
        robust_acc``).
    layers : DataFrame
        One row per layer (``model, layer, conv_depth, conv_depth_norm, kernel_size, n_filters,
        n_sparse, n_nonsparse, sparsity, variance_entropy, orthogonality, out_channels``,
        optionally ``transposed`` and ``weight_max_abs``).
    filter_chunks_fn : callable, optional
        ``filter_chunks_fn(model, layer)`` yields the layer's filters as ``(n, kh, kw)`` chunks
        (see :func:`chunks_from`); without it the distribution shift is skipped.
    groups : GroupSpec, optional
        The two groups (default: ``training`` adversarial vs normal).
    pairs : None, "auto", path, DataFrame or Pairs
        ``None``: independent groups; ``"auto"``: matched on arch and dataset; a CSV path, a
        DataFrame or :class:`Pairs` of matched models.
    settings : CompareSettings, optional
        Selection, statistics and shift settings (default: ``CompareSettings()``).
    **overrides
        Fields of :class:`CompareSettings` that replace those of ``settings``, e.g.
        ``n_boot=2000`` or ``shift_procedure="per_bin"``.

    Returns
    -------
    ComparisonResult
    """
    s = replace(settings or CompareSettings(), **overrides) if overrides else (settings or CompareSettings())
    metrics, kernel_size, include_transposed, shift = s.metrics, s.kernel_size, s.include_transposed, s.shift
    n_boot, ci, seed, alpha, adjust, count_shared = s.n_boot, s.ci, s.seed, s.alpha, s.adjust, s.count_shared
    shift_procedure, threshold, inclusive = s.shift_procedure, s.threshold, s.inclusive
    if "model" not in models.columns:
        raise FilterlensError("the models table needs a 'model' column")
    needed = set(LAYER_COLUMNS) | ({"layer"} if shift and filter_chunks_fn is not None else set())
    lacking = sorted(needed - set(layers.columns))
    if lacking:
        raise FilterlensError(f"the layers table lacks column(s): {', '.join(lacking)}")
    models = models.assign(model=models["model"].astype(str))
    if "dataset" not in models.columns:
        models = models.assign(dataset="unknown")
    models = models.assign(dataset=models["dataset"].fillna("unknown").astype(str))
    notes: list[str] = []

    grp = split_groups(models, groups)
    pair_obj: Pairs | None = None
    pairs_source = None
    if pairs is not None:
        if isinstance(pairs, Pairs):
            pair_obj = Pairs(pairs.table.copy(), list(pairs.unmatched), list(pairs.notes))
            pairs_source = "given"
        elif isinstance(pairs, str) and pairs == "auto":
            pair_obj = match_pairs(models, grp)
            pairs_source = "auto (arch, dataset)"
        else:
            pair_obj = load_pairs(pairs, models, grp)
            pairs_source = str(pairs) if isinstance(pairs, (str, PathLike)) else "given table"
        if pair_obj.table.empty:
            raise FilterlensError("no pairs: " + "; ".join(pair_obj.describe()))
        notes.extend(pair_obj.describe())
        grp = grp.restrict(set(pair_obj.table["model_a"]) | set(pair_obj.table["model_b"]))
        pair_obj.table["dataset"] = pair_obj.table["model_a"].map(models.set_index("model")["dataset"])
    membership = grp.membership

    layers = layers.assign(model=layers["model"].astype(str))
    chosen = select_layers(layers[layers["model"].isin(membership.index)], kernel_size, include_transposed)
    chosen = assign_bins(chosen)
    unplaced = chosen[chosen["depth_bin"].isna()]
    if len(unplaced):
        notes.append(f"{len(unplaced)} layer(s) without a depth bin count only in 'all'")
    without = sorted(set(membership.index) - set(chosen["model"]))
    if without:
        notes.append(f"no {kernel_size[0]}x{kernel_size[1]} layers for: {', '.join(without)}")

    dataset_of = models.set_index("model")["dataset"]
    per_model = model_bin_table(chosen)
    per_model.insert(1, "group", per_model["model"].map(membership))
    per_model.insert(2, "dataset", per_model["model"].map(dataset_of))

    stats = group_stats(per_model, metrics, pair_obj, n_boot, ci, seed, alpha, adjust)
    pooled = per_model[per_model["depth_bin"] == ALL]
    names = {"a": grp.name_a, "b": grp.name_b}
    corr = accuracy_correlations(pooled, models, names, metrics)

    shift_res = None
    if shift and filter_chunks_fn is not None:
        weights = None
        if count_shared == "per_pair":
            if pair_obj is None:
                count_shared = "once"  # no pair lists: each model once
            else:
                weights = pair_obj.multiplicity().astype(float).to_dict()
        shift_res = distribution_shift(
            chosen,
            membership.to_dict(),
            filter_chunks_fn,
            datasets=dataset_of.to_dict(),
            model_weights=weights,
            by_bin=s.by_bin,
            kernel_size=kernel_size,
            n_bins=s.n_bins,
            range_mode=s.range_mode,
            procedure=shift_procedure,
            threshold=threshold,
            inclusive=inclusive,
        )
        notes.extend(shift_res.notes)
    elif shift:
        notes.append("distribution shift not computed: no filter source given")
    claims = evaluate_claims(stats, None if shift_res is None else shift_res.table, corr, names, alpha, s.majority)

    compared = models[models["model"].isin(membership.index)].copy()
    compared.insert(1, "group", compared["model"].map(membership))
    compared = compared.sort_values(["group", "model"], kind="stable").reset_index(drop=True)
    settings = {
        "groups": grp.spec,
        "pairs": pairs_source,
        "metrics": list(metrics),
        "kernel_size": list(kernel_size),
        "include_transposed": include_transposed,
        "depth_bins": "first layer (conv_depth == 0) alone; right-closed deciles of conv_depth_norm",
        "aggregation": "sparsity = sum sparse / sum filters; variance_entropy weighted by "
        "n_nonsparse; orthogonality weighted by out_channels",
        "test": "wilcoxon signed-rank (paired)" if pair_obj is not None else "mann-whitney U (two-sided)",
        "bootstrap": {"n_boot": n_boot, "ci": ci, "seed": seed, "method": "percentile"},
        "alpha": alpha,
        "p_adjust": f"{adjust} within each dataset and metric over depth bins",
        "claims_majority": s.majority,
        "claims_groups": f"group a ({grp.name_a}) plays the paper's robust models",
        "threshold": threshold,
        "sparse_rule": "max|w| <= threshold * max|W|" if inclusive else "max|w| < threshold * max|W|",
        "shift": None
        if shift_res is None
        else {**shift_res.settings, "shared_models_counted": count_shared,
              "procedure_name": "the paper's procedure (science.md)" if shift_procedure == "paper"
              else "per-bin variant (basis and range per scope, probability-scale epsilon, shuffled null)"},
    }
    empty = pd.DataFrame()
    return ComparisonResult(
        group_names=names,
        models=compared,
        per_model=per_model,
        stats=stats,
        shift=shift_res.table if shift_res is not None else empty,
        shift_components=shift_res.components if shift_res is not None else empty,
        own_pca=shift_res.own_pca if shift_res is not None else empty,
        correlations=corr,
        claims=claims,
        settings=settings,
        pairs=None if pair_obj is None else pair_obj.table,
        notes=notes,
        shift_result=shift_res,
        pca_entropy=shift_res.spectra if shift_res is not None else empty,
    )
