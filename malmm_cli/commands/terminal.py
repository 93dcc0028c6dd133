"""Exit statuses, signals and stdout tables: what every command shares with the terminal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from malmm_cli.jobs.errors import SetupError, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from malmm_cli.jobs.reporting import Reporter


EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a service manager stopping malmm), raised by `main()`'s handler: it takes
    Ctrl-C's way out (finished results kept, stdout's document closed), with its own word and status."""


def stopped_by(interrupt: KeyboardInterrupt) -> tuple[str, int]:
    """How a run stopped by a signal is named to the user, and its exit status."""
    if isinstance(interrupt, Terminated):
        return "Terminated", EXIT_TERMINATED
    return "Interrupted", EXIT_INTERRUPTED


@contextmanager
def refusals(reporter: Reporter | None = None) -> Iterator[None]:
    """A job's refusal to run, as the command line says it: a UsageError is a bad option or
    argument (Click's usage message, status 2); a SetupError a model that cannot be run as asked
    (one error line, status 2)."""
    try:
        yield
    except UsageError as error:
        raise typer.BadParameter(str(error), param_hint=error.option) from None
    except SetupError as error:
        if reporter is None:
            raise
        reporter.error(str(error))
        raise typer.Exit(EXIT_USAGE) from None


@contextmanager
def nothing() -> Iterator[None]:
    yield


def stdout_console() -> Console:
    """Tables on stdout: the terminal's width, or wide enough not to cut names in pipes and files."""
    from rich.console import Console

    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=200)
