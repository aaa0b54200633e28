"""``filterlens metrics`` and ``filterlens archs``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from ..errors import FilterlensError
from ..kernel_size import parse_kernel_option
from .console import FORMATS, emit, error, progress, warn

if TYPE_CHECKING:
    import pandas as pd

TABLE_COLUMNS = ["model", "layer", "kernel_size", "in_channels", "out_channels", "groups", "conv_depth",
                 "conv_depth_norm", "n_filters", "sparsity", "variance_entropy", "orthogonality"]


def check_measure_options(sources, name: str | None, threshold: float, kernel_size: str):
    """Validate the options ``metrics`` and ``extract`` share; returns the parsed kernel size."""
    if name and len(sources) > 1:
        raise FilterlensError("--name applies to a single source")
    if not 0 < threshold < 1:
        raise FilterlensError("--threshold must be between 0 and 1")
    return parse_kernel_option(kernel_size)


def measure_sources(sources, arch, name, kernel_size, threshold, inclusive, include_transposed,
                    show_progress=True) -> tuple[pd.DataFrame, int]:
    """:func:`filterlens.measure.measure` each source; print its notes as warnings and one line
    per failure. Returns the table and the failure count."""
    import warnings

    import pandas as pd

    from ..measure import MeasureWarning, measure

    frames, failures = [], 0
    for source in progress(sources, len(sources), "measuring", enabled=show_progress and len(sources) > 1):
        df = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MeasureWarning)
            try:
                df = measure(source, arch, kernel_size, threshold, inclusive, include_transposed, name=name)
            except FilterlensError as exc:
                failures += 1
                error(str(exc))
        for w in caught:
            if issubclass(w.category, MeasureWarning):
                warn(str(w.message))
            else:  # not ours: shown as Python would have
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if df is not None:
            frames.append(df)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return table, failures


def metrics(
    sources: List[str] = typer.Argument(..., help="Model files (.pt .pth .th .ckpt .bin .safetensors .onnx[.gz]).",
                                        show_default=False),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Architecture of the checkpoints "
                                       "(see 'filterlens archs'); depth then comes from its graph."),
    kernel_size: str = typer.Option("3", "--kernel-size", "-k", help="Kernel size to measure: 3, 5, 1x3 or all."),
    fmt: str = typer.Option("table", "--format", "-f", help=f"Output format: {' | '.join(FORMATS)}."),
    out_file: Optional[Path] = typer.Option(None, "--out", "-o", help="Write to FILE instead of stdout."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name (one source only; default: file name)."),
    threshold: float = typer.Option(0.01, "--threshold", help="Sparsity threshold, a share of the layer's max |w|."),
    exclusive: bool = typer.Option(False, "--exclusive", help="Sparse means max|w| < t (torchconvquality) "
                                   "instead of the paper's <= t."),
    include_transposed: bool = typer.Option(False, "--include-transposed", help="Also measure transposed convs."),
    summary: bool = typer.Option(False, "--summary", help="One row per model instead of per layer."),
) -> None:
    """Measure the conv filters of one or more models: sparsity, variance entropy, orthogonality."""
    ks = check_measure_options(sources, name, threshold, kernel_size)
    table, failures = measure_sources(sources, arch, name, ks, threshold, not exclusive, include_transposed)
    if table.empty:
        raise typer.Exit(1)
    columns = TABLE_COLUMNS + (["unused"] if table["unused"].any() else [])  # flagged rows: say why NaN
    if summary:
        from ..measure import summarize

        table = summarize(table)  # unused layers left out
    emit(table, fmt, out_file, None if summary else columns, short_headers=not summary)
    if failures:
        raise typer.Exit(1)


def archs(fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json")) -> None:
    """List the architectures that --arch accepts."""
    import pandas as pd

    from ..archs import list_archs

    rows = [{"name": a.name, "input_shape": "x".join(map(str, a.input_shape)), "num_classes": a.num_classes,
             "description": a.description} for a in list_archs()]
    emit(pd.DataFrame(rows), fmt, None)


def register(app: typer.Typer) -> None:
    app.command("metrics")(metrics)
    app.command("archs")(archs)
