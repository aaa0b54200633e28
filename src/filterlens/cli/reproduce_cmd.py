"""``filterlens reproduce``: the paper's numbers from its published ``dataset.h5``, in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import FilterlensError
from .console import atomic_path, err, out, rich_table

FORMATS = ("table", "json")


class _Stages:
    """A rich progress bar per stage, fed by ``reproduce``'s ``progress(stage, advance, total)``."""

    def __init__(self, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=err, transient=True, disable=not enabled)
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, advance: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total or None)
        self.bar.advance(self.tasks[stage], advance)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        self.bar.__exit__(*exc)


def reproduce_cmd(
    dataset: Path = typer.Argument(..., help="The paper's dataset.h5 (filters + meta), or one in its layout.",
                                   show_default=False),
    pairs: Path = typer.Option(..., "--pairs", help="Pairs CSV: the paper's robust_vs_normal_pairings.csv "
                               "(Robust, Normal, Arch, Dataset) or robust,normal[,dataset]."),
    db: Optional[Path] = typer.Option(None, "--db", help="Filter database to import into, or reuse "
                                      "(default: DATASET.filterdb beside the file)."),
    out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Report directory (default "
                                            "reproduce-DATASET/ for the table format), or FILE.json with "
                                            "--format json."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | json (json goes to stdout unless "
                            "--out FILE.json)."),
    no_report: bool = typer.Option(False, "--no-report", help="Skip the HTML report."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Run the passes on a local Dask cluster "
                                          "of N worker processes (one task per model; same numbers)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Run them on a running Dask cluster: "
                                            "tcp://HOST:PORT or a scheduler file (or set FILTERLENS_SCHEDULER); "
                                            "its workers need the database at the same path."),
) -> None:
    """Reproduce the paper's numbers from its published filter data, beside the published values.

    Imports DATASET.h5 into a filter database (model by model: an interrupted import resumes, a finished one is reused), replays the notebooks' procedures in streamed passes, prints every number with the published value and writes an HTML report with the paper's figures redrawn.
    """  # noqa: E501  (one paragraph: the help text wraps it)
    from ..reproduce import reproduce

    if fmt not in FORMATS:
        raise FilterlensError(f"--format must be table or json, not {fmt!r}")
    if not dataset.is_file():
        raise FilterlensError(f"{dataset}: no such file")
    if not pairs.is_file():
        raise FilterlensError(f"{pairs}: no such pairs file")
    json_file = out_path if out_path is not None and out_path.suffix.lower() == ".json" else None
    if json_file is not None and fmt != "json":
        raise FilterlensError("--out FILE.json needs --format json (the table format writes a report directory)")
    # the report goes to --out DIR, or reproduce-DATASET/ for the table format (json to stdout writes none)
    report_dir = None if (json_file is not None or no_report or (fmt == "json" and out_path is None)) else (
        out_path or Path(f"reproduce-{dataset.stem}"))
    if report_dir is not None and report_dir.exists() and not report_dir.is_dir():
        raise FilterlensError(f"--out {report_dir}: exists and is not a directory")

    from ..analysis.distributed import preload
    from ..db.distributed import cluster_options, maybe_connect

    cluster_options(workers, scheduler)  # a bad option fails before any import
    with maybe_connect(workers, scheduler, warm=preload) as client, _Stages(enabled=not quiet) as stages:
        result = reproduce(dataset, pairs, db, progress=stages, client=client)
    text = result.to_json()
    if report_dir is not None:
        from ..report.reproduce import write_report

        report_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(report_dir / "reproduce.json") as tmp:
            tmp.write_text(text + "\n", encoding="utf-8")
        write_report(result, report_dir / "report.html")
    if fmt == "json":
        if json_file is not None:
            with atomic_path(json_file) as tmp:
                tmp.write_text(text + "\n", encoding="utf-8")
            err.print(f"wrote {json_file}", highlight=False)
        else:
            typer.echo(text)
    else:
        _print_tables(result)
    if report_dir is not None:
        err.print(f"report: {report_dir / 'report.html'}", highlight=False)


def _print_tables(result) -> None:
    from ..report.reproduce import comparison_table

    s = result.settings
    out.print(f"{s['file']}: {s['models_in_file']} models, {s['filters']} filters, {s['pairs']} pairs "
              f"(database {s['database']}, {s['database_status']})", highlight=False)
    out.print(rich_table(comparison_table(result), title="computed vs published"))
    import pandas as pd

    rows = []
    for ds, metrics in result.numbers["decile_means"].items():
        for metric, groups in metrics.items():
            for group, bins in groups.items():
                rows.append({"dataset": ds, "metric": metric, "group": group,
                             **{b: ("" if v is None else f"{v:.4f}") for b, v in bins.items()}})
    out.print(rich_table(pd.DataFrame(rows), title="decile means over the pair lists"))
    q = pd.DataFrame([{"quirk": x["name"], "what": x["detail"]} for x in result.quirks])
    out.print(rich_table(q, title="quirks of the paper's notebooks, followed"))


def register(app: typer.Typer) -> None:
    """Add ``reproduce`` to ``app``."""
    app.command("reproduce")(reproduce_cmd)
