"""``filterlens compare`` and ``filterlens report``: robust vs normal, depth by depth."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import FilterlensError
from .console import emit, err, out, rich_table

STATS_COLUMNS = ["dataset", "metric", "depth_bin", "n_a", "n_b", "mean_a", "mean_b", "diff", "ci_low", "ci_high",
                 "p_value", "significant"]


def group_spec(db, by: Optional[str], groups: Optional[List[str]]):
    """Two groups from ``--by COLUMN`` (its two values) or ``--groups SQL SQL`` (WHERE clauses)."""
    from ..analysis.groups import GroupSpec

    if by and groups:
        raise FilterlensError("give either --by or --groups, not both")
    if groups:
        if len(groups) != 2:
            raise FilterlensError("--groups takes two SQL conditions on the models table, e.g. "
                                  "--groups \"training = 'adversarial'\" --groups \"training = 'normal'\"")
        names = []
        for cond in groups:
            try:
                rows = db.where("models", cond, what="--groups")  # one SQL expression, read-only
            except FilterlensError as exc:
                msg = str(exc)
                raise FilterlensError(msg if msg.startswith("--groups") else f"--groups {cond!r}: {msg}") from None
            except Exception as exc:  # DuckDB parser / binder errors are the user's SQL
                raise FilterlensError(f"--groups {cond!r}: {str(exc).splitlines()[0]}") from None
            names.append(list(rows["model"]))
        return GroupSpec(a=names[0], b=names[1], name_a=groups[0], name_b=groups[1])
    if not by or by == "training":
        return GroupSpec()
    models = db.models()
    if by not in models.columns:
        raise FilterlensError(f"--by {by!r}: no such column in the models table "
                              f"({', '.join(models.columns)})")
    present = models[by].dropna()
    values = sorted(present.astype(str).unique())
    if len(values) != 2:
        raise FilterlensError(f"--by {by!r} has {len(values)} distinct values ({', '.join(values)}); "
                              "it needs exactly two, or use --groups SQL SQL")
    raw = dict(zip(present.astype(str), present))  # each value as stored, by its text
    return GroupSpec.by_column(by, raw[values[0]], raw[values[1]], name_a=values[0], name_b=values[1])


def _check_pairs(pairs):
    """``--pairs``: ``auto``, or a readable CSV file (missing, empty, a folder or not text: one line)."""
    import pandas as pd

    if pairs is None or str(pairs).strip().lower() == "auto" or pairs == "paper":
        return pairs
    path = Path(pairs)
    if not path.exists():
        raise FilterlensError(f"--pairs {pairs}: no such file")
    if not path.is_file():
        raise FilterlensError(f"--pairs {pairs}: not a file (a CSV with columns robust,normal)")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise FilterlensError(f"--pairs {pairs}: the file is empty (expected a CSV with columns robust,normal)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        msg = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise FilterlensError(f"--pairs {pairs}: not a readable CSV ({msg})") from None
    if frame.empty:
        raise FilterlensError(f"--pairs {pairs}: no pairs in the file")
    return pairs  # the path: the comparison records where its pairs came from


def run_compare(db_path: Path, by, groups, pairs, n_boot: int, seed: int, shift: bool = True,
                shift_procedure: str = "paper", count_shared: str = "per_pair", client=None):
    """The options of ``compare``/``report`` as one :func:`~filterlens.analysis.compare.compare_db`
    call; returns ``(database, comparison)``."""
    from ..analysis.compare import compare_db, require_models
    from ..db import FilterDB

    db = FilterDB.open(db_path)
    require_models(db)
    spec = group_spec(db, by, groups)
    if client is not None:  # the shift's passes on the Dask cluster (analysis/distributed.py)
        from functools import partial

        from ..analysis.distributed import compare_on_cluster

        compare_db = partial(compare_on_cluster, client=client)
    result = compare_db(db, spec, _check_pairs(pairs), n_boot=n_boot, seed=seed, shift=shift,
                        shift_procedure=shift_procedure, count_shared=count_shared)
    return db, result


def compare_cmd(
    db: Path = typer.Option(..., "--db", help="Filter database directory."),
    by: Optional[str] = typer.Option(None, "--by", help="Models-table column with two values defining the groups "
                                     "(default: training, adversarial vs normal)."),
    groups: Optional[List[str]] = typer.Option(None, "--groups", help="Two SQL conditions on the models table, "
                                               "given as --groups A --groups B."),
    pairs: Optional[str] = typer.Option(None, "--pairs", help="CSV of matched pairs (robust, normal), 'auto' "
                                        "to match by architecture and dataset, or 'paper' (the paper's pairs present)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json"),
    out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to FILE instead of stdout."),
    n_boot: int = typer.Option(10_000, "--n-boot", help="Bootstrap resamples for the confidence intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
    no_shift: bool = typer.Option(False, "--no-shift", help="Skip the distribution shift (reads no filters)."),
    shift_procedure: str = typer.Option("paper", "--shift-procedure", help="paper (science.md: one shared basis "
                                        "and range, density-scale epsilon) | per-bin (basis and range per depth bin, "
                                        "with a label-shuffled null and the excess over it)."),
    count_shared: str = typer.Option("per-pair", "--count-shared", help="With pairs: per-pair (the paper's pair "
                                     "lists: a model serving k pairs counts k times in the shift) | once."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Run the shift's passes on a local Dask "
                                          "cluster of N worker processes (one task per model; same results)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Run them on a running Dask cluster: "
                                            "tcp://HOST:PORT or a scheduler file (or set FILTERLENS_SCHEDULER); "
                                            "its workers need the database at the same path."),
) -> None:
    """Compare two groups of models per metric and depth bin (means, CI, rank test, shift)."""
    if fmt not in ("table", "csv", "json"):
        raise FilterlensError(f"--format must be table, csv or json, not {fmt!r}")
    procedures = {"paper": "paper", "per-bin": "per_bin", "per_bin": "per_bin"}
    counts = {"per-pair": "per_pair", "per_pair": "per_pair", "once": "once"}
    if shift_procedure not in procedures:
        raise FilterlensError(f"--shift-procedure must be paper or per-bin, not {shift_procedure!r}")
    if count_shared not in counts:
        raise FilterlensError(f"--count-shared must be per-pair or once, not {count_shared!r}")
    from ..analysis.distributed import preload
    from ..db.distributed import maybe_connect

    with maybe_connect(workers, scheduler, warm=preload) as client:
        _, result = run_compare(db, by, groups, pairs, n_boot, seed, shift=not no_shift,
                                shift_procedure=procedures[shift_procedure], count_shared=counts[count_shared],
                                client=client)
    if fmt == "json":
        text = result.to_json()
        if out_file:
            from .console import atomic_path

            with atomic_path(out_file) as tmp:
                tmp.write_text(text + "\n")
        else:
            typer.echo(text)
        return
    stats = result.stats[[c for c in STATS_COLUMNS if c in result.stats.columns]]
    if fmt == "csv":
        emit(stats, "csv", out_file)
        return
    names = result.group_names
    emit(stats, "table", out_file, title=f"a = {names['a']}   vs   b = {names['b']}")
    if out_file is None:
        if not result.shift.empty:
            per_bin = result.settings["shift"].get("procedure") == "per_bin"
            cols = ["dataset", "depth_bin", "n_a", "n_b", "divergence"] + (["divergence_null", "excess"] if per_bin else [])
            out.print(rich_table(result.shift, cols, title="distribution shift (weighted symmetric KL; n = filters; "
                                 + ("per-bin variant)" if per_bin else "the paper's procedure)")))
        if not result.claims.empty:
            out.print(rich_table(result.claims, ["claim", "dataset", "verdict", "statistic"],
                                 title="the paper's claims on this data"))
        for note in result.notes:
            err.print(f"note: {note}", highlight=False)


def report_cmd(
    db: Path = typer.Option(..., "--db", help="Filter database directory."),
    out_file: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write."),
    by: Optional[str] = typer.Option(None, "--by", help="Models-table column with two values defining the groups."),
    groups: Optional[List[str]] = typer.Option(None, "--groups", help="Two SQL conditions on the models table."),
    pairs: Optional[str] = typer.Option(None, "--pairs", help="CSV of matched pairs, or 'auto'."),
    n_boot: int = typer.Option(10_000, "--n-boot", help="Bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap."),
) -> None:
    """Write a self-contained HTML report (figures embedded) of the comparison."""
    path = write_report(db, out_file, by, groups, pairs, n_boot, seed)
    typer.echo(f"report written to {path}")


def write_report(db: Path, out_file: Path, by=None, groups=None, pairs=None, n_boot=10_000, seed=0) -> Path:
    from ..analysis.compare import chunks_from
    from ..report.html import write_html
    from .console import atomic_path

    database, result = run_compare(db, by, groups, pairs, n_boot, seed)
    with atomic_path(out_file) as tmp:
        write_html(result, tmp, layers=database.layers(), filter_chunks_fn=chunks_from(database))
    return Path(out_file).resolve()




def demo_cmd(
    out_dir: Path = typer.Option(Path("filterlens-demo"), "--out", "-o", help="Folder for the database and report."),
    n_boot: int = typer.Option(2000, "--n-boot", help="Bootstrap resamples."),
    first_layer: bool = typer.Option(True, "--first-layer/--no-first-layer",
                                     help="Also attack the CIFAR-10 zoo models and measure their first layer "
                                          "(needs the CIFAR-10 test images; skipped when absent)."),
) -> None:
    """Analyse the bundled zoo offline: database, robust-vs-normal comparison, HTML report."""
    import time

    from ..demo import run_demo
    from . import console

    start = time.perf_counter()
    with console.err.status("extracting the bundled zoo...") as status:
        paths = run_demo(out_dir, n_boot=n_boot, first_layer=first_layer,
                         on_model=lambda name: status.update(f"extracted {name}"))
    claims = paths["result"].claims
    if not claims.empty:
        out.print(rich_table(claims, ["claim", "dataset", "verdict", "statistic"],
                             title="the paper's claims on the bundled zoo"))
    for note in paths["result"].notes:
        console.err.print(f"note: {note}", highlight=False)
    typer.echo(f"database:   {paths['db']}")
    typer.echo(f"comparison: {paths['comparison']}")
    typer.echo(f"report:     {paths['report'].resolve()}   ({time.perf_counter() - start:.0f} s)")


def register(app: typer.Typer) -> None:
    app.command("compare")(compare_cmd)
    app.command("report")(report_cmd)
    app.command("demo")(demo_cmd)
