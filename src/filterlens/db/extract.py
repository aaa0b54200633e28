"""Extract many model sources into a filter database, one at a time (memory: one model).

:mod:`filterlens.db.distributed` runs the same steps on a Dask cluster; the pieces both use
(metadata of a model, the result of a failure) live here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import pandas as pd

from ..errors import FilterlensError
from ..metrics import DEFAULT_THRESHOLD
from ..types import ModelFilters
from .errors import DuplicateModelError
from .meta import MetaTable, normalize_metadata
from .store import FilterDB, KernelSize, model_sha256

#: ``loader(source, arch, name) -> ModelFilters``
Loader = Callable[[str, "str | None", "str | None"], ModelFilters]
#: ``measurer(mf) -> per-layer DataFrame`` (columns as :func:`filterlens.measure.measure_model`)
Measurer = Callable[[ModelFilters], pd.DataFrame]


@dataclass
class ExtractResult:
    """The outcome for one source: ``added``, ``skipped`` (already stored) or ``failed``."""

    source: str
    status: str
    model: str | None = None
    message: str = ""
    n_layers: int = 0
    n_filters: int = 0


def default_loader(source: str, arch: str | None, name: str | None) -> ModelFilters:
    from ..sources import load_model  # imported late: heavy, and optional for the database itself

    return load_model(source, arch=arch, name=name)


def _load_robustbench(source: str, name: str | None, meta: Mapping[str, Any]) -> ModelFilters:
    """``robustbench:NAME`` with the data set and threat model given as metadata (or defaults)."""
    from ..sources.robustbench_source import load_robustbench

    return load_robustbench(source, name=name, dataset=str(meta.get("dataset") or "cifar10"),
                            threat_model=str(meta.get("threat_model") or "Linf"))


#: File names ``extract`` picks up in a directory given as a source.
MODEL_SUFFIXES = (".onnx", ".onnx.gz", ".safetensors", ".pt", ".pth", ".th", ".ckpt", ".bin")


def expand_sources(sources: Iterable[str]) -> list[str]:
    """Sources with each directory replaced by the model files under it (recursively, sorted
    by path; see :data:`MODEL_SUFFIXES`). A directory without any stays as it is, and is
    reported as a failed source."""
    out: list[str] = []
    for source in map(str, sources):
        p = Path(source).expanduser()
        if p.is_dir():
            found = sorted(str(f) for f in p.rglob("*")
                           if f.is_file() and f.name.lower().endswith(MODEL_SUFFIXES) and not f.name.startswith("."))
            out.extend(found or [source])
        else:
            out.append(source)
    return out


def model_metadata(source: str, name: str | None, row: Mapping[str, Any] | None, overrides: Mapping[str, Any],
                   mf_name: str, mf_metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """A model's metadata: ``overrides`` over its ``--meta`` row over what the source knows."""
    md = {**normalize_metadata(mf_metadata), **(row or {}), **overrides}
    # the file actually read (a CSV 'source' only served to find the row)
    md["source"] = str(Path(source).resolve()) if Path(source).exists() else source
    md["model"] = name or md.get("model") or mf_name
    return md


def failure_result(source: str, label: str, exc: BaseException, skip_existing: bool) -> ExtractResult:
    """The result for a source that raised ``exc``: one line naming it."""
    if isinstance(exc, DuplicateModelError):
        return ExtractResult(source, "skipped" if skip_existing else "failed", label, str(exc))
    if isinstance(exc, FilterlensError):
        return ExtractResult(source, "failed", None, str(exc))
    return ExtractResult(source, "failed", None, f"{source}: {type(exc).__name__}: {exc}")


def extract_sources(
    db: FilterDB,
    sources: Iterable[str],
    *,
    arch: str | None = None,
    name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    meta_table: MetaTable | None = None,
    kernel_size: KernelSize = 3,
    threshold: float = DEFAULT_THRESHOLD,
    inclusive: bool = True,
    include_transposed: bool = False,
    skip_existing: bool = False,
    loader: Loader | None = None,
    measurer: Measurer | None = None,
) -> Iterator[ExtractResult]:
    """Load, measure and add each source; yield one :class:`ExtractResult` per source.

    Metadata per model: ``metadata`` (e.g. command-line options) over the ``meta_table`` row
    matched by source path or model name, over what the source itself knows. A failing
    source is reported and the others go on. Only one model is in memory at a time.
    """
    loader = loader or default_loader
    if measurer is None:
        def measurer(mf: ModelFilters) -> pd.DataFrame:
            from ..measure import measure_model

            return measure_model(mf, kernel_size, threshold, inclusive, include_transposed)

    overrides = normalize_metadata(metadata)
    for source in sources:
        source = str(source)
        label = source
        try:
            row = meta_table.lookup(source, name) if meta_table is not None else None
            wanted = name or (row or {}).get("model")
            if wanted and skip_existing and wanted in db:
                yield ExtractResult(source, "skipped", wanted, f"{wanted} is already in the database")
                continue
            if loader is default_loader and source.startswith("robustbench:"):
                mf = _load_robustbench(source, wanted, {**(row or {}), **overrides})
            else:
                mf = loader(source, arch or (row or {}).get("arch"), wanted)
            if row is None and meta_table is not None:
                row = meta_table.lookup(None, mf.name)
            md = model_metadata(source, name, row, overrides, mf.name, mf.metadata)
            label = md["model"]
            sha = model_sha256(mf)
            existing = db.find_sha256(sha)
            if existing is not None:  # cheap pre-check; add() checks again under the lock
                raise DuplicateModelError(f"{label}: the same weights are already in the database as {existing}",
                                          existing)
            metrics = measurer(mf)
            db.add(mf, md, metrics, _sha256=sha)
            yield ExtractResult(source, "added", label, "", len(mf.layers), sum(l.n_filters for l in mf.layers))
        except Exception as exc:  # one unreadable source must not stop a batch
            yield failure_result(source, label, exc, skip_existing)
        finally:
            # drop the model before loading the next (reference counting frees it: a forced
            # gc.collect() here cost more time than loading small models)
            mf = metrics = None  # noqa: F841
