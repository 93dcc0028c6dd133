"""Why a job refuses to run, before it reads anything. Both are the user's to fix (exit status 2)."""

from __future__ import annotations


class UsageError(ValueError):
    """An option or input that cannot work as given, found before anything loads; `option` names
    the option or argument to blame (`--fps`, `PATH`), as the command line shows it."""

    def __init__(self, message: str, option: str):
        super().__init__(message)
        self.option = option


class SetupError(Exception):
    """The model cannot be run as asked; the message says why and what would work."""
