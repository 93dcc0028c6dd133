"""A training run's folder, and its checks before the model loads (no torch).

A run folder holds:
- model.safetensors: the trained tensors of the best epoch (by the validation metric, else the
  validation loss, else the last epoch): what `--checkpoint RUN` loads;
- training.json: the settings, the base model and every epoch's figures;
- resume/: everything needed to go on exactly where the run stopped (trained tensors, optimiser,
  schedule, loss scaler, random state, position in the data), written every `save_every`
  optimiser steps, after each epoch and on Ctrl-C. On a CPU a resumed run ends with bitwise the
  same weights as one that was never stopped.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

RUN_INFO = "training.json"
RESUME = "resume"
STATE = "state.json"  # in resume/: the plain part of the saved state (tensors: state.safetensors)


class TrainingError(Exception):
    """A run that cannot start or go on, with what to do about it."""


def check_output(output: Path, resume: bool) -> None:
    """A new run needs an empty or new folder (so no earlier run is overwritten); --resume one
    that holds a saved state."""
    if output.exists() and not output.is_dir():
        raise TrainingError(f"{output} is a file: give --output a folder for the run (new, or empty)")
    if resume:
        if not (output / RESUME / STATE).is_file():
            raise TrainingError(f"{output} holds no saved run to resume (no {RESUME}/{STATE})")
        return
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise TrainingError(f"{output} is not empty: pass --resume to go on with its run, or choose a new folder")


def check_writable(output: Path) -> None:
    """The run can make and write its folder: it, or the nearest folder above it that exists, takes
    a file (written and removed at once: nothing is left before the run starts). Said now rather
    than once the model has loaded."""
    there = next((folder for folder in (output, *output.parents) if folder.exists()), output)
    if there.exists() and not there.is_dir():
        raise TrainingError(f"cannot make the run folder {output}: {there} is a file")
    try:
        with tempfile.TemporaryFile(dir=there, prefix=".malmm-write-test-"):
            pass
    except OSError as error:
        raise TrainingError(f"cannot write the run folder {output}: {error.strerror or error}") from None


def saved_epochs(output: Path) -> int | None:
    """The epochs a saved run was planned for (None: no readable saved state), so that `--resume`
    without `--epochs` goes on to the run's own end rather than to the task's default."""
    try:
        return int(json.loads((output / RESUME / STATE).read_text())["settings"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
