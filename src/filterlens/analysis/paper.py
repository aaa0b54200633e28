"""The paper's exact procedures (docs/definitions.md), as streaming reductions over filter chunks.

The arithmetic follows the paper's notebooks (``sparsity.ipynb``, ``pca.ipynb``) step for step,
so that the numbers agree with that code on the same data to rounding:

- sparse: ``max|w| <= layer_max / 100`` (the notebook divides the layer's ``max|W|`` by 100);
- scaled: each filter divided by its own l-inf norm, a zero filter divided by 1;
- PCA: centred, all ``k`` components, signed as scikit-learn (>= 1.5) signs them (the
  largest-magnitude loading of each component positive); projection ``x V^T - mean V^T``;
- histograms: ``np.histogram(x, bins, range, density=True)``, empty bins set to the float32
  epsilon *on that density scale*, then divided by the sum;
- KL: ``scipy.stats.entropy(p, q) + scipy.stats.entropy(q, p)`` (natural log), weighted by
  the shared basis's explained variance ratios;
- spectrum entropy: ``scipy.stats.entropy(v, base=10)`` of variances or their ratios.

Every pass is a reduction: a pure function of one chunk returns a partial result, and partial
results merge by addition (:class:`~filterlens.analysis.shift.Moments` merge, count sums,
min/max), so a pass can run over chunks in any order or on several workers. A source with a
method named after a pass runs that pass itself (:class:`~filterlens.analysis.distributed.DaskSegments`:
the same pass per model on a Dask cluster, merged in model order).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.stats

from ..errors import FilterlensError
from ..metrics import DEFAULT_THRESHOLD
from .shift import HIST_EPS, N_BINS, Moments, PCABasis, filter_array, pca_from_moments

ChunksFn = Callable[[str, str], Iterable[np.ndarray]]
LayerKey = tuple[str, str]  # (model, layer)


# --------------------------------------------------------------------------- pure pieces
def sparse_limit(layer_max: float, threshold: float = DEFAULT_THRESHOLD) -> float:
    """The sparsity limit of a layer as the notebook computes it: ``layer_max / (1 / threshold)``.

    For the default 0.01 this is ``layer_max / 100`` bit for bit (``1 / 0.01 == 100.0``); a
    filter is sparse when ``max|w| <= limit``.
    """
    return float(layer_max) / (1.0 / threshold)


def linf_rows(x: np.ndarray) -> np.ndarray:
    """``max |x|`` of each row (the l-inf norm of each flattened filter)."""
    return np.abs(x).max(axis=1) if x.shape[1] else np.zeros(len(x), x.dtype)


def scale_rows(x: np.ndarray, linf: np.ndarray | None = None) -> np.ndarray:
    """Each row divided by its l-inf norm; a zero row is divided by 1 (stays zero)."""
    den = linf_rows(x) if linf is None else linf
    den = np.where(den == 0, 1, den)[:, None]
    return x / den


def spectrum_entropy(values: np.ndarray) -> float:
    """Base-10 Shannon entropy of non-negative values after normalising them to sum 1.

    ``scipy.stats.entropy(values, base=10)``: 0 for one non-zero value, ``log10(k)`` for
    ``k`` equal values; NaN when all are 0 or any is NaN.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or not np.isfinite(v).all() or v.sum() <= 0:
        return float("nan")
    return float(scipy.stats.entropy(v, base=10))


def orthogonality(rows: np.ndarray, out_channels: int) -> float:
    """The paper's orthogonality of one layer from its filters in storage order (``o``-major).

    ``W = rows.reshape(out_channels, -1)``, each row divided by its l2 norm (a zero row by 1),
    ``1 - sum|W W^T - I| / (n (n - 1))`` with ``n = out_channels`` (``ortho_cond`` of
    ``orthogonality.ipynb``); NaN for ``n < 2`` or when the filters do not split into
    ``out_channels`` rows.
    """
    n = int(out_channels)
    if n < 2 or len(rows) == 0 or len(rows) % n:
        return float("nan")
    w = np.asarray(rows, dtype=np.float64).reshape(n, -1)
    t = np.expand_dims(np.linalg.norm(w, axis=1), axis=1)
    t[t == 0] = 1
    w = w / t
    return float(1 - np.abs(w.dot(w.T) - np.eye(n)).sum() / (n * (n - 1)))


def moments_variances(moments: Moments) -> np.ndarray:
    """Variances along the principal axes of accumulated rows (``s**2 / (n - 1)`` of the
    centred SVD, i.e. the covariance eigenvalues, descending, round-off below 0 clipped);
    NaN when fewer than 2 rows."""
    k = len(moments.mean)
    if moments.n < 2:
        return np.full(k, np.nan)
    return np.clip(np.linalg.eigvalsh(moments.covariance())[::-1], 0.0, None)


def density_probabilities(counts: np.ndarray, edges: np.ndarray, eps: float = HIST_EPS) -> np.ndarray:
    """Probabilities of histogram ``counts`` (last axis) the notebook's way.

    ``v = counts / diff(edges) / counts.sum()`` (numpy's ``density=True``), ``v[v == 0] = eps``,
    ``v / v.sum()``. An empty histogram gives NaN (as ``np.histogram`` does).
    """
    counts = np.asarray(counts, dtype=np.float64)
    widths = np.diff(np.asarray(edges, dtype=np.float64), axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        v = counts / widths / counts.sum(axis=-1, keepdims=True)
    v = np.where(v == 0, eps, v)
    return v / v.sum(axis=-1, keepdims=True)


def kl_sym(p: np.ndarray, q: np.ndarray) -> float:
    """``scipy.stats.entropy(p, q) + scipy.stats.entropy(q, p)`` (natural log)."""
    return float(scipy.stats.entropy(p, q) + scipy.stats.entropy(q, p))


def weighted_kl(p: np.ndarray, q: np.ndarray, evr: np.ndarray) -> tuple[float, np.ndarray]:
    """``sum_i evr_i * KL_sym(p_i, q_i)`` over components (rows); also the per-component KLs.

    NaN when either side has no filters (its probabilities are NaN)."""
    per = np.array([kl_sym(a, b) for a, b in zip(p, q)])
    return float(np.sum([evr[i] * per[i] for i in range(len(per))])), per


def histogram_edges(low: float, high: float, n_bins: int = N_BINS) -> np.ndarray:
    """The edges ``np.histogram`` uses for ``bins=n_bins, range=(low, high)``."""
    return np.histogram_bin_edges(np.zeros(0), bins=n_bins, range=(low, high))


# --------------------------------------------------------------------------- chunk reductions
def chunk_rows(chunk: object, k: int) -> np.ndarray:
    """A chunk (array or object with ``filters``) as ``(n, k)`` rows in its stored dtype."""
    arr = filter_array(chunk)
    if arr.ndim < 2 or int(np.prod(arr.shape[1:])) != k:
        raise FilterlensError(f"filter chunk of shape {arr.shape}, expected (n, {k}) values per filter")
    return arr.reshape(len(arr), k)


@dataclass
class LayerPass:
    """What the first pass learns about one layer: its filter count, sparse filters, the
    moments of its scaled non-sparse filters and its ``max|W|``."""

    n_filters: int = 0
    n_sparse: int = 0
    moments: Moments | None = None
    layer_max: float = 0.0
    orthogonality: float = float("nan")

    @property
    def n_nonsparse(self) -> int:
        return self.n_filters - self.n_sparse

    @property
    def variance_entropy(self) -> float:
        """Base-10 entropy of the layer's principal variances (NaN below 2 non-sparse filters)."""
        return spectrum_entropy(moments_variances(self.moments)) if self.moments is not None else float("nan")


def layer_chunk_partial(rows: np.ndarray, limit: float) -> tuple[int, int, Moments]:
    """One chunk of a layer: ``(n, n_sparse, moments of the scaled non-sparse rows)``."""
    linf = linf_rows(rows)
    keep = ~(linf <= limit)
    x = rows[keep].astype(np.float64)
    x = x / linf[keep].astype(np.float64)[:, None]
    m = Moments(rows.shape[1])
    m.add(x)
    return len(rows), int(len(rows) - keep.sum()), m


def range_chunk_partial(rows: np.ndarray, basis: PCABasis) -> tuple[float, float]:
    """``(min, max)`` of the projections of every scaled row of a chunk (sparse ones too)."""
    if len(rows) == 0:
        return np.inf, -np.inf
    c = project(scale_rows(rows.astype(np.float64, copy=False)), basis)
    return float(c.min()), float(c.max())


def project(x: np.ndarray, basis: PCABasis) -> np.ndarray:
    """scikit-learn's ``PCA.transform``: ``x @ V.T - mean @ V.T``."""
    v = basis.matrix
    return x @ v.T - basis.mean.reshape(1, -1) @ v.T


def hist_chunk_partial(rows: np.ndarray, limit: float, basis: PCABasis, low: float, high: float,
                       n_bins: int = N_BINS) -> np.ndarray:
    """Per-component histogram counts ``(k, n_bins)`` of a chunk's scaled non-sparse rows."""
    linf = linf_rows(rows)
    keep = ~(linf <= limit)
    c = project(rows[keep].astype(np.float64) / linf[keep].astype(np.float64)[:, None], basis)
    return np.stack([np.histogram(c[:, i], bins=n_bins, range=(low, high))[0] for i in range(c.shape[1])])


# --------------------------------------------------------------------------- passes
#: A stream of ``(layer key, rows)`` segments: consecutive filters of one layer as ``(n, k)``.
Segments = Iterable[tuple[LayerKey, np.ndarray]]
#: Opens a fresh segment stream over the given layers (a pass reads the data once).
SegmentSource = Callable[[Sequence[LayerKey]], Segments]


def segments_from_chunks(chunks_fn: ChunksFn, k: int = 9) -> SegmentSource:
    """A segment source over ``chunks_fn(model, layer)`` (layer by layer)."""

    def source(keys: Sequence[LayerKey]) -> Segments:
        for key in keys:
            for chunk in chunks_fn(*key):
                yield key, chunk_rows(chunk, k)

    return source


def segments_from_db(db, layers: pd.DataFrame, chunk_size: int = 1 << 16) -> SegmentSource:
    """A segment source over a :class:`~filterlens.db.FilterDB`: one streamed read of the
    models concerned (``layers`` needs ``layer_id, model, layer``), whole chunks sliced by layer."""
    key_of = {int(i): (str(m), str(l)) for i, m, l in zip(layers["layer_id"], layers["model"], layers["layer"])}

    def source(keys: Sequence[LayerKey]) -> Segments:
        wanted = set(keys)
        models = list(dict.fromkeys(m for m, _ in keys))
        if not models:
            return
        for chunk in db.iter_filters(model=models, chunk_size=chunk_size):
            flat = chunk.filters.reshape(len(chunk.filters), -1)
            for lid, start, stop, off in chunk.keys.tolist():
                key = key_of.get(int(lid))
                if key in wanted:
                    yield key, flat[off:off + stop - start]

    return source


def max_pass(source: SegmentSource, keys: Sequence[LayerKey]) -> dict[LayerKey, float]:
    """``max|W|`` of each layer (0 for a layer without filters)."""
    if hasattr(source, "max_pass"):  # a source that runs the pass itself (analysis/distributed.py)
        return source.max_pass(keys)
    out = {key: 0.0 for key in keys}
    for key, rows in source(keys):
        if len(rows):
            out[key] = max(out[key], float(linf_rows(rows).max()))
    return out


def layer_pass(
    source: SegmentSource, keys: Sequence[LayerKey], layer_max: Mapping[LayerKey, float | None], k: int = 9,
    threshold: float = DEFAULT_THRESHOLD, progress: Callable[[int], None] | None = None,
    out_channels: Mapping[LayerKey, tuple[int, int]] | None = None,
) -> dict[LayerKey, LayerPass]:
    """Pass 1: per layer the filter and sparse counts and the moments of its scaled non-sparse
    filters. Layers whose ``layer_max`` is missing or not finite are measured first (one
    more read of those layers only). With ``out_channels[key] = (c_out, n_filters)`` the
    layer's :func:`orthogonality` too: its filters are gathered while they stream (one
    layer at a time when the source gives each layer's segments together)."""
    if hasattr(source, "layer_pass"):  # a source that runs the pass itself (analysis/distributed.py)
        return source.layer_pass(keys, layer_max, k, threshold, progress, out_channels)
    maxima = {key: layer_max.get(key) for key in keys}
    unknown = [key for key, m in maxima.items() if m is None or not np.isfinite(m)]
    if unknown:
        maxima.update(max_pass(source, unknown))
    out = {key: LayerPass(layer_max=float(maxima[key]), moments=Moments(k)) for key in keys}
    limits = {key: sparse_limit(lp.layer_max, threshold) for key, lp in out.items()}
    gathered: dict[LayerKey, list[np.ndarray]] = {}
    for key, rows in source(keys):
        n, s, mom = layer_chunk_partial(rows, limits[key])
        lp = out[key]
        lp.n_filters += n
        lp.n_sparse += s
        lp.moments.merge(mom)
        if out_channels is not None and key in out_channels:
            c_out, expected = out_channels[key]
            parts = gathered.setdefault(key, [])
            parts.append(np.array(rows, copy=True))
            if lp.n_filters >= expected:
                lp.orthogonality = orthogonality(np.concatenate(parts), c_out)
                del gathered[key]
        if progress:
            progress(n)
    return out


def range_pass(source: SegmentSource, keys: Sequence[LayerKey], basis: PCABasis,
               progress: Callable[[int], None] | None = None) -> tuple[float, float]:
    """Pass 2: the scalar histogram range, min and max of every projected scaled filter."""
    if hasattr(source, "range_pass"):  # a source that runs the pass itself (analysis/distributed.py)
        return source.range_pass(keys, basis, progress)
    low, high = np.inf, -np.inf
    for _, rows in source(keys):
        lo, hi = range_chunk_partial(rows, basis)
        low, high = min(low, lo), max(high, hi)
        if progress:
            progress(len(rows))
    return float(low), float(high)


def hist_pass(
    source: SegmentSource, units: Mapping[LayerKey, Sequence[tuple[object, float]]],
    limits: Mapping[LayerKey, float], basis: PCABasis, low: float, high: float, n_bins: int = N_BINS,
    progress: Callable[[int], None] | None = None,
) -> dict[object, np.ndarray]:
    """Pass 3: per target (e.g. a scope and group) the weighted histogram counts ``(k, n_bins)``.

    ``units[layer]`` lists the targets a layer feeds, each with its weight (how often the
    layer's model stands in that group's pair list)."""
    if hasattr(source, "hist_pass"):  # a source that runs the pass itself (analysis/distributed.py)
        return source.hist_pass(units, limits, basis, low, high, n_bins, progress)
    k = len(basis.explained_variance_ratio)
    counts: dict[object, np.ndarray] = {}
    keys = [key for key, targets in units.items() if targets]
    for key, rows in source(keys):
        part = hist_chunk_partial(rows, limits[key], basis, low, high, n_bins)
        for target, weight in units[key]:
            acc = counts.setdefault(target, np.zeros((k, n_bins)))
            acc += weight * part
        if progress:
            progress(len(rows))
    return counts


def pooled_moments(passes: Mapping[LayerKey, LayerPass], models: Iterable[str], k: int = 9) -> Moments:
    """The moments of all layers of ``models`` (each model once)."""
    wanted = set(models)
    out = Moments(k)
    for (model, _), lp in passes.items():
        if model in wanted and lp.moments is not None:
            out.merge(lp.moments)
    return out


def shared_basis(moments: Moments, kernel_size: tuple[int, int] = (3, 3)) -> PCABasis:
    """The shared PCA basis (scikit-learn's components, mean and explained variance ratios)."""
    if moments.n < 2:
        raise ValueError("a PCA basis needs at least 2 non-sparse filters")
    return pca_from_moments(moments, kernel_size)


@dataclass
class PaperShift:
    """The paper's distribution shift over scopes: ``divergence[scope]``, the per-component
    KLs, the counts, the shared basis and the range."""

    basis: PCABasis
    low: float
    high: float
    edges: np.ndarray
    divergence: dict = field(default_factory=dict)
    per_component: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)


def scope_divergences(counts: Mapping[tuple[object, str], np.ndarray], scopes: Iterable[object], basis: PCABasis,
                      edges: np.ndarray, eps: float = HIST_EPS) -> tuple[dict, dict]:
    """Weighted symmetric KL per scope from the counts of ``(scope, "a")`` and ``(scope, "b")``.

    A scope where either group has no filter is NaN."""
    div, per = {}, {}
    k = len(basis.explained_variance_ratio)
    for scope in scopes:
        a, b = counts.get((scope, "a")), counts.get((scope, "b"))
        if a is None or b is None or a.sum() == 0 or b.sum() == 0:
            div[scope], per[scope] = float("nan"), np.full(k, np.nan)
            continue
        e = np.broadcast_to(edges, a.shape[:-1] + edges.shape[-1:])
        div[scope], per[scope] = weighted_kl(density_probabilities(a, e, eps), density_probabilities(b, e, eps),
                                             basis.explained_variance_ratio)
    return div, per


# --------------------------------------------------------------------------- compare's default
def _scopes_of(row_ds: str, row_bin: object, pooled: bool, by_bin: bool) -> list[tuple[str, str]]:
    from .bins import ALL
    from .stats import ALL_DATASETS

    bins = [ALL] + ([row_bin] if by_bin and isinstance(row_bin, str) else [])
    return [(row_ds, b) for b in bins] + ([(ALL_DATASETS, b) for b in bins] if pooled else [])


def paper_distribution_shift(
    layers: pd.DataFrame,
    membership: Mapping[str, str],
    filter_chunks_fn: ChunksFn | None = None,
    *,
    datasets: Mapping[str, str] | None = None,
    model_weights: Mapping[str, float] | None = None,
    by_bin: bool = True,
    kernel_size: tuple[int, int] = (3, 3),
    n_bins: int = N_BINS,
    threshold: float = DEFAULT_THRESHOLD,
    eps: float = HIST_EPS,
    source: SegmentSource | None = None,
):
    """The paper's distribution shift between group ``a`` and ``b`` (docs/definitions.md, "Distribution shift", steps 1-6).

    One PCA basis fitted on the scaled non-sparse filters of every model taking part (each
    once); one scalar range, the min and max of all projected filters of those models (sparse
    ones included); per scope (dataset, or ``"all"`` when several, crossed with all layers and
    each depth bin) and group the 70-bin histograms of the scaled non-sparse filters, each
    model's filters counted ``model_weights[model]`` times (its number of pairs in a pair
    list); density-scale epsilon; symmetric KL weighted by the basis's explained variance
    ratios. Arguments as :func:`~filterlens.analysis.shift.distribution_shift`; ``source``
    (a :data:`SegmentSource`) replaces ``filter_chunks_fn`` for faster reads.
    Returns a :class:`~filterlens.analysis.shift.ShiftResult` (``divergence_null`` and
    ``excess`` are NaN: the label-shuffled null belongs to the per-bin variant).
    """
    from .bins import assign_bins
    from .shift import SHIFT_COLUMNS, Histograms, ShiftResult, _ordered_scopes
    from .stats import ALL_DATASETS

    kernel_size = (int(kernel_size[0]), int(kernel_size[1]))
    k = kernel_size[0] * kernel_size[1]
    if source is None and hasattr(filter_chunks_fn, "segments"):  # e.g. a Dask cluster's source
        source = filter_chunks_fn.segments(k)
    if source is None:
        if filter_chunks_fn is None:
            raise ValueError("give filter_chunks_fn or source")
        source = segments_from_chunks(filter_chunks_fn, k)
    binned = layers if "depth_bin" in layers.columns else assign_bins(layers)
    binned = binned[binned["model"].astype(str).isin(set(map(str, membership)))]
    ds_of = {str(m): str(d) for m, d in (datasets or {}).items()}
    default_ds = ALL_DATASETS if datasets is None else "unknown"
    present = {ds_of.get(str(m), default_ds) for m in binned["model"]}
    pooled = len(present) > 1
    keys = [(str(m), str(l)) for m, l in zip(binned["model"], binned["layer"])]
    maxima = dict(zip(keys, binned["weight_max_abs"])) if "weight_max_abs" in binned.columns else {}
    passes = layer_pass(source, keys, {key: (None if pd.isna(v) else float(v)) for key, v in maxima.items()}, k,
                        threshold)
    models = list(dict.fromkeys(m for m, _ in keys))
    notes: list[str] = []
    total = pooled_moments(passes, models, k)
    empty_cols = ["dataset", "depth_bin", "component", "evr", "kl_ab", "kl_ba", "kl_sym", "weighted"]
    if total.n < 2:
        notes.append("distribution shift not computed: fewer than 2 non-sparse filters")
        return ShiftResult(pd.DataFrame(columns=SHIFT_COLUMNS), pd.DataFrame(columns=empty_cols),
                           pd.DataFrame(columns=["dataset", "depth_bin", "group", "component", "evr", "cum_evr", "n"]),
                           settings={"procedure": "paper"}, notes=notes)
    basis = shared_basis(total, kernel_size)
    low, high = range_pass(source, keys, basis)
    weights = {str(m): float(w) for m, w in (model_weights or {}).items()}
    units: dict[LayerKey, list[tuple[object, float]]] = {}
    for key, b in zip(keys, binned["depth_bin"]):
        w = weights.get(key[0], 1.0)
        group = str(membership[key[0]])
        if w > 0:
            units[key] = [((scope, group), w) for scope in
                          _scopes_of(ds_of.get(key[0], default_ds), b, pooled, by_bin)]
    limits = {key: sparse_limit(lp.layer_max, threshold) for key, lp in passes.items()}
    counts = hist_pass(source, units, limits, basis, low, high, n_bins)
    scopes = _ordered_scopes({scope for targets in units.values() for (scope, _), _ in targets})
    edges = histogram_edges(low, high, n_bins)
    div, per = scope_divergences(counts, scopes, basis, edges, eps)
    evr = basis.explained_variance_ratio
    rows, comp_rows, own_rows, bases, hists = [], [], [], {}, {}
    zero = np.zeros((k, n_bins))
    for scope in scopes:
        ca, cb = counts.get((scope, "a"), zero), counts.get((scope, "b"), zero)
        na, nb = float(ca[0].sum()), float(cb[0].sum())
        note = "" if na and nb else f"no non-sparse filters in group {'a' if not na else 'b'}"
        rows.append({"dataset": scope[0], "depth_bin": scope[1], "n_a": na, "n_b": nb, "divergence": div[scope],
                     "divergence_null": np.nan, "excess": np.nan, "range_low": low, "range_high": high,
                     "note": note})
        comp_rows += [{"dataset": scope[0], "depth_bin": scope[1], "component": i + 1, "evr": evr[i],
                       "kl_ab": np.nan, "kl_ba": np.nan, "kl_sym": per[scope][i], "weighted": evr[i] * per[scope][i]}
                      for i in range(k)]
        bases[scope] = basis
        hists[scope] = Histograms(np.broadcast_to(edges, (k, n_bins + 1)).copy(), np.stack([ca, cb]))
    # each group's own PCA per dataset (each model once), for the spectra figure
    for ds in dict.fromkeys(s[0] for s in scopes):
        for g in ("a", "b"):
            ms = [m for m in models if str(membership[m]) == g and (ds == ALL_DATASETS and pooled
                                                                     or ds_of.get(m, default_ds) == ds)]
            mom = pooled_moments(passes, ms, k)
            if mom.n >= 2:
                own = pca_from_moments(mom, kernel_size)
                cum = np.cumsum(own.explained_variance_ratio)
                own_rows += [{"dataset": ds, "depth_bin": "all", "group": g, "component": i + 1,
                              "evr": own.explained_variance_ratio[i], "cum_evr": cum[i], "n": mom.n} for i in range(k)]
    # the PCA spectrum entropy (science.md): per model, per group and pooled, each model once
    spectra = []
    for scope, name, ms in ([("model", m, [m]) for m in models]
                            + [("group", g, [m for m in models if str(membership[m]) == g]) for g in ("a", "b")]
                            + [("pooled", "all", models)]):
        mom = pooled_moments(passes, ms, k)
        h = spectrum_entropy(pca_from_moments(mom, kernel_size).explained_variance_ratio) if mom.n >= 2 else np.nan
        spectra.append({"scope": scope, "name": name,
                        "group": str(membership[name]) if scope == "model" else (name if scope == "group" else ""),
                        "dataset": ds_of.get(name, default_ds) if scope == "model" else "", "n": mom.n,
                        "pca_entropy": h})
    settings = {
        "procedure": "paper",
        "basis": "one PCA fitted on the scaled non-sparse filters of every compared model (each model once), "
                 "shared by every dataset and depth bin",
        "range": "one scalar interval for all components: min and max of the projections of every filter of "
                 "the compared models, sparse ones included",
        "range_mode": "global",
        "n_bins": n_bins,
        "hist_eps": eps,
        "hist_eps_scale": "density (np.histogram density=True), then normalised",
        "kl": "symmetric, natural log, weighted by the shared basis's explained variance ratio",
        "kernel_size": list(kernel_size),
        "threshold": threshold,
        "sparse_rule": "max|w| <= max|W| / (1 / threshold)",
        "by_bin": by_bin,
        "model_weights": "each model once" if not any(w != 1 for w in weights.values())
        else "pair lists: " + ", ".join(f"{m}={w:g}" for m, w in sorted(weights.items()) if w != 1),
    }
    return ShiftResult(
        pd.DataFrame(rows, columns=SHIFT_COLUMNS),
        pd.DataFrame(comp_rows, columns=empty_cols),
        pd.DataFrame(own_rows, columns=["dataset", "depth_bin", "group", "component", "evr", "cum_evr", "n"]),
        bases, hists, settings, notes,
        pd.DataFrame(spectra, columns=["scope", "name", "group", "dataset", "n", "pca_entropy"]),
    )
