"""``filterlens extract`` and ``filterlens db ...``: build, inspect and query a filter database."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import FilterlensError
from .console import FORMATS, dumps, emit, err, error, out, progress, warn

DB_OPTION_HELP = "Filter database directory (or set FILTERLENS_DB)."

MODEL_COLUMNS = ["model", "arch", "dataset", "training", "threat_model", "eps", "clean_acc", "robust_acc",
                 "n_layers", "n_filters", "depth_source", "tags"]
LAYER_COLUMNS = ["model", "layer", "kernel_size", "in_channels", "out_channels", "groups", "conv_depth",
                 "conv_depth_norm", "n_filters", "sparsity", "variance_entropy", "orthogonality"]


def _db_option():
    return typer.Option(..., "--db", envvar="FILTERLENS_DB", help=DB_OPTION_HELP, show_default=False)


def _iso_times(df):
    """Timestamps as ISO-8601 text, so csv/json output reads the same everywhere."""
    import pandas as pd

    for c in df.columns:
        if pd.api.types.is_datetime64_any_dtype(df[c]):
            df[c] = df[c].map(lambda t: None if pd.isna(t) else t.isoformat())
    return df


def _open(path: Path):
    from ..db import FilterDB

    return FilterDB.open(path)


def _open_or_create(path: Path):
    """``(db, fresh)``: ``fresh`` says whether this command created it (``"new"``, or
    ``"emptydir"`` when it was made in an existing empty folder), else None."""
    from ..db import FilterDB
    from ..db.schema import MARKER

    path = Path(path).expanduser()
    fresh = None if (path / MARKER).exists() else ("emptydir" if path.is_dir() else "new")
    return FilterDB.open_or_create(path), fresh


def _discard_if_unused(db, fresh) -> None:
    """Remove a database this command created and left empty (every source failed): a failed
    command leaves nothing behind, and an empty folder it was given stays an empty folder."""
    import shutil

    if fresh is None or len(db) or db.attrs():
        return
    db.close()
    shutil.rmtree(db.path, ignore_errors=True)
    if fresh == "emptydir":
        db.path.mkdir(exist_ok=True)


def extract(
    sources: List[str] = typer.Argument(..., help="Model sources: checkpoint, safetensors or ONNX files, "
                                        "directories of them, robustbench:NAME.", show_default=False),
    db_path: Path = _db_option(),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Architecture of the checkpoints (see 'filterlens archs')."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name (one source only; default: from the source)."),
    training: Optional[str] = typer.Option(None, "--training", help="normal | adversarial | unknown."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="Training data set, e.g. cifar10."),
    threat_model: Optional[str] = typer.Option(None, "--threat-model", help="e.g. Linf, L2."),
    model_dir: Optional[Path] = typer.Option(None, "--model-dir", help="robustbench:NAME weights: <dir>/<dataset>/"
                                             "<threat_model>/<name>.pt (default $FILTERLENS_ROBUSTBENCH_DIR or ./models)."),
    eps: Optional[str] = typer.Option(None, "--eps", help="Perturbation budget, e.g. 8/255 or 0.031."),
    tags: Optional[str] = typer.Option(None, "--tags", help="Comma-separated tags."),
    meta_file: Optional[Path] = typer.Option(None, "--meta", help="CSV of per-model metadata (columns as the "
                                             "models table; rows matched by source path or model name)."),
    kernel_size: str = typer.Option("3", "--kernel-size", "-k", help="Layers to measure: 3, 1x3 or all "
                                    "(all layers are stored)."),
    threshold: float = typer.Option(0.01, "--threshold", help="Sparsity threshold, a share of the layer's max |w|."),
    exclusive: bool = typer.Option(False, "--exclusive", help="Sparse means max|w| < t instead of <= t."),
    include_transposed: bool = typer.Option(False, "--include-transposed", help="Also measure transposed convs."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Models already stored are skipped, "
                                       "not failures."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Extract on a local Dask cluster of N "
                                          "worker processes (the database is the same as without).",
                                          show_default=False),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Extract on a running Dask cluster: "
                                            "tcp://HOST:PORT or a scheduler file (or set FILTERLENS_SCHEDULER).",
                                            show_default=False),
) -> None:
    """Extract the conv filters and per-layer metrics of models into a filter database."""
    import os
    from contextlib import ExitStack

    from ..db import FilterDB, MetaTable, extract_sources, normalize_metadata
    from ..db.extract import expand_sources
    from .metrics_cmd import check_measure_options

    sources = expand_sources(sources)  # a directory stands for the model files under it
    ks = check_measure_options(sources, name, threshold, kernel_size)
    overrides = {k: v for k, v in {"training": training, "dataset": dataset, "threat_model": threat_model,
                                   "eps": eps, "tags": tags}.items() if v is not None}
    normalize_metadata(overrides)  # reject bad values before any work
    if model_dir is not None:  # read by the robustbench: loader, here and in local workers
        os.environ["FILTERLENS_ROBUSTBENCH_DIR"] = str(model_dir)
    if workers is not None and scheduler:
        raise FilterlensError("give --workers (a local cluster) or --scheduler (a running one), not both")
    if workers is not None and workers < 1:
        raise FilterlensError("--workers must be at least 1")
    scheduler = scheduler or (None if workers is not None else os.environ.get("FILTERLENS_SCHEDULER") or None)
    table = MetaTable.read_csv(meta_file) if meta_file is not None else None
    db, fresh = _open_or_create(db_path)
    counts = {"added": 0, "skipped": 0, "failed": 0}
    options = dict(arch=arch, name=name, metadata=overrides, meta_table=table, kernel_size=ks, threshold=threshold,
                   inclusive=not exclusive, include_transposed=include_transposed, skip_existing=skip_existing)
    try:
        with ExitStack() as stack:
            if workers is not None or scheduler:  # workers load and measure; this process writes
                from ..db.distributed import connect, extract_sources_dask

                client = stack.enter_context(connect(workers, scheduler))
                results = extract_sources_dask(db, sources, client, **options)
            else:
                results = extract_sources(db, sources, **options)
            for r in progress(results, len(sources), "extracting", enabled=len(sources) > 1):
                counts[r.status] += 1
                if r.status == "added":
                    out.print(f"added {r.model} ({r.n_layers} layers, {r.n_filters} filters)", highlight=False,
                              markup=False)
                elif r.status == "skipped":
                    warn(r.message)
                else:
                    error(r.message)
    finally:  # also when the cluster cannot be reached: no empty database left behind
        _discard_if_unused(db, fresh)
    if table is not None and table.unused_lines():
        lines = table.unused_lines()
        warn(f"{meta_file}: {len(lines)} row(s) matched no source (line {', '.join(map(str, lines[:10]))}"
             f"{', ...' if len(lines) > 10 else ''})")
    if len(sources) > 1:
        err.print(f"{counts['added']} added, {counts['skipped']} skipped, {counts['failed']} failed "
                  f"of {len(sources)} sources -> {db_path}", highlight=False)
    if counts["failed"]:
        raise typer.Exit(1)


def create(db_path: Path = _db_option()) -> None:
    """Create an empty filter database."""
    from ..db import FilterDB

    FilterDB.create(db_path)
    out.print(f"created {db_path}", highlight=False)


def info(
    db_path: Path = _db_option(),
    fmt: str = typer.Option("table", "--format", "-f", help="table | json"),
) -> None:
    """Summary of a filter database: counts, filters by kind, size."""
    summary = _open(db_path).info()
    if fmt == "json":
        typer.echo(dumps(summary))
        return
    for key, value in summary.items():
        if isinstance(value, dict):
            out.print(f"{key}:", highlight=False)
            for k, v in value.items():
                out.print(f"  {k}: {v}", highlight=False)
        else:
            out.print(f"{key}: {value}", highlight=False)


def models(
    db_path: Path = _db_option(),
    where: Optional[str] = typer.Option(None, "--where", "-w", help="SQL condition on the models table."),
    fmt: str = typer.Option("table", "--format", "-f", help=f"{' | '.join(FORMATS)}"),
    out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to FILE instead of stdout."),
) -> None:
    """List the models of a filter database."""
    db = _open(db_path)
    df = db.where("models", where, "model_id") if where is not None else db.models()
    emit(_iso_times(df), fmt, out_file, MODEL_COLUMNS)


def layers(
    db_path: Path = _db_option(),
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="Only this model (repeatable)."),
    where: Optional[str] = typer.Option(None, "--where", "-w", help="SQL condition on the layers and their "
                                        "model's metadata, e.g. \"training = 'adversarial' AND kernel_size = 3\"."),
    fmt: str = typer.Option("table", "--format", "-f", help=f"{' | '.join(FORMATS)}"),
    out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to FILE instead of stdout."),
) -> None:
    """List the layers of a filter database with their metrics."""
    db = _open(db_path)
    if where is not None:
        df = db.where("layers_full", where, "layer_id")
        if model:
            df = df[df["model"].isin(model)].reset_index(drop=True)
    else:
        df = db.layers(model or None)
    emit(df, fmt, out_file, LAYER_COLUMNS)


def query(
    sql: str = typer.Argument(..., help="SQL over the views models, layers, layers_full, filters, filters_raw.",
                              show_default=False),
    db_path: Path = _db_option(),
    fmt: str = typer.Option("table", "--format", "-f", help=f"{' | '.join(FORMATS)}"),
    out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to FILE instead of stdout."),
) -> None:
    """Run an SQL query (DuckDB) over a filter database in place."""
    df = _open(db_path).query(sql)
    emit(_iso_times(df), fmt, out_file)


def remove(
    names: List[str] = typer.Argument(..., help="Models to remove.", show_default=False),
    db_path: Path = _db_option(),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Remove models (and their filters) from a filter database."""
    db = _open(db_path)
    missing = [n for n in names if n not in db]
    if missing:
        raise FilterlensError(f"no model {', '.join(map(repr, missing))} in {db_path}")
    if not yes and not typer.confirm(f"remove {len(names)} model(s) from {db_path}?"):
        raise typer.Exit(1)
    for n in db.remove(names):
        out.print(f"removed {n}", highlight=False, markup=False)


def check(
    db_path: Path = _db_option(),
    deep: bool = typer.Option(False, "--deep", help="Also re-hash every stored filter against its sha256."),
) -> None:
    """Check a filter database for consistency; exit 1 on any problem."""
    db = _open(db_path)
    problems = db.check(deep=deep)
    for p in problems:
        error(p)
    if problems:
        raise typer.Exit(1)
    summary = db.info()
    out.print(f"ok: {summary['n_models']} models, {summary['n_layers']} layers, {summary['n_filters']} filters"
              + (f" ({summary['stray_files']} stray file(s) from interrupted writes; the next write removes them)"
                 if summary["stray_files"] else ""), highlight=False)


def import_h5_cmd(
    file: Path = typer.Argument(..., help="CNN-Filter-DB dataset.h5 (filters + meta).", show_default=False),
    db_path: Path = _db_option(),
    measure: bool = typer.Option(True, "--measure/--no-measure", help="Compute per-layer metrics."),
) -> None:
    """Import an HDF5 filter data set (CNN-Filter-DB layout) into a filter database."""
    from ..db import import_h5

    db, fresh = _open_or_create(db_path)
    try:
        result = import_h5(file, db, measure=measure)
    except BaseException:
        _discard_if_unused(db, fresh)  # a bad file leaves no empty database behind
        raise
    for name, why in result.skipped:
        warn(why)
    out.print(f"imported {len(result.added)} model(s), {result.n_filters} filters"
              + (f"; skipped {len(result.skipped)}" if result.skipped else ""), highlight=False)


def export_h5_cmd(
    file: Path = typer.Argument(..., help="Output .h5 file.", show_default=False),
    db_path: Path = _db_option(),
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="Only this model (repeatable)."),
    include_transposed: bool = typer.Option(False, "--include-transposed", help="Also export transposed convs."),
) -> None:
    """Export the 3x3 filters of a filter database in the CNN-Filter-DB HDF5 layout."""
    from ..db import export_h5

    summary = export_h5(_open(db_path), file, model or None, include_transposed=include_transposed)
    if summary["converted_to_float32"]:
        warn(f"filters of dtype {', '.join(summary['converted_to_float32'])} were converted to float32")
    out.print(f"wrote {summary['file']}: {summary['n_models']} models, {summary['n_layers']} layers, "
              f"{summary['n_filters']} filters", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``extract`` and the ``db`` command group to ``app``."""
    app.command("extract")(extract)
    db_app = typer.Typer(help="Inspect, query and maintain a filter database.", no_args_is_help=True)
    db_app.command("create")(create)
    db_app.command("info")(info)
    db_app.command("models")(models)
    db_app.command("layers")(layers)
    db_app.command("query")(query)
    db_app.command("remove")(remove)
    db_app.command("check")(check)
    db_app.command("import-h5")(import_h5_cmd)
    db_app.command("export-h5")(export_h5_cmd)
    app.add_typer(db_app, name="db")
