"""doctor: check what this machine can run."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
import typer.core

from malmm_cli.commands.terminal import EXIT_FAILED, EXIT_OK, nothing, stdout_console

if TYPE_CHECKING:  # the heavy modules (torch, transformers, OpenCV) load only when a command runs
    pass


def doctor() -> None:
    """Check this machine: versions, GPUs, quantization, video codecs, cached models."""
    from rich.table import Table

    from malmm_cli.jobs.doctor import run_checks

    console = stdout_console()
    with console.status("Checking", spinner="dots") if console.is_terminal else nothing():
        checks = run_checks()
    table = Table(title="malmm doctor", title_justify="left")
    for column in ("check", "status", "detail"):
        table.add_column(column)
    styles = {"ok": "green", "warn": "yellow", "fail": "red", "info": "dim"}
    for check in checks:
        table.add_row(check.name, f"[{styles[check.status]}]{check.status}[/]", check.detail)
    console.print(table)
    failed = [c.name for c in checks if c.status == "fail"]
    if failed:
        console.print(f"[red]missing or broken:[/] {', '.join(failed)}")
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)
