"""What a first-layer study returns: tables, statistics, example activations (no torch)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_path, write_text_atomic
from ..jsonable import to_jsonable
from .stats import first_layer_claims


@dataclass
class FirstLayerExample:
    """One image through one model's first layer, for the paper's figure."""

    model: str
    group: str
    weight: np.ndarray  # (c_out, c_in, kh, kw)
    x: np.ndarray  # (C, H, W) in [0, 1]
    x_adv: np.ndarray
    a_clean: np.ndarray  # (c_out, H', W')
    a_adv: np.ndarray
    label: int
    activation: str


@dataclass
class FirstLayerResult:
    """The outcome of :func:`first_layer_study`.

    - ``per_model``: one row per model (group, layer, accuracies on the images, the metrics);
    - ``per_filter``: one row per model and output channel of the first conv;
    - ``per_kernel``: one row per model and kernel ``W[o, i]`` (shape and frequency measures);
    - ``stats``: robust vs normal, per metric, at the model level (Mann-Whitney, bootstrap CI,
      Cohen's d over the models) and at the filter level (output channels pooled over the models
      of each group: descriptive, the filters of one model are not independent samples);
    - ``examples``: per model the first image through the layer (for the figure);
    - ``settings``, ``notes``.
    """

    per_model: pd.DataFrame
    per_filter: pd.DataFrame
    per_kernel: pd.DataFrame
    stats: pd.DataFrame
    examples: dict[str, FirstLayerExample]
    settings: dict
    notes: list[str] = field(default_factory=list)

    def to_dict(self, filters: bool = True) -> dict:
        """JSON-ready: settings, per-model rows, statistics, claim verdicts (and per-filter rows);
        NaN -> None."""
        out = {
            "settings": self.settings,
            "per_model": self.per_model.to_dict("records"),
            "stats": self.stats.to_dict("records"),
            "claims": first_layer_claims(self.stats).to_dict("records"),
            "notes": self.notes,
        }
        if filters:
            out["per_filter"] = self.per_filter.to_dict("records")
        return to_jsonable(out)

    def to_json(self, path: str | PathLike | None = None, indent: int = 2, filters: bool = True) -> str:
        """:meth:`to_dict` as JSON text (NaN written as null), also written to ``path`` if given."""
        text = json.dumps(self.to_dict(filters), indent=indent, allow_nan=False)
        if path is not None:
            write_text_atomic(path, text + "\n")
        return text

    def save(self, out_dir: str | PathLike) -> list[Path]:
        """Write ``per_model.csv``, ``per_filter.csv``, ``per_kernel.csv``, ``stats.csv`` and
        ``first_layer.json`` into ``out_dir`` (created), each atomically; returns the paths."""
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, df in (("per_model", self.per_model), ("per_filter", self.per_filter),
                         ("per_kernel", self.per_kernel), ("stats", self.stats)):
            p = d / f"{name}.csv"
            with atomic_path(p) as tmp:  # a failed write leaves the previous file
                df.to_csv(tmp, index=False)
            paths.append(p)
        p = d / "first_layer.json"
        self.to_json(p)
        paths.append(p)
        return paths


__all__ = ["FirstLayerExample", "FirstLayerResult"]
