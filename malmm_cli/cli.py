"""The `malmm` command: the app assembled from malmm_cli/commands/, one module per command.

Exit status (commands/terminal.py): 0 every input succeeded (or was already done), 1 some input
failed or was only partly readable, 2 usage error (bad option, a model/checkpoint that cannot be
loaded, or a Ray cluster that cannot be joined), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer
import typer.core

from malmm_cli import __version__
from malmm_cli.commands import doctor, evaluate, models, read, serve, train, watch
from malmm_cli.commands.options import PlainUsage
from malmm_cli.commands.terminal import EXIT_FAILED, Terminated
from malmm_cli.media.names import shown

app = typer.Typer(
    name="malmm",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

command = app.command
command(cls=PlainUsage, short_help="Caption videos, whole and by segment.")(read.caption)
command(cls=PlainUsage, short_help="Answer questions about videos.")(read.ask)
command(cls=PlainUsage, short_help="Predict actions: a timeline, the next action, or ranked labels.")(read.predict)
command(cls=PlainUsage, short_help="Find where something happens in videos: moments and a score curve.")(read.find)
command(cls=PlainUsage, short_help="Caption a live stream as it happens: a camera, RTSP, UDP, a growing file, stdin.")(
    watch.watch
)
command(cls=PlainUsage, short_help="Fine-tune the memory model on your own labelled videos.")(train.train)
command("eval", cls=PlainUsage, short_help="Score the model on labelled videos, as MA-LMM's paper scores it.")(
    evaluate.evaluate
)
app.add_typer(models.models_app, name="models", short_help="List and download models.")
app.add_typer(models.cache_app, name="cache", short_help="Inspect or empty the vision feature cache.")
command(short_help="Check what this machine can run.")(doctor.doctor)
command(cls=PlainUsage, short_help="Serve the model over an OpenAI-compatible HTTP API.")(serve.serve)


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
    """Understand long videos on one GPU: captions, answers and action predictions with MA-LMM.

    Results go to stdout (or --output-dir), progress and messages to stderr. Exit status: 0 all
    inputs succeeded, 1 some failed, 2 usage error, 130 interrupted.
    """


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main() -> None:
    """The `malmm` command. An error malmm did not foresee is one line, not a traceback
    (MALMM_DEBUG=1 shows it); its exit status is 1. SIGTERM stops a run as Ctrl-C does (status 143)."""
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except Exception as error:
        if os.environ.get("MALMM_DEBUG"):
            raise
        message = f"{type(error).__name__}: {error}".strip().splitlines()[0]
        print(f"error: unexpected: {shown(message)} (MALMM_DEBUG=1 shows where)", file=sys.stderr)
        sys.exit(EXIT_FAILED)
