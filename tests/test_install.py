"""The installed package provides the `malmm` command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from malmm_cli import __version__


def test_malmm_command_is_installed() -> None:
    command = Path(sys.executable).parent / "malmm"
    assert command.is_file(), "install the package (pip install -e .) to get the malmm command"
    result = subprocess.run([str(command), "--version"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"malmm {__version__}"
    assert __version__ != "0.0.0+source"
