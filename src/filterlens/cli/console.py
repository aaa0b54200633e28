"""Shared CLI plumbing: consoles, messages, progress bars, atomic output files."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import FilterlensError

out = Console(soft_wrap=True)
# Piped output is read by people too: don't squeeze tables into 80 columns.
if not out.is_terminal:
    out = Console(soft_wrap=True, width=220)
err = Console(stderr=True, soft_wrap=True)

T = TypeVar("T")

FORMATS = ("table", "csv", "json", "parquet")


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", highlight=False, markup=True)


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True)


def progress(items: Iterable[T], total: int, label: str, enabled: bool = True) -> Iterator[T]:
    """Yield ``items`` with a progress bar on stderr (hidden when ``enabled`` is False)."""
    if not enabled:
        yield from items
        return
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=total)
        for item in items:
            yield item
            bar.advance(task)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it only if the block succeeds."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise FilterlensError(f"{path}: the folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a result file should be like any other
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _records_json(df: pd.DataFrame) -> str:
    return df.to_json(orient="records", indent=2, double_precision=15)


def emit(df: pd.DataFrame, fmt: str, out_file: Path | None, table_columns: list[str] | None = None,
         title: str | None = None, short_headers: bool = False) -> None:
    """Write ``df`` as a table/csv/json/parquet to ``out_file`` (atomically) or stdout."""
    if fmt not in FORMATS:
        raise FilterlensError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "parquet" and out_file is None:
        raise FilterlensError("--format parquet needs --out FILE")
    if out_file is not None:
        with atomic_path(out_file) as tmp:
            if fmt == "parquet":
                df.to_parquet(tmp, index=False)
            elif fmt == "json":
                tmp.write_text(_records_json(df) + "\n")
            elif fmt == "csv":
                df.to_csv(tmp, index=False)
            else:
                with open(tmp, "w") as f:
                    Console(file=f, width=200).print(rich_table(df, table_columns, title, short_headers))
        return
    if fmt == "json":
        sys.stdout.write(_records_json(df) + "\n")
    elif fmt == "csv":
        df.to_csv(sys.stdout, index=False)
    else:
        out.print(rich_table(df, table_columns, title, short_headers))


SHORT_HEADERS = {"kernel_size": "k", "in_channels": "in", "out_channels": "out", "conv_depth": "depth",
                 "conv_depth_norm": "depth_norm", "variance_entropy": "var_entropy", "orthogonality": "ortho"}


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def rich_table(df: pd.DataFrame, columns: list[str] | None = None, title: str | None = None,
               short_headers: bool = False) -> Table:
    """A rich table of ``columns`` of ``df`` (``short_headers``: abbreviate the metric names)."""
    columns = [c for c in (columns or list(df.columns)) if c in df.columns]
    table = Table(title=title, header_style="bold", show_lines=False)
    for c in columns:
        numeric = pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
        header = SHORT_HEADERS.get(c, c) if short_headers else c
        table.add_column(header, justify="right" if numeric else "left")
    for row in df[columns].itertuples(index=False):
        table.add_row(*(_cell(v) for v in row))
    return table


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
