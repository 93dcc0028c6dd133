"""Exit statuses, signals and stdout tables: what every command shares with the terminal."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the heavy modules (torch, transformers, OpenCV) load only when a command runs
    from rich.console import Console


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
def nothing() -> Iterator[None]:
    yield


def stdout_console() -> Console:
    """Tables on stdout: the terminal's width, or wide enough not to cut names in pipes and files."""
    from rich.console import Console

    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=200)
