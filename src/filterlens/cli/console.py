"""Shared CLI plumbing: consoles, messages, progress bars, atomic output files."""

from __future__ import annotations

import errno
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from ..atomic import atomic_path as _atomic_path
from ..errors import FilterlensError

if TYPE_CHECKING:  # pandas is imported where a table is written: `--help` needs none of it
    import pandas as pd

# markup=False: what is printed is user or data text (file and model names like 'net[v2]',
# 'x[/].pt', "pip install 'filterlens[attack]'"), never rich markup; styles are added as Text.
out = Console(soft_wrap=True, markup=False)
# Piped output is read by people too: don't squeeze tables into 80 columns.
if not out.is_terminal:
    out = Console(soft_wrap=True, width=220, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)

T = TypeVar("T")

FORMATS = ("table", "csv", "json", "parquet")


def warn(message: str) -> None:
    err.print(Text.assemble(("warning:", "yellow"), " ", str(message)), highlight=False)


def error(message: str) -> None:
    err.print(Text.assemble(("error:", "bold red"), " ", str(message)), highlight=False)


def progress(items: Iterable[T], total: int, label: str, enabled: bool = True) -> Iterator[T]:
    """Yield ``items`` with a progress bar on stderr (hidden when ``enabled`` is False)."""
    if not enabled:
        yield from items
        return
    columns = (TextColumn("{task.description}", style="progress.description", markup=False), BarColumn(),
               MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=total)
        for item in items:
            yield item
            bar.advance(task)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it only if the block succeeds
    (:func:`filterlens.atomic.atomic_path`); a disk that is full, read-only or closed to us is
    one :class:`FilterlensError` line."""
    path = Path(path)
    if path.is_dir():
        raise FilterlensError(f"{path}: is a directory; give a file name to write")
    if path.parent and not path.parent.exists():
        raise FilterlensError(f"{path}: the folder {path.parent} does not exist")
    try:
        with _atomic_path(path) as tmp:
            yield tmp
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EISDIR):
            raise FilterlensError(f"{path}: cannot write ({exc.strerror or exc})") from None
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
                    Console(file=f, width=200, markup=False).print(rich_table(df, table_columns, title, short_headers))
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
    import pandas as pd

    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def rich_table(df: pd.DataFrame, columns: list[str] | None = None, title: str | None = None,
               short_headers: bool = False) -> Table:
    """A rich table of ``columns`` of ``df`` (``short_headers``: abbreviate the metric names)."""
    import pandas as pd

    columns = [c for c in (columns or list(df.columns)) if c in df.columns]
    table = Table(title=None if title is None else Text(str(title)), header_style="bold", show_lines=False)
    for c in columns:
        numeric = pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
        header = SHORT_HEADERS.get(c, c) if short_headers else c
        table.add_column(Text(str(header)), justify="right" if numeric else "left")
    for row in df[columns].itertuples(index=False):
        table.add_row(*(Text(_cell(v)) for v in row))  # Text: data is never read as markup
    return table


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
