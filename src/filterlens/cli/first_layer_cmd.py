"""``filterlens first-layer``: do robust first-layer filters eliminate adversarial perturbations?"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import FilterlensError
from .console import emit, err, out, rich_table

TABLE_COLUMNS = ["model", "group", "layer", "activation", "clean_acc", "adv_acc", "rel_change", "rel_change_nonsparse",
                 "pass_ratio", "low_freq_share", "centre_peaked_share", "single_tap_share", "peak_energy_share",
                 "sparse_share"]
STATS_COLUMNS = ["level", "metric", "n_robust", "n_normal", "mean_robust", "mean_normal", "diff", "ci_low",
                 "ci_high", "p_value"]


def first_layer(
    models: List[str] = typer.Argument(..., help="Models: filterlens model files (.safetensors with the .json card), "
                                       "zoo:NAME, or checkpoints with --arch.", show_default=False),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="cifar10 | mnist (default: the cards')."),
    eps: Optional[str] = typer.Option(None, "--eps", help="L-inf budget, e.g. 8/255 or 0.3 (default: 8/255 for "
                                      "cifar10, 0.3 for mnist)."),
    n: int = typer.Option(200, "--n", min=1, help="Test images (a fixed class-balanced subset)."),
    arch: Optional[str] = typer.Option(None, "--arch", "-a", help="Architecture of checkpoint MODELs (e.g. lenet5)."),
    transfer_from: Optional[str] = typer.Option(None, "--transfer-from", help="Craft the perturbations against this "
                                                "model (same forms as MODEL) and feed them to every model."),
    training: Optional[List[str]] = typer.Option(None, "--training", "-t", help="Override the group: MODEL=robust|"
                                                 "normal (or a training method), or one value per model in order."),
    steps: int = typer.Option(10, "--steps", min=0, help="PGD steps."),
    restarts: int = typer.Option(1, "--restarts", min=1, help="PGD random restarts."),
    n_banks: int = typer.Option(8, "--banks", min=1, help="Random filter banks for the pass ratio."),
    seed: int = typer.Option(0, "--seed", "-s", help="Seed of the image subset, PGD starts and random banks."),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for the tables (CSV), JSON, figures "
                                           "(PNG+PDF) and a standalone HTML page."),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json (stdout)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", envvar="FILTERLENS_DATA"),
    threads: int = typer.Option(2, "--threads", min=1, help="Torch threads."),
    channels: int = typer.Option(8, "--channels", min=1, help="Channels per model in the activation figure."),
) -> None:
    """Measure how much of an adversarial perturbation each model's first conv layer lets through.

    Relative activation change, pass ratio vs random filters, kernel frequency/shape; robust vs normal statistics.
    """
    from ..firstlayer import FirstLayerSettings, first_layer_claims, run_study

    if fmt not in ("table", "csv", "json"):
        raise FilterlensError(f"unknown format {fmt!r}; choose table, csv or json")
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():  # checked before the slow study
        raise FilterlensError(f"--out {out_dir}: is a file, not a folder; give a folder for the results")
    settings = FirstLayerSettings(steps=steps, restarts=restarts, n_banks=n_banks, seed=seed)
    result = run_study(models, dataset=dataset, eps=eps, n_images=n, arch=arch, trainings=training,
                       transfer_from=transfer_from, data_dir=data_dir, settings=settings, threads=threads,
                       echo=lambda line: err.print(line, markup=False))
    if out_dir is not None:
        from ..report.first_layer import save_first_layer

        save_first_layer(result, out_dir, channels)
    if fmt == "json":
        print(result.to_json())
    elif fmt == "csv":
        emit(result.per_model, "csv", None)
    else:
        out.print(rich_table(result.per_model, TABLE_COLUMNS, title="first layer, per model"))
        stats = result.stats[result.stats["n_robust"].gt(0) & result.stats["n_normal"].gt(0)]
        if len(stats):
            out.print(rich_table(stats, STATS_COLUMNS, title="robust vs normal"))
            out.print(rich_table(first_layer_claims(result.stats), ["claim", "level", "verdict", "diff", "p_value",
                                                                    "detail"], title="the paper's first-layer claim"))
        for note in result.notes:
            err.print(f"note: {note}", markup=False)
    if out_dir is not None:
        err.print(f"wrote {out_dir}/ (per_model.csv, per_filter.csv, per_kernel.csv, stats.csv, first_layer.json, "
                  "figures, first_layer.html)", markup=False)


def register(app: typer.Typer) -> None:
    """Add ``first-layer`` to ``app``."""
    app.command("first-layer")(first_layer)
