"""Distribution shift between two groups of filters, streamed over chunks.

The default is the paper's procedure (docs/definitions.md), in :mod:`filterlens.analysis.paper`. This
module holds the *per-bin* variant (``procedure="per_bin"``), which differs from the paper in
fitting a basis and a range per scope and putting epsilon on the probability scale, and adds a
label-shuffled null. For each *scope* (a dataset, or all datasets, crossed with all layers or one depth bin):

1. take the scaled, non-sparse filters: drop the filters with ``max|w| <= 0.01 * max|W|``
   (``W`` the whole layer; ``<`` with ``inclusive=False``) and divide each remaining
   filter by its own l-inf norm;
2. fit a ``k``-component PCA (``k = kh*kw``, 9 for 3x3) on the filters of *both* groups
   together (the shared basis): mean and covariance are accumulated chunk by chunk in
   float64 with Chan's pairwise update (no filter matrix is ever held whole), the
   components are the eigenvectors of the covariance ``M2 / (n - 1)``, sorted by
   decreasing variance, each signed so that its largest-magnitude loading is positive;
3. project every filter onto the basis (centred: ``c = (x - mean) @ V.T``) and build, for
   each component, a ``n_bins``-bin (70) histogram of each group's coefficients over one
   shared range: ``range_mode="global"`` (default) uses the min and max over *all*
   projected coefficients of the scope (all components, both groups);
   ``"per_component"`` uses each component's own min and max. This needs one streamed
   pass for the range and one for the counts (``np.histogram`` with fixed edges, so the
   summed chunk counts equal the histogram of all coefficients at once);
4. ``p = counts / sum``; empty bins are set to ``eps = np.finfo(np.float32).eps`` and ``p``
   is renormalised; ``KL_sym = KL(p||q) + KL(q||p)`` in nats;
5. ``divergence = sum_k evr_k * KL_sym_k`` with ``evr`` the explained variance ratios of
   the shared basis.

Identical groups give exactly 0. A scope where either group has no filter, or with fewer
than 2 filters in all, is NaN with a note. Each model counts once by default;
``model_weights`` repeats a model's filters (e.g. a normal model once per pair it serves).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import pandas as pd

from ..errors import FilterlensError
from ..metrics import DEFAULT_THRESHOLD, filter_linf
from .bins import ALL, assign_bins, bin_order
from .stats import ALL_DATASETS, dataset_scopes

#: Empty histogram bins get this probability before renormalising (docs/definitions.md).
HIST_EPS = float(np.finfo(np.float32).eps)
#: The paper's number of histogram bins.
N_BINS = 70

FilterChunksFn = Callable[[str, str], Iterable[np.ndarray]]
Scope = tuple[str, str]  # (dataset, depth bin)


# --------------------------------------------------------------------------- pure pieces
def filter_array(chunk: object) -> np.ndarray:
    """The ``(n, kh, kw)`` array of a chunk: the chunk itself, or its ``filters`` attribute
    (as on the filter database's ``FilterChunk``)."""
    return np.asarray(getattr(chunk, "filters", chunk))


def histogram_probabilities(counts: np.ndarray, eps: float = HIST_EPS) -> np.ndarray:
    """``counts / counts.sum()`` along the last axis, empty bins set to ``eps``, renormalised."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = counts / total
    p = np.where(p == 0, eps, p)
    return p / p.sum(axis=-1, keepdims=True)


def kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``sum p log(p / q)`` (natural log) along the last axis; inputs must be > 0."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    return (p * np.log(p / q)).sum(axis=-1)


def symmetric_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``KL(p||q) + KL(q||p)`` along the last axis; exactly 0 when ``p == q``."""
    return kl_divergence(p, q) + kl_divergence(q, p)


def scaled_nonsparse_chunk(
    chunk: np.ndarray,
    layer_max: float,
    threshold: float = DEFAULT_THRESHOLD,
    inclusive: bool = True,
) -> np.ndarray:
    """Steps 1-2 for one chunk of a layer's filters, given the layer's ``max|W|``.

    Same rule as :func:`filterlens.metrics.sparse_mask` with the layer maximum supplied
    (a chunk alone does not know it): sparse when ``max|w| <= threshold * layer_max``
    (``<`` when not ``inclusive``); ``layer_max == 0``: every filter is sparse. Returns the
    non-sparse filters as float64 ``(n, kh*kw)``, each divided by its l-inf norm.
    """
    filters = chunk.reshape(chunk.shape[0], -1)
    if filters.shape[0] == 0 or layer_max == 0.0:
        return np.zeros((0, filters.shape[1]), dtype=np.float64)
    linf = filter_linf(filters)
    t = float(threshold * float(layer_max))  # a Python float, compared as in sparse_mask
    keep = linf > t if inclusive else linf >= t
    kept = filters[keep].astype(np.float64)
    kept /= linf[keep].astype(np.float64)[:, None]
    return kept


class Moments:
    """Weighted count, mean and centred sum of squares ``M2`` of rows, merged pairwise (Chan)."""

    def __init__(self, k: int):
        self.n = 0.0
        self.mean = np.zeros(k)
        self.m2 = np.zeros((k, k))

    def add(self, x: np.ndarray, weight: float = 1.0) -> None:
        """Add the rows of ``x`` (float64 ``(n, k)``), each counted ``weight`` times."""
        if len(x) == 0:
            return
        mean = x.mean(axis=0)
        c = x - mean
        self._merge(weight * len(x), mean, weight * (c.T @ c))

    def merge(self, other: "Moments") -> None:
        """Add another accumulator's rows (in place)."""
        self._merge(other.n, other.mean, other.m2)

    def merged(self, other: "Moments") -> "Moments":
        """A new accumulator holding the rows of both."""
        out = Moments(len(self.mean))
        out.merge(self)
        out.merge(other)
        return out

    def _merge(self, n: float, mean: np.ndarray, m2: np.ndarray) -> None:
        if n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2 = float(n), mean.copy(), m2.copy()
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + np.outer(delta, delta) * (self.n * n / total)
        self.n = total

    def covariance(self) -> np.ndarray:
        """``M2 / (n - 1)``; needs ``n >= 2``."""
        return self.m2 / (self.n - 1)


@dataclass
class PCABasis:
    """A PCA basis of filters: ``components`` ``(k, kh, kw)`` (rows of ``V`` reshaped),
    their variances, explained variance ratios, the mean filter and the (weighted) count."""

    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    mean: np.ndarray
    n: float

    @property
    def matrix(self) -> np.ndarray:
        """``V`` as ``(k, kh*kw)``."""
        return self.components.reshape(len(self.components), -1)

    def project(self, x: np.ndarray) -> np.ndarray:
        """Centred coefficients ``(x - mean) @ V.T`` of rows ``x``."""
        return (x - self.mean) @ self.matrix.T


def pca_from_moments(moments: Moments, kernel_size: tuple[int, int]) -> PCABasis:
    """The full PCA of accumulated moments (eigen-decomposition of the covariance).

    Components are sorted by decreasing variance (negative round-off clipped to 0) and
    signed so each one's largest-magnitude loading is positive (sklearn's current
    convention). Zero total variance gives NaN ratios.
    """
    var, vec = np.linalg.eigh(moments.covariance())
    order = np.argsort(var)[::-1]
    var = np.clip(var[order], 0.0, None)
    comps = vec[:, order].T
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    total = var.sum()
    ratio = var / total if total > 0 else np.full_like(var, np.nan)
    return PCABasis(comps.reshape(-1, *kernel_size), var, ratio, moments.mean.copy(), moments.n)


@dataclass
class Histograms:
    """Per-component histograms of one scope: ``edges`` ``(k, n_bins + 1)`` and ``counts``
    ``(2, k, n_bins)`` (group ``a`` then ``b``; weighted counts)."""

    edges: np.ndarray
    counts: np.ndarray


@dataclass
class ShiftResult:
    """Everything the distribution-shift computation produced.

    - ``table``: one row per scope: ``dataset, depth_bin, n_a, n_b`` (non-sparse filters,
      weighted), ``divergence`` (EVR-weighted symmetric KL), ``range_low, range_high``,
      ``note``;
    - ``components``: per scope and component: ``evr, kl_ab, kl_ba, kl_sym, weighted``;
    - ``own_pca``: each group's own PCA per scope: ``evr`` and cumulative ``cum_evr``;
    - ``bases``/``histograms``: by ``(dataset, depth_bin)``, for figures;
    - ``settings`` and ``notes``;
    - ``spectra`` (paper procedure): the PCA spectrum entropy per model, per group and pooled.
    """

    table: pd.DataFrame
    components: pd.DataFrame
    own_pca: pd.DataFrame
    bases: dict[Scope, PCABasis] = field(default_factory=dict)
    histograms: dict[Scope, Histograms] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: the paper's PCA spectrum entropy (paper procedure only): per model, per group and pooled
    spectra: pd.DataFrame = field(default_factory=pd.DataFrame)


SHIFT_COLUMNS = ["dataset", "depth_bin", "n_a", "n_b", "divergence", "divergence_null", "excess", "range_low",
                 "range_high", "note"]


# --------------------------------------------------------------------------- streaming
@dataclass
class _Unit:
    model: str
    layer: str
    group: int  # 0 = a, 1 = b
    weight: float
    layer_max: float | None
    expected: int | None  # n_nonsparse from the layers table, when known
    scopes: list[Scope]


def _units(
    layers: pd.DataFrame,
    membership: Mapping[str, str],
    datasets: Mapping[str, str] | None,
    model_weights: Mapping[str, float] | None,
    by_bin: bool,
) -> list[_Unit]:
    binned = layers if "depth_bin" in layers.columns else assign_bins(layers)
    if datasets is None:
        ds_of: dict[str, str] = {}
        missing = ALL_DATASETS  # one dataset scope: everything
    else:
        ds_of = {str(m): str(d) for m, d in datasets.items()}
        missing = "unknown"
    present = {ds_of.get(str(m), missing) for m in binned["model"] if str(m) in membership}
    pooled = len(present) > 1
    has_max = "weight_max_abs" in binned.columns
    units = []
    for row in binned.itertuples(index=False):
        model = str(row.model)
        if model not in membership:
            continue
        ds = ds_of.get(model, missing)
        bins = [ALL]
        if by_bin and isinstance(row.depth_bin, str):
            bins.append(row.depth_bin)
        scopes = [(ds, b) for b in bins] + ([(ALL_DATASETS, b) for b in bins] if pooled else [])
        m = getattr(row, "weight_max_abs", None) if has_max else None
        m = float(m) if m is not None and pd.notna(m) and np.isfinite(float(m)) else None
        expected = getattr(row, "n_nonsparse", None)
        expected = int(expected) if expected is not None and pd.notna(expected) else None
        weight = float((model_weights or {}).get(model, 1.0))
        if weight > 0:
            group = 0 if membership[model] == "a" else 1
            units.append(_Unit(model, str(row.layer), group, weight, m, expected, scopes))
    return units


def distribution_shift(
    layers: pd.DataFrame,
    membership: Mapping[str, str],
    filter_chunks_fn: FilterChunksFn,
    *,
    datasets: Mapping[str, str] | None = None,
    model_weights: Mapping[str, float] | None = None,
    by_bin: bool = True,
    kernel_size: tuple[int, int] = (3, 3),
    n_bins: int = N_BINS,
    range_mode: str = "global",
    threshold: float = DEFAULT_THRESHOLD,
    inclusive: bool = True,
    eps: float = HIST_EPS,
    null_seed: int = 0,
    procedure: str = "paper",
) -> ShiftResult:
    """Streamed distribution shift between group ``a`` and group ``b``.

    ``procedure="paper"`` (default): the paper's procedure of docs/definitions.md, see
    :func:`filterlens.analysis.paper.paper_distribution_shift` (one shared basis and one scalar
    range for the whole comparison, density-scale epsilon; ``range_mode`` and ``null_seed``
    do not apply). ``procedure="per_bin"``: the variant of the module docstring, a basis and
    a range per scope, probability-scale epsilon, and the label-shuffled null and excess.

    ``layers``: per-layer rows (``model, layer`` and ``depth_bin`` or ``conv_depth[_norm]``;
    ``weight_max_abs`` when known saves a pass per layer). ``membership``: ``model -> "a" |
    "b"``; other models are ignored. ``filter_chunks_fn(model, layer)`` yields the layer's
    filters as ``(n, kh, kw)`` arrays (or objects with such a ``filters`` attribute); it is called up to three times per layer (four when
    ``weight_max_abs`` is unknown), so it must give the same filters each time.
    ``datasets``: ``model -> dataset`` for per-dataset scopes (plus ``"all"`` when several);
    without it there is one dataset scope, ``"all"``. Filters with NaN/Inf are dropped and
    counted in ``notes``.
    """
    if procedure == "paper":
        from .paper import paper_distribution_shift

        return paper_distribution_shift(layers, membership, filter_chunks_fn, datasets=datasets,
                                        model_weights=model_weights, by_bin=by_bin, kernel_size=kernel_size,
                                        n_bins=n_bins, threshold=threshold, eps=eps)
    if procedure != "per_bin":
        raise ValueError("procedure must be 'paper' or 'per_bin'")
    if range_mode not in ("global", "per_component"):
        raise ValueError("range_mode must be 'global' or 'per_component'")
    stream = _FilterStream(filter_chunks_fn, (int(kernel_size[0]), int(kernel_size[1])), threshold, inclusive)
    units = _units(layers, membership, datasets, model_weights, by_bin)
    moments, notes = _moments_pass(units, stream)                      # pass 1
    scopes = _ordered_scopes({s for u in units for s in u.scopes})
    bases, own_rows, scope_notes = _fit_bases(scopes, moments, stream.kernel_size)
    ranges = _ranges_pass(units, bases, stream, range_mode)            # pass 2
    counts, null_counts = _histogram_pass(units, bases, stream, ranges, moments, n_bins, null_seed)  # pass 3
    rows, comp_rows, hists = _scope_rows(scopes, moments, bases, ranges, counts, null_counts, scope_notes,
                                         stream.k, n_bins, eps)
    settings = {
        "procedure": "per_bin",
        "n_bins": n_bins,
        "range_mode": range_mode,
        "hist_eps": eps,
        "kl": "symmetric, natural log, weighted by the shared basis's explained variance ratio",
        "null": "divergence_null: the same measure between two random pseudo-groups of the pooled "
                f"filters with the real groups' sizes (seed {null_seed}); excess = divergence - null",
        "kernel_size": list(stream.kernel_size),
        "threshold": threshold,
        "inclusive": inclusive,
        "by_bin": by_bin,
        "basis": "PCA fitted per scope on both groups' scaled non-sparse filters together",
        "model_weights": "each model once"
        if not model_weights
        else "weighted: " + ", ".join(f"{m}={w:g}" for m, w in sorted(model_weights.items()) if w != 1),
    }
    return ShiftResult(
        pd.DataFrame(rows, columns=SHIFT_COLUMNS),
        pd.DataFrame(comp_rows, columns=["dataset", "depth_bin", "component", "evr", "kl_ab", "kl_ba", "kl_sym", "weighted"]),
        pd.DataFrame(own_rows, columns=["dataset", "depth_bin", "group", "component", "evr", "cum_evr", "n"]),
        bases,
        hists,
        settings,
        notes,
    )


class _FilterStream:
    """A layer's filters as flat ``(n, kh*kw)`` rows, checked, NaN/Inf rows left out (and
    counted in ``nonfinite`` when asked), or scaled and non-sparse (:func:`scaled_nonsparse_chunk`)."""

    def __init__(self, filter_chunks_fn: FilterChunksFn, kernel_size: tuple[int, int], threshold: float,
                 inclusive: bool):
        self.filter_chunks_fn, self.kernel_size = filter_chunks_fn, kernel_size
        self.threshold, self.inclusive = threshold, inclusive
        self.k = kernel_size[0] * kernel_size[1]
        self.nonfinite = 0

    def chunks(self, unit: _Unit, count: bool = False) -> Iterator[np.ndarray]:
        kh, kw = self.kernel_size
        for chunk in self.filter_chunks_fn(unit.model, unit.layer):
            chunk = filter_array(chunk)
            if chunk.ndim != 3 or tuple(chunk.shape[1:]) != self.kernel_size:
                raise FilterlensError(
                    f"{unit.model}/{unit.layer}: filter chunk of shape {chunk.shape}, expected (n, {kh}, {kw})"
                )
            flat = chunk.reshape(len(chunk), self.k)
            ok = np.isfinite(flat).all(axis=1)
            if count:
                self.nonfinite += int(len(ok) - ok.sum())
            yield flat if ok.all() else flat[ok]

    def scaled(self, unit: _Unit, count: bool = False) -> Iterator[np.ndarray]:
        if unit.layer_max is None:  # one extra pass for the layer's max |W|
            linf_max = [float(filter_linf(c).max()) for c in self.chunks(unit) if len(c)]
            unit.layer_max = max(linf_max, default=0.0)
        for flat in self.chunks(unit, count):
            yield scaled_nonsparse_chunk(flat, unit.layer_max, self.threshold, self.inclusive)

    def projected(self, units: list[_Unit], bases: Mapping[Scope, PCABasis]
                  ) -> Iterator[tuple[_Unit, Scope, np.ndarray]]:
        """Every chunk of every unit, projected onto the basis of each scope it belongs to."""
        for unit in units:
            live = [s for s in unit.scopes if s in bases]
            if not live:
                continue
            for x in self.scaled(unit):
                if len(x):
                    for s in live:
                        yield unit, s, bases[s].project(x)


def _moments_pass(units: list[_Unit], stream: _FilterStream) -> tuple[dict[tuple[Scope, int], Moments], list[str]]:
    """Pass 1: weighted moments of the scaled non-sparse filters per (scope, group)."""
    notes: list[str] = []
    moments: dict[tuple[Scope, int], Moments] = {}
    for unit in units:
        streamed = 0
        for x in stream.scaled(unit, count=True):
            streamed += len(x)
            part = Moments(stream.k)
            part.add(x, unit.weight)
            for scope in unit.scopes:
                moments.setdefault((scope, unit.group), Moments(stream.k)).merge(part)
        if unit.expected is not None and streamed != unit.expected:
            notes.append(
                f"{unit.model}/{unit.layer}: {streamed} non-sparse filters streamed, "
                f"the layers table says {unit.expected}"
            )
    if stream.nonfinite:
        notes.append(f"{stream.nonfinite} filter(s) with NaN/Inf values left out")
    return moments, notes


def _fit_bases(scopes: list[Scope], moments: Mapping[tuple[Scope, int], Moments], kernel_size: tuple[int, int]
               ) -> tuple[dict[Scope, PCABasis], list[dict], dict[Scope, str]]:
    """The shared basis of each scope (both groups pooled), each group's own spectrum, and why
    a scope has no basis."""
    k = kernel_size[0] * kernel_size[1]
    empty = Moments(k)
    bases: dict[Scope, PCABasis] = {}
    own_rows, scope_notes = [], {}
    for scope in scopes:
        ma, mb = moments.get((scope, 0), empty), moments.get((scope, 1), empty)
        for g, mom in ((0, ma), (1, mb)):
            if mom.n >= 2:
                own = pca_from_moments(mom, kernel_size)
                cum = np.cumsum(own.explained_variance_ratio)
                own_rows += [
                    {"dataset": scope[0], "depth_bin": scope[1], "group": "ab"[g], "component": i + 1,
                     "evr": own.explained_variance_ratio[i], "cum_evr": cum[i], "n": mom.n}
                    for i in range(k)
                ]
        if ma.n == 0 or mb.n == 0:
            scope_notes[scope] = "no non-sparse filters in " + " and ".join(
                name for name, m in (("group a", ma), ("group b", mb)) if m.n == 0
            )
            continue
        pooled = ma.merged(mb)
        if pooled.n < 2:
            scope_notes[scope] = "fewer than 2 non-sparse filters"
            continue
        bases[scope] = pca_from_moments(pooled, kernel_size)
    return bases, own_rows, scope_notes


def _ranges_pass(units: list[_Unit], bases: Mapping[Scope, PCABasis], stream: _FilterStream,
                 range_mode: str) -> dict[Scope, np.ndarray]:
    """Pass 2: the range of the coefficients per scope, ``(k, 2)`` rows of (low, high): one
    range for all components (``"global"``) or one per component."""
    k = stream.k
    lo = {s: np.full(k, np.inf) for s in bases}
    hi = {s: np.full(k, -np.inf) for s in bases}
    for _, s, coef in stream.projected(units, bases):
        np.minimum(lo[s], coef.min(axis=0), out=lo[s])
        np.maximum(hi[s], coef.max(axis=0), out=hi[s])
    ranges: dict[Scope, np.ndarray] = {}
    for s in bases:
        if range_mode == "global":
            ranges[s] = np.tile([lo[s].min(), hi[s].max()], (k, 1))
        else:
            ranges[s] = np.stack([lo[s], hi[s]], axis=1)
    return ranges


def _histogram_pass(units: list[_Unit], bases: Mapping[Scope, PCABasis], stream: _FilterStream,
                    ranges: Mapping[Scope, np.ndarray], moments: Mapping[tuple[Scope, int], Moments], n_bins: int,
                    null_seed: int) -> tuple[dict[Scope, np.ndarray], dict[Scope, np.ndarray]]:
    """Pass 3: weighted histogram counts ``(2, k, n_bins)`` per scope. Alongside, the same
    filters are dealt at random to two pseudo-groups of the real groups' sizes: their
    divergence is what sampling noise alone gives at these sample sizes (the histogram KL is
    biased upwards for few filters)."""
    k = stream.k
    counts = {s: np.zeros((2, k, n_bins)) for s in bases}
    null_counts = {s: np.zeros((2, k, n_bins)) for s in bases}
    share_a = {s: moments[(s, 0)].n / (moments[(s, 0)].n + moments[(s, 1)].n) for s in bases}
    rng = np.random.default_rng(null_seed)
    for unit, s, coef in stream.projected(units, bases):
        # the clip is a no-op (pass 2 saw these very values); it guards against a value
        # falling just outside the range and being dropped silently
        coef = np.clip(coef, ranges[s][:, 0], ranges[s][:, 1])
        pseudo_a = rng.random(len(coef)) < share_a[s]
        for c in range(k):
            h, _ = np.histogram(coef[:, c], bins=n_bins, range=tuple(ranges[s][c]))
            counts[s][unit.group, c] += unit.weight * h
            ha, _ = np.histogram(coef[pseudo_a, c], bins=n_bins, range=tuple(ranges[s][c]))
            null_counts[s][0, c] += unit.weight * ha
            null_counts[s][1, c] += unit.weight * (h - ha)
    return counts, null_counts


def _scope_rows(scopes: list[Scope], moments: Mapping[tuple[Scope, int], Moments], bases: Mapping[Scope, PCABasis],
                ranges: Mapping[Scope, np.ndarray], counts: Mapping[Scope, np.ndarray],
                null_counts: Mapping[Scope, np.ndarray], scope_notes: Mapping[Scope, str], k: int, n_bins: int,
                eps: float) -> tuple[list[dict], list[dict], dict[Scope, Histograms]]:
    """The shift table's row per scope, the per-component rows and the histograms."""
    empty = Moments(k)
    rows, comp_rows, hists = [], [], {}
    for scope in scopes:
        ma, mb = moments.get((scope, 0), empty), moments.get((scope, 1), empty)
        row = {"dataset": scope[0], "depth_bin": scope[1], "n_a": ma.n, "n_b": mb.n, "divergence": np.nan, "divergence_null": np.nan, "excess": np.nan, "range_low": np.nan,
               "range_high": np.nan, "note": scope_notes.get(scope, "")}
        if scope in bases:
            evr = bases[scope].explained_variance_ratio
            p = histogram_probabilities(counts[scope][0], eps)
            q = histogram_probabilities(counts[scope][1], eps)
            kl_ab, kl_ba = kl_divergence(p, q), kl_divergence(q, p)
            kl_sym = kl_ab + kl_ba
            row["divergence"] = float((evr * kl_sym).sum()) if np.isfinite(evr).all() else np.nan
            pn = histogram_probabilities(null_counts[scope][0], eps)
            qn = histogram_probabilities(null_counts[scope][1], eps)
            null = symmetric_kl(pn, qn)
            row["divergence_null"] = float((evr * null).sum()) if np.isfinite(evr).all() else np.nan
            row["excess"] = row["divergence"] - row["divergence_null"]
            if not np.isfinite(evr).all():
                row["note"] = "all filters are one pattern (zero variance)"
            row["range_low"], row["range_high"] = float(ranges[scope][:, 0].min()), float(ranges[scope][:, 1].max())
            edges = np.stack([np.histogram_bin_edges([], bins=n_bins, range=tuple(r)) for r in ranges[scope]])
            hists[scope] = Histograms(edges, counts[scope])
            comp_rows += [
                {"dataset": scope[0], "depth_bin": scope[1], "component": i + 1, "evr": evr[i],
                 "kl_ab": kl_ab[i], "kl_ba": kl_ba[i], "kl_sym": kl_sym[i], "weighted": evr[i] * kl_sym[i]}
                for i in range(k)
            ]
        rows.append(row)
    return rows, comp_rows, hists


def _ordered_scopes(scopes: set[Scope]) -> list[Scope]:
    datasets = dataset_scopes(d for d, _ in scopes if d != ALL_DATASETS)
    if any(d == ALL_DATASETS for d, _ in scopes) and ALL_DATASETS not in datasets:
        datasets.append(ALL_DATASETS)
    out = []
    for ds in datasets:
        out += [(ds, b) for b in bin_order(b for d, b in scopes if d == ds)]
    return out
