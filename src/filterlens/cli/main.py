"""Entry point of the ``filterlens`` command: builds the app and turns user errors into one line."""

from __future__ import annotations

import sys
import warnings
from typing import Optional

import typer

from ..errors import FilterlensError
from . import analysis_cmd, db_cmd, first_layer_cmd, metrics_cmd, reproduce_cmd, robust_cmd, robustbench_cmd
from .console import error

app = typer.Typer(
    name="filterlens",
    help="Adversarial robustness through the lens of convolutional filters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"filterlens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Show the version and exit."),
) -> None:
    """Adversarial robustness through the lens of convolutional filters."""


for module in (metrics_cmd, db_cmd, analysis_cmd, robust_cmd, first_layer_cmd, reproduce_cmd, robustbench_cmd):
    module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print one ``error: ...`` line and exit 1 (usage errors exit 2)."""
    warnings.filterwarnings("ignore")  # library warnings are reported as 'warning:' lines instead
    try:
        app(args=argv, prog_name="filterlens")
    except FilterlensError as exc:
        error(str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        error("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
