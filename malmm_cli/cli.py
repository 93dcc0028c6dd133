"""The `malmm` command: a thin Typer layer over the library functions of this package."""

from __future__ import annotations

from typing import Annotated

import typer

from malmm_cli import __version__

app = typer.Typer(
    name="malmm",
    help="Understand long videos on one GPU: captions, answers and action predictions with MA-LMM.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"malmm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Understand long videos on one GPU: captions, answers and action predictions with MA-LMM."""


def main() -> None:
    app()
