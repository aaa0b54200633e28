"""Replay the paper's notebooks on its published ``dataset.h5``, streamed (docs/definitions.md).

:func:`reproduce` imports the file into a filter database (model by model, so an interrupted
import resumes; a database already made from the same file is reused), then computes every
number of docs/definitions.md's "The published numbers" in three streamed passes over the filters:

1. per layer: sparse filters (``max|w| <= max|W| / 100``) and the moments of the scaled
   non-sparse filters (per-layer variance entropy, per-model and pooled PCA spectra);
2. the scalar histogram range: min and max of every filter of the file projected onto the
   shared basis (the ``full`` PCA of the pair models);
3. per dataset, depth bin and group the 70-bin histograms of the pair lists' filters.

Everything else (sparse shares, decile means, Spearman correlations) comes from per-layer
numbers. No pass holds more than one chunk of filters.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.stats

from ..analysis.bins import DECILES, FIRST, depth_bin
from ..analysis.groups import pair_list
from ..analysis.paper import (
    LayerPass,
    histogram_edges,
    hist_pass,
    layer_pass,
    pooled_moments,
    range_pass,
    scope_divergences,
    segments_from_db,
    shared_basis,
    sparse_limit,
    spectrum_entropy,
)
from ..analysis.shift import HIST_EPS, N_BINS, PCABasis, pca_from_moments
from ..errors import FilterlensError
from ..metrics import used_layers
from .published import PUBLISHED, published_values

ALL_BINS = [FIRST, *DECILES]
METRICS = ("sparsity", "variance_entropy", "orthogonality")
#: Database attribute naming the file a database was imported from.
SOURCE_ATTR = "reproduce_source"
Progress = Callable[[str, int, int], None]  # (stage, advance, total)


@dataclass
class ReproduceResult:
    """The replay: ``numbers`` (the keys of ``--format json``), the quirks followed, the
    per-model values behind the boxplots, the PCA bases and the run's settings."""

    numbers: dict
    quirks: list[dict]
    settings: dict
    per_model: pd.DataFrame
    bases: dict[str, PCABasis]
    notes: list[str] = field(default_factory=list)

    def comparison(self) -> pd.DataFrame:
        """Every published number beside the computed one: ``key, computed, published, diff``
        (``computed`` is None where this file has no such number, e.g. a dataset it lacks)."""
        rows = []
        for path, pub in published_values():
            if path[0] == "pairs_robust_flatter" and path[-1] == "exceptions":
                continue
            computed = _lookup(self.numbers, path)
            ok = isinstance(computed, (int, float)) and isinstance(pub, (int, float))
            rows.append({"key": ".".join(path), "computed": computed, "published": pub,
                         "diff": computed - pub if ok else None})
        return pd.DataFrame(rows, columns=["key", "computed", "published", "diff"], dtype=object)

    def to_dict(self) -> dict:
        """The JSON document: the numbers at the top level, then ``quirks``, ``published``
        (computed vs published), ``settings`` and ``notes``. NaN is ``None``."""
        cmp = self.comparison()
        return _clean({**self.numbers, "quirks": self.quirks,
                       "published": cmp.to_dict("records"), "settings": self.settings, "notes": self.notes})

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def _lookup(obj: Any, path: Sequence[str]) -> Any:
    for part in path:
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _clean(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _num(v: float) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


# --------------------------------------------------------------------------- the database
def _fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"file": path.name, "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def default_db_path(h5: str | os.PathLike) -> Path:
    """Where the database of ``DATASET.h5`` goes by default: ``DATASET.filterdb`` beside it."""
    p = Path(h5)
    return p.with_name(p.stem + ".filterdb")


def open_database(h5: str | os.PathLike, db_path: str | os.PathLike | None = None,
                  progress: Progress | None = None):
    """The filter database of ``h5``: reused when complete, resumed when interrupted, else imported.

    Returns ``(db, status)`` with status ``reused``, ``resumed`` or ``imported``. A database
    made from another file, or one not made by this function, is refused (never modified).
    """
    from ..db import FilterDB, import_h5

    h5 = Path(h5)
    if not h5.is_file():
        raise FilterlensError(f"{h5}: no such file")
    path = Path(db_path) if db_path is not None else default_db_path(h5)
    fp = _fingerprint(h5)
    from ..db.h5 import _read_meta

    meta, _ = _read_meta(h5)  # a file that is not in the published layout fails here, before any database is made
    n_models_in_file = int(meta.index.get_level_values("model_id").nunique())
    if path.exists() and any(path.iterdir()) if path.is_dir() else path.exists():
        db = FilterDB.open(path)
        src = db.attrs().get(SOURCE_ATTR)
        if src is None:
            raise FilterlensError(f"{path}: a filter database that reproduce did not import from {h5.name}; "
                                  "give another --db")
        if (src.get("size"), src.get("mtime_ns")) != (fp["size"], fp["mtime_ns"]):
            raise FilterlensError(f"{path}: imported from another file ({src.get('file')}, {src.get('size')} bytes); "
                                  "give another --db or remove it")
        if src.get("complete"):
            return db, "reused"
        status = "resumed"
    else:
        db = FilterDB.create(path)
        status = "imported"
    db.set_attr(SOURCE_ATTR, {**fp, "complete": False})
    n_models = [0]

    def on_model(name: str, state: str) -> None:
        n_models[0] += 1
        if progress:
            progress("importing models", 1, n_models_in_file)

    try:
        import_h5(h5, db, measure=True, on_model=on_model)
    except BaseException:
        if status == "imported" and len(db) == 0:  # nothing imported: leave nothing behind
            db.close()
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        raise  # models already imported stay: the next run resumes
    db.set_attr(SOURCE_ATTR, {**fp, "complete": True})
    return db, status


# --------------------------------------------------------------------------- the replay
def _model_table(db, h5: Path) -> pd.DataFrame:
    """One row per model of the file: ``name`` (its ``model`` value, as the pairs name it),
    ``db_name``, ``robust_raw``, ``robust`` (``bool(Robust)``), ``dataset``, ``robust_acc``
    (the meta table's, in percent)."""
    from ..db.h5 import _read_meta

    meta, _ = _read_meta(h5)
    flat = meta.reset_index()
    models = db.models()
    by_mid = {}
    for name, extra in zip(models["model"], models["extra"]):
        try:
            mid = json.loads(extra).get("h5_model_id") if isinstance(extra, str) else None
        except ValueError:
            mid = None
        if mid is not None:
            by_mid[str(mid)] = str(name)
    rows = []
    for mid, grp in flat.groupby("model_id", sort=False):
        first = grp.iloc[0]
        name = next((str(first[c]) for c in ("model", "Name") if c in grp.columns and not pd.isna(first[c])),
                    f"model_{mid}")
        raw = first["Robust"] if "Robust" in grp.columns else float("nan")
        rows.append({"model_id": mid, "name": name, "db_name": by_mid.get(str(mid)),
                     "robust_raw": raw, "robust": bool(raw),  # the notebooks' df_meta.Robust.apply(bool)
                     "dataset": first.get("Training-Dataset"), "robust_acc": first.get("Robust Accuracy")})
    table = pd.DataFrame(rows)
    missing = table[table["db_name"].isna()]
    if len(missing):
        raise FilterlensError(f"the database lacks {len(missing)} model(s) of the file (e.g. {missing['name'].iloc[0]}); "
                              "run again to finish the import")
    return table


def _bin_aggregate(layers: pd.DataFrame, metric: str) -> float:
    """A model's value in a set of layers, as the notebooks' ``grouper`` computes it."""
    if metric == "sparsity":
        return float(layers["n_sparse"].sum() / layers["n_filters"].sum())
    if metric == "variance_entropy":  # pandas' sum skips NaN products; the weights still count
        return float((layers["variance_entropy"] * layers["n_nonsparse"]).sum() / layers["n_nonsparse"].sum())
    return float((layers["orthogonality"] * layers["out_channels"]).sum() / layers["out_channels"].sum())


def reproduce(
    h5: str | os.PathLike,
    pairs: str | os.PathLike | pd.DataFrame,
    db_path: str | os.PathLike | None = None,
    *,
    progress: Progress | None = None,
    n_bins: int = N_BINS,
    chunk_size: int = 1 << 16,
    client=None,
) -> ReproduceResult:
    """Replay the paper's numbers on ``h5`` (its ``dataset.h5`` layout) with the pair list ``pairs``.

    ``pairs``: the paper's ``robust_vs_normal_pairings.csv`` (or any table :func:`pair_list`
    reads; a DataFrame of ``robust, normal[, dataset]`` works too). ``db_path``: the filter
    database to import into or reuse (default ``DATASET.filterdb`` beside the file).
    ``progress(stage, advance, total)`` is called as the work proceeds. With a Dask ``client``
    the passes run one task per model on its workers (same numbers, see analysis/distributed.py).
    """
    h5 = Path(h5)
    plist = pair_list(pairs)
    if h5.is_file():  # unknown names in the pairs fail before anything is imported
        from ..db.h5 import _read_meta

        flat = _read_meta(h5)[0]
        named = set().union(*(set(flat[c].dropna().astype(str)) for c in ("model", "Name") if c in flat.columns))
        _check_names(plist, named, h5)
    db, status = open_database(h5, db_path, progress)
    models = _model_table(db, h5)
    _check_names(plist, set(models["name"]), h5)
    db_of = dict(zip(models["name"], models["db_name"]))
    if "dataset" not in plist.columns or (plist["dataset"] == "").any():
        ds_of = dict(zip(models["name"], models["dataset"].astype(str)))
        plist["dataset"] = [d if d else ds_of[r] for r, d in
                            zip(plist["robust"], plist.get("dataset", pd.Series([""] * len(plist))))]
    datasets = list(dict.fromkeys(plist["dataset"]))

    layers = used_layers(db.layers())  # a conv the forward pass never calls is never analysed
    layers = layers[layers["model"].isin(set(models["db_name"]))].reset_index(drop=True)
    if layers.empty:
        raise FilterlensError(f"{h5.name}: no layers")
    kernel = {(int(h), int(w)) for h, w in zip(layers["kernel_h"], layers["kernel_w"])}
    if len(kernel) != 1:
        raise FilterlensError(f"{h5.name}: filters of several shapes {sorted(kernel)}; the paper's file holds 3x3 only")
    kh, kw = kernel.pop()
    k = kh * kw
    keys = list(zip(layers["model"].astype(str), layers["layer"].astype(str)))
    source = segments_from_db(db, layers, chunk_size)
    if client is not None:  # the same passes, one task per model on the cluster
        from ..analysis.distributed import DaskSegments

        source = DaskSegments(db, client, layers, kind="db", chunk_size=chunk_size, k=k)
    total = int(layers["n_filters"].sum())

    def tick(stage: str) -> Callable[[int], None] | None:
        return (lambda n: progress(stage, n, total)) if progress else None

    # pass 1: sparse counts and moments of every layer
    maxima = {key: (None if pd.isna(v) else float(v)) for key, v in zip(keys, layers["weight_max_abs"])}
    shapes = {key: (int(c), int(n)) for key, c, n in zip(keys, layers["out_channels"], layers["n_filters"])}
    passes: dict = layer_pass(source, keys, maxima, k, progress=tick("pass 1/3: layers"), out_channels=shapes)
    layers["n_sparse"] = [passes[key].n_sparse for key in keys]
    layers["n_nonsparse"] = [passes[key].n_nonsparse for key in keys]
    layers["variance_entropy"] = [passes[key].variance_entropy for key in keys]
    layers["n_filters"] = [passes[key].n_filters for key in keys]
    layers["orthogonality"] = [passes[key].orthogonality for key in keys]

    # sparse shares over every model of the file, Robust read with bool()
    robust_db = set(models.loc[models["robust"], "db_name"])
    is_rob = layers["model"].isin(robust_db)
    share = {g: float(layers.loc[m, "n_sparse"].sum() / layers.loc[m, "n_filters"].sum()) if m.any() else None
             for g, m in (("robust", is_rob), ("normal", ~is_rob))}

    # PCA spectra: per pair model, and pooled (each model once)
    used = list(dict.fromkeys([*plist["robust"], *plist["normal"]]))
    per_model_h = {}
    for name in used:
        mom = pooled_moments(passes, [db_of[name]], k)
        per_model_h[name] = spectrum_entropy(pca_from_moments(mom, (kh, kw)).explained_variance_ratio) \
            if mom.n >= 2 else float("nan")
    groups = {"full": used, "robust": list(dict.fromkeys(plist["robust"])), "normal": list(dict.fromkeys(plist["normal"]))}
    bases: dict[str, PCABasis] = {}
    for g, names in groups.items():
        bases[g] = shared_basis(pooled_moments(passes, [db_of[n] for n in names], k), (kh, kw))
    pca_h = {g: spectrum_entropy(b.explained_variance_ratio) for g, b in bases.items()}
    flatter = [(r, n) for r, n in zip(plist["robust"], plist["normal"])]
    exceptions = [r for r, n in flatter if not per_model_h[r] > per_model_h[n]]

    # pass 2: the scalar range over every filter of the file; pass 3: pair-list histograms
    basis = bases["full"]
    low, high = range_pass(source, keys, basis, progress=tick("pass 2/3: range"))
    bins = [depth_bin(d, n) for d, n in zip(layers["conv_depth"], layers["conv_depth_norm"])]
    layers["depth_bin"] = bins
    mult: dict[tuple[str, str], dict[str, int]] = {}
    for r, n, ds in zip(plist["robust"], plist["normal"], plist["dataset"]):
        for g, name in (("a", r), ("b", n)):
            mult.setdefault((ds, g), {}).setdefault(db_of[name], 0)
            mult[(ds, g)][db_of[name]] += 1
    units: dict = {}
    for key, b in zip(keys, bins):
        targets = []
        for (ds, g), counts in mult.items():
            w = counts.get(key[0])
            if w:
                targets += [(((ds, "all"), g), float(w)), (((ds, "once"), g), 1.0)]
                targets += [(((ds, b), g), float(w))] if b else []
        units[key] = targets
    limits = {key: sparse_limit(passes[key].layer_max) for key in keys}
    hist_total = int(sum(n for key, n in zip(keys, layers["n_filters"]) if units[key]))
    counts = hist_pass(source, units, limits, basis, low, high, n_bins,
                       progress=(lambda n: progress("pass 3/3: histograms", n, hist_total)) if progress else None)
    scopes = [(ds, b) for ds in datasets for b in ["all", "once", *ALL_BINS]]
    edges = histogram_edges(low, high, n_bins)
    div, _ = scope_divergences(counts, scopes, basis, edges, HIST_EPS)
    kl_by_dataset = {ds: _num(div[(ds, "all")]) for ds in datasets}
    kl_once = {ds: _num(div[(ds, "once")]) for ds in datasets}  # the variant: each model once
    kl_by_depth = {ds: {b: _num(div[(ds, b)]) for b in ALL_BINS} for ds in datasets}

    # per-model values by depth bin (the boxplots) and their means, over the pair lists
    per_model_rows = []
    by_model = {m: g for m, g in layers.groupby("model", sort=False)}
    for ds in datasets:
        sub = plist[plist["dataset"] == ds]
        for group, col in (("robust", "robust"), ("normal", "normal")):
            for entry, name in enumerate(sub[col]):
                lay = by_model[db_of[name]]
                for b, part in lay.groupby("depth_bin", sort=False):
                    for metric in METRICS:
                        per_model_rows.append({"dataset": ds, "group": group, "entry": entry, "model": name,
                                               "depth_bin": b, "metric": metric,
                                               "value": _bin_aggregate(part, metric)})
    per_model = pd.DataFrame(per_model_rows, columns=["dataset", "group", "entry", "model", "depth_bin", "metric",
                                                      "value"])
    decile_means: dict = {}
    for ds in datasets:
        decile_means[ds] = {}
        for metric in METRICS:
            decile_means[ds][metric] = {}
            for group in ("robust", "normal"):
                sel = per_model[(per_model["dataset"] == ds) & (per_model["metric"] == metric)
                                & (per_model["group"] == group)]
                means = sel.groupby("depth_bin")["value"].mean()
                decile_means[ds][metric][group] = {b: _num(means[b]) if b in means.index else None for b in ALL_BINS}

    # Spearman with robust accuracy over the pair rows' robust models (all layers of each)
    acc = dict(zip(models["name"], models["robust_acc"]))
    spearman = {}
    for ds in datasets:
        names = list(plist.loc[plist["dataset"] == ds, "robust"])
        ent = [_bin_aggregate(by_model[db_of[n]], "variance_entropy") for n in names]
        spa = [_bin_aggregate(by_model[db_of[n]], "sparsity") for n in names]
        y = [float(acc[n]) for n in names]
        spearman[ds] = {"entropy": _spearman(ent, y), "sparsity": _spearman(spa, y)}

    numbers = {
        "sparse_share": share,
        "pca_entropy": pca_h,
        "pca_entropy_per_model": {n: _num(per_model_h[n]) for n in used},
        "pairs_robust_flatter": {"count": len(flatter) - len(exceptions), "of": len(flatter), "exceptions": exceptions},
        "kl_by_dataset": kl_by_dataset,
        "kl_by_dataset_each_model_once": kl_once,
        "kl_by_depth": kl_by_depth,
        "decile_means": decile_means,
        "spearman": spearman,
    }
    quirks = _quirks(models, plist, layers, mult, db_of, kl_by_depth)
    settings = {
        "file": str(h5), "database": str(db.path), "database_status": status,
        "models_in_file": int(len(models)), "pairs": int(len(plist)), "filters": total,
        "kernel_size": [kh, kw], "n_bins": n_bins, "hist_eps": HIST_EPS, "range": [low, high],
        "shift_procedure": "paper (science.md): one shared basis (the pooled PCA of every pair model, each once), "
                           "one scalar range over every filter of the file, density-scale epsilon, pair lists",
        "sparse_rule": "max|w| <= max|W| / 100 per layer",
        "explained_variance_ratio": list(map(float, basis.explained_variance_ratio)),
    }
    return ReproduceResult(numbers, quirks, settings, per_model, bases)


def _check_names(plist: pd.DataFrame, known: set, h5: Path) -> None:
    unknown = sorted((set(plist["robust"]) | set(plist["normal"])) - known)
    if unknown:
        raise FilterlensError(f"the pairs name model(s) not in {h5.name}: {', '.join(unknown[:5])}"
                              + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))


def _spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(x) < 2:
        return None
    with np.errstate(all="ignore"):
        rho = scipy.stats.spearmanr(x, y)[0]
    return _num(rho)


def _quirks(models: pd.DataFrame, plist: pd.DataFrame, layers: pd.DataFrame, mult: Mapping, db_of: Mapping,
            kl_by_depth: Mapping) -> list[dict]:
    """The notebooks' quirks this replay follows, each with what it touched in this file."""
    out = []
    nan_robust = [n for n, raw in zip(models["name"], models["robust_raw"])
                  if raw is None or (isinstance(raw, float) and math.isnan(raw))]
    out.append({"name": "robust_read_with_bool",
                "detail": "Robust is read with bool(...): a model without a Robust value counts as robust "
                          "in the sparse shares", "models": nan_robust})
    in_pairs = set(plist["robust"]) | set(plist["normal"])
    out.append({"name": "sparse_share_over_every_model",
                "detail": f"the sparse shares run over every model in the file ({len(models)}), not only the "
                          f"{len(in_pairs)} models of the pairs",
                "models": sorted(set(models["name"]) - in_pairs)})
    repeated = {n: int(c) for n, c in pd.concat([plist["robust"], plist["normal"]]).value_counts().items() if c > 1}
    out.append({"name": "pair_lists_with_repeats",
                "detail": "the groups of the KL and of the decile means are the pair lists: a model serving in k "
                          "pairs contributes k times", "models": repeated})
    out.append({"name": "range_over_every_filter",
                "detail": "the histogram range is one interval for all components: the min and max of the "
                          "projections of every filter in the file, sparse ones included", "models": []})
    out.append({"name": "density_scale_epsilon",
                "detail": "empty histogram bins get the float32 epsilon on the density scale "
                          "(np.histogram density=True), then each histogram is divided by its sum", "models": []})
    no_first = [ds for ds, d in kl_by_depth.items() if d[FIRST] is None]
    out.append({"name": "no_first_layer_is_null",
                "detail": "a dataset without a 3x3 first layer has no first-layer KL: null here, where the "
                          "notebook's cell prints 0", "models": no_first})
    out.append({"name": "datasets_from_pairs",
                "detail": "the boxplots' models are chosen by the pairs' Dataset column; the notebooks match name "
                          "substrings ('_cifar10_', '_imagenet1k_'), which selects the same models in the paper's "
                          "files", "models": []})
    out.append({"name": "component_signs",
                "detail": "PCA components signed as scikit-learn >= 1.5 signs them (largest loading positive); "
                          "a component's sign moves its coefficients inside the scalar range", "models": []})
    return out
