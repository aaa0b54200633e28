"""Two groups of models, and matched pairs between them.

A group is chosen from a models table (one row per model, column ``model``) by a
*selector*: a pandas query string (``"training == 'adversarial' and dataset == 'cifar10'"``),
a callable ``f(models) -> boolean mask``, or an explicit list of model names. The default
compares ``training == 'adversarial'`` (group ``a``, "robust") with ``training == 'normal'``
(group ``b``, "normal").

Pairs match each model of group ``a`` with a counterpart in group ``b``: read from a CSV
(columns ``robust,normal`` or ``model_a,model_b``) or matched automatically on equal
``arch`` and ``dataset``. A normal model may serve several pairs; :attr:`Pairs.shared`
lists those cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from os import PathLike
from typing import Any, Callable, Sequence, Union

import pandas as pd

from ..errors import FilterlensError

Selector = Union[str, Callable[[pd.DataFrame], Any], Sequence[str]]

_PAIR_COLUMNS = [("robust", "normal"), ("model_a", "model_b"), ("adversarial", "normal")]


@dataclass(frozen=True)
class GroupSpec:
    """How to pick the two groups from the models table.

    ``a`` and ``b`` are selectors (see the module docstring); ``name_a``/``name_b`` are the
    names shown in tables, figures and the report.
    """

    a: Selector = "training == 'adversarial'"
    b: Selector = "training == 'normal'"
    name_a: str = "robust"
    name_b: str = "normal"

    @classmethod
    def by_column(
        cls,
        column: str,
        value_a: Any,
        value_b: Any,
        name_a: str | None = None,
        name_b: str | None = None,
    ) -> "GroupSpec":
        """Groups ``models[column] == value_a`` versus ``models[column] == value_b``."""

        def pick(value: Any) -> Callable[[pd.DataFrame], pd.Series]:
            def select(models: pd.DataFrame) -> pd.Series:
                if column not in models.columns:
                    raise FilterlensError(f"the models table has no column {column!r}")
                return models[column] == value

            select.__name__ = f"{column} == {value!r}"
            return select

        return cls(pick(value_a), pick(value_b), name_a or str(value_a), name_b or str(value_b))

    def describe(self) -> dict[str, str]:
        """A JSON-friendly description of both selectors."""
        return {
            "name_a": self.name_a,
            "name_b": self.name_b,
            "a": describe_selector(self.a),
            "b": describe_selector(self.b),
        }


def describe_selector(selector: Selector) -> str:
    """A readable form of a selector: the query, ``callable <name>`` or ``models [...]``."""
    if isinstance(selector, str):
        return selector
    if callable(selector):
        return f"callable {getattr(selector, '__name__', repr(selector))}"
    return "models " + ", ".join(map(str, selector))


def select_models(models: pd.DataFrame, selector: Selector) -> list[str]:
    """Names of the models (column ``model``) that ``selector`` picks, in table order."""
    if isinstance(selector, str):
        try:
            picked = models.query(selector)
        except Exception as exc:  # pandas raises many kinds for a bad expression
            raise FilterlensError(f"bad group query {selector!r}: {exc}") from exc
        return [str(m) for m in picked["model"]]
    if callable(selector):
        mask = pd.Series(selector(models), index=models.index).fillna(False).astype(bool)
        return [str(m) for m in models.loc[mask, "model"]]
    names = [str(s) for s in selector]
    unknown = sorted(set(names) - set(models["model"].astype(str)))
    if unknown:
        raise FilterlensError(f"unknown models in group: {', '.join(unknown)}")
    return names


@dataclass
class Groups:
    """The two resolved groups. ``a`` and ``b`` are model names, each sorted."""

    name_a: str
    name_b: str
    a: list[str]
    b: list[str]
    spec: dict[str, str] = field(default_factory=dict)

    @property
    def membership(self) -> pd.Series:
        """``model -> "a" | "b"``."""
        return pd.Series({**{m: "a" for m in self.a}, **{m: "b" for m in self.b}}, name="group")

    def name(self, key: str) -> str:
        """Display name of group key ``"a"`` or ``"b"``."""
        return self.name_a if key == "a" else self.name_b

    def restrict(self, models: set[str]) -> "Groups":
        """The same groups keeping only ``models``."""
        return Groups(
            self.name_a,
            self.name_b,
            [m for m in self.a if m in models],
            [m for m in self.b if m in models],
            dict(self.spec),
        )


def split_groups(models: pd.DataFrame, spec: GroupSpec | None = None) -> Groups:
    """Resolve ``spec`` against ``models``.

    Raises :class:`~filterlens.errors.FilterlensError` when a model falls in both groups,
    when a group is empty, or when the table has no ``model`` column.
    """
    spec = spec or GroupSpec()
    if "model" not in models.columns:
        raise FilterlensError("the models table needs a 'model' column")
    a = sorted(dict.fromkeys(select_models(models, spec.a)))
    b = sorted(dict.fromkeys(select_models(models, spec.b)))
    both = sorted(set(a) & set(b))
    if both:
        raise FilterlensError(f"models in both groups: {', '.join(both)}")
    for name, members, sel in ((spec.name_a, a, spec.a), (spec.name_b, b, spec.b)):
        if not members:
            raise FilterlensError(f"group {name!r} is empty (selector: {describe_selector(sel)})")
    return Groups(spec.name_a, spec.name_b, a, b, spec.describe())


@dataclass
class Pairs:
    """Matched pairs ``(model_a, model_b)``.

    ``table`` has columns ``model_a, model_b, dataset, arch, source`` (``csv`` or ``auto``)
    and ``n_candidates`` (for automatic matching: how many counterparts fitted).
    ``unmatched`` lists group-``a`` models without a counterpart. ``shared`` has one row per
    group-``b`` model that serves more than one pair: ``model_b, n_pairs, models_a``.
    """

    table: pd.DataFrame
    unmatched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def shared(self) -> pd.DataFrame:
        counts = self.table.groupby("model_b", sort=True)["model_a"].agg(list)
        rows = [
            {"model_b": b, "n_pairs": len(a), "models_a": ", ".join(a)}
            for b, a in counts.items()
            if len(a) > 1
        ]
        return pd.DataFrame(rows, columns=["model_b", "n_pairs", "models_a"])

    def multiplicity(self) -> pd.Series:
        """How many pairs each model takes part in (``model -> count``)."""
        counts = pd.concat([self.table["model_a"], self.table["model_b"]]).value_counts()
        return counts.rename("n_pairs")

    def describe(self) -> list[str]:
        """Human-readable lines: pair count, unmatched models, shared counterparts."""
        lines = [f"{len(self.table)} pair(s)"]
        if self.unmatched:
            lines.append("no counterpart for: " + ", ".join(self.unmatched))
        for row in self.shared.itertuples():
            lines.append(f"{row.model_b} is the counterpart of {row.n_pairs} models: {row.models_a}")
        return lines + list(self.notes)


def _meta(models: pd.DataFrame, name: str, column: str) -> Any:
    if column not in models.columns:
        return None
    hit = models.loc[models["model"].astype(str) == name, column]
    return None if hit.empty or pd.isna(hit.iloc[0]) else hit.iloc[0]


def pair_list(source: str | PathLike | pd.DataFrame) -> pd.DataFrame:
    """A pairs table as the pair list ``robust, normal[, dataset, arch]``, rows as given.

    Accepts a CSV path or a DataFrame in the paper's format (``robust_vs_normal_pairings.csv``:
    an unnamed index column, ``Robust``, ``Normal``, ``Arch``, ``Dataset``) or filterlens's
    (``robust,normal`` or ``model_a,model_b`` or ``adversarial,normal``, optional
    ``dataset``/``arch``); column names are matched case-insensitively. Duplicate rows are
    kept: the paper's pair lists count a model once per row. Names are stripped strings;
    a row without both names is an error.
    """
    if isinstance(source, pd.DataFrame):
        frame = source
    else:
        try:
            frame = pd.read_csv(source, dtype=str, keep_default_na=False)
        except FileNotFoundError:
            raise FilterlensError(f"{source}: no such pairs file") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, IsADirectoryError) as exc:
            raise FilterlensError(f"{source}: not a readable pairs CSV ({str(exc).splitlines()[0]})") from None
    # the paper's CSV was written with its index: an unnamed first column
    frame = frame.loc[:, [not (str(c).startswith("Unnamed:") or str(c).strip() == "") for c in frame.columns]]
    lower = {str(c).strip().lower(): c for c in frame.columns}
    cols = next(((lower[a], lower[b]) for a, b in _PAIR_COLUMNS if a in lower and b in lower), None)
    if cols is None:
        raise FilterlensError(
            "a pairs table needs columns Robust,Normal (the paper's) or robust,normal or model_a,model_b; got "
            + (", ".join(map(str, frame.columns)) or "no columns")
        )
    out = pd.DataFrame({"robust": frame[cols[0]], "normal": frame[cols[1]]})
    for name in ("dataset", "arch"):
        if name in lower:
            out[name] = frame[lower[name]]
    for c in out.columns:
        out[c] = out[c].map(lambda v: "" if v is None or (isinstance(v, float) and v != v) else str(v).strip())
    empty = out.index[(out["robust"] == "") | (out["normal"] == "")]
    if len(empty):
        raise FilterlensError(f"pairs table row(s) {', '.join(map(str, list(empty)[:5]))} lack a model name")
    return out.reset_index(drop=True)


def load_pairs(
    source: str | PathLike | pd.DataFrame, models: pd.DataFrame, groups: Groups | None = None
) -> Pairs:
    """Pairs from a CSV path or a DataFrame (any format :func:`pair_list` reads, the paper's too).

    Every named model must be in ``models``; with ``groups``, the first column's models must
    be in group ``a`` and the second's in group ``b``. Duplicate rows are dropped once, with
    a note. A pair whose two models have different datasets is kept with a note.
    ``source="paper"``: the paper's 71 pairs (bundled RobustBench snapshot), those present.
    """
    if isinstance(source, str) and source == "paper":
        from ..sources.robustbench import resolve_paper_pairs

        source = resolve_paper_pairs(models)
    frame = pair_list(source)
    table = pd.DataFrame({"model_a": frame["robust"], "model_b": frame["normal"]})
    notes = []
    dupes = int(table.duplicated().sum())
    if dupes:
        notes.append(f"{dupes} duplicate pair row(s) ignored")
        table = table.drop_duplicates()
    known = set(models["model"].astype(str))
    unknown = sorted((set(table["model_a"]) | set(table["model_b"])) - known)
    if unknown:
        raise FilterlensError(f"pairs name unknown models: {', '.join(unknown)}")
    if groups is not None:
        wrong_a = sorted(set(table["model_a"]) - set(groups.a))
        wrong_b = sorted(set(table["model_b"]) - set(groups.b))
        if wrong_a or wrong_b:
            raise FilterlensError(
                "pairs do not fit the groups: "
                + "; ".join(
                    s
                    for s in (
                        f"not in {groups.name_a!r}: {', '.join(wrong_a)}" if wrong_a else "",
                        f"not in {groups.name_b!r}: {', '.join(wrong_b)}" if wrong_b else "",
                    )
                    if s
                )
            )
    table["dataset"] = [_meta(models, a, "dataset") for a in table["model_a"]]
    table["arch"] = [_meta(models, a, "arch") for a in table["model_a"]]
    table["source"] = "csv"
    table["n_candidates"] = 1
    for a, b, ds in zip(table["model_a"], table["model_b"], table["dataset"]):
        ds_b = _meta(models, b, "dataset")
        if ds is not None and ds_b is not None and ds != ds_b:
            notes.append(f"pair {a} / {b} spans two datasets ({ds} / {ds_b})")
    return Pairs(table.reset_index(drop=True), [], notes)


def match_pairs(
    models: pd.DataFrame, groups: Groups, keys: Sequence[str] = ("arch", "dataset")
) -> Pairs:
    """Match each group-``a`` model with the group-``b`` model of equal ``keys``.

    Among several candidates the one with the highest ``clean_acc`` wins (ties and missing
    accuracies: the alphabetically first name); ``n_candidates`` records the choice.
    Models with a missing key are never matched.
    """
    missing = [k for k in keys if k not in models.columns]
    if missing:
        raise FilterlensError(f"cannot match pairs: models table lacks {', '.join(missing)}")
    meta = models.assign(model=models["model"].astype(str)).set_index("model")
    candidates = meta.loc[groups.b]
    rows, unmatched = [], []
    for a in groups.a:
        key = tuple(meta.at[a, k] for k in keys)
        if any(pd.isna(v) for v in key):
            unmatched.append(a)
            continue
        fit = candidates
        for k, v in zip(keys, key):
            fit = fit[fit[k] == v]
        if fit.empty:
            unmatched.append(a)
            continue
        acc = fit["clean_acc"] if "clean_acc" in fit.columns else pd.Series(float("nan"), index=fit.index)
        order = pd.DataFrame({"acc": acc.astype(float).fillna(float("-inf")), "name": fit.index})
        best = order.sort_values(["acc", "name"], ascending=[False, True]).iloc[0]["name"]
        rows.append(
            {
                "model_a": a,
                "model_b": str(best),
                "dataset": meta.at[a, "dataset"] if "dataset" in meta.columns else None,
                "arch": meta.at[a, "arch"] if "arch" in meta.columns else None,
                "source": "auto",
                "n_candidates": int(len(fit)),
            }
        )
    table = pd.DataFrame(rows, columns=["model_a", "model_b", "dataset", "arch", "source", "n_candidates"])
    notes = [f"matched on {', '.join(keys)}"]
    return Pairs(table, unmatched, notes)
