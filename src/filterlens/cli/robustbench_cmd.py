"""``filterlens robustbench list|download``: RobustBench's model table, offline."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import FilterlensError
from .console import FORMATS, emit, err, error, out, warn

app = typer.Typer(help="RobustBench's models (bundled table; weights in RobustBench's layout).",
                  no_args_is_help=True)

MODEL_DIR_HELP = "Where the weights live: <dir>/<dataset>/<threat_model>/<name>.pt (default ./models)."


def _model_dir_option():
    return typer.Option(None, "--model-dir", envvar="FILTERLENS_ROBUSTBENCH_DIR", help=MODEL_DIR_HELP)


@app.command("list")
def list_cmd(
    dataset: Optional[str] = typer.Option(None, "--dataset", help="cifar10 | cifar100 | imagenet."),
    threat_model: Optional[str] = typer.Option(None, "--threat-model", help="e.g. Linf."),
    paper: bool = typer.Option(False, "--paper", help="Only the paper's 71 robust models, with their normal "
                               "counterpart."),
    model_dir: Optional[Path] = _model_dir_option(),
    fmt: str = typer.Option("table", "--format", "-f", help=" | ".join(FORMATS)),
    out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to FILE instead of stdout."),
) -> None:
    """List RobustBench's models: leaderboard metadata and whether the weights are present."""
    from ..sources.robustbench import entries_table, snapshot_source

    df = entries_table(dataset, threat_model, paper, model_dir)
    if df.empty:
        raise FilterlensError("no RobustBench model matches")
    if paper:
        columns = ["name", "dataset", "architecture", "arch", "clean_acc", "robust_acc", "normal", "present"]
    else:
        columns = ["name", "dataset", "threat_model", "architecture", "arch", "eps", "clean_acc", "robust_acc",
                   "extra_data", "present"]
    emit(df, fmt, out_file, table_columns=columns)
    if fmt == "table" and out_file is None:
        src = snapshot_source()
        commit = (src.get("robustbench_commit") or "")[:10]
        err.print(f"{len(df)} models, {int(df['present'].sum())} with weights present; accuracies are fractions; "
                  f"arch '—': a family filterlens does not build (snapshot of RobustBench {commit})", highlight=False)


@app.command("download")
def download_cmd(
    names: List[str] = typer.Argument(..., help="RobustBench model names (NAME or <dataset>/NAME).",
                                      show_default=False),
    dataset: str = typer.Option("cifar10", "--dataset", help="cifar10 | cifar100 | imagenet."),
    threat_model: str = typer.Option("Linf", "--threat-model", help="e.g. Linf."),
    model_dir: Optional[Path] = _model_dir_option(),
    force: bool = typer.Option(False, "--force", help="Download again even when a valid file is present."),
) -> None:
    """Fetch missing weights with gdown and verify them; offline, say what to download by hand."""
    from ..sources.robustbench import find_entry, parse_spec
    from ..sources.robustbench.download import download

    entries = [find_entry(*parse_spec(n, dataset, threat_model)) for n in names]  # check every name first
    failed = 0
    for entry in entries:
        if entry.arch is None:
            warn(f"{entry.name}: {entry.note or 'not built by filterlens'}; downloading it anyway")
        for r in download(entry, model_dir, force=force):
            if r.status in ("present", "downloaded"):
                out.print(f"{r.status} {r.path}", highlight=False)
            else:
                failed += 1
                error(f"{r.name}: {r.message}")
    if failed:
        raise typer.Exit(1)


def register(root: typer.Typer) -> None:
    """Add the ``robustbench`` command group to ``root``."""
    root.add_typer(app, name="robustbench")
