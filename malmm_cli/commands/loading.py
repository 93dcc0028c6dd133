"""Loading the model for a command, and the checks that come before it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
import typer.core

from malmm_cli.commands.options import RunOptions
from malmm_cli.commands.terminal import EXIT_USAGE
from malmm_cli.media.names import shown
from models.presets import (
    TRAINED_WEIGHTS,
    Task,
)

if TYPE_CHECKING:  # the heavy modules (torch, transformers, OpenCV) load only when a command runs
    from malmm_cli.commands.progress import Reporter
    from malmm_cli.jobs.loading import LoadOptions
    from models.malmm import Malmm
    from models.memory_plan import TrainingShape


def load_model(
    options: RunOptions,
    task: Task,
    reporter: Reporter,
    readers: int = 1,
    training: TrainingShape | None = None,
    frames: int | None = None,
) -> Malmm:
    """Load the model once for all inputs; a model that cannot be run as asked is a usage error.
    training: plan the memory of training steps of this shape instead of reading videos. frames:
    the most any video reads (None: not known, a stream), which bounds the memory bank planned."""
    from transformers.utils import logging as transformers_logging

    from malmm_cli.jobs.loading import SetupError, load, locate
    from models.checkpoint import CheckpointError

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    to_load = load_options(options, task, readers, training, frames)
    try:
        folder = locate(options.model, reporter.downloading)
        with reporter.status(f"Loading {options.model}"):
            malmm, mode, plan = load(to_load, folder)
    except (SetupError, CheckpointError) as error:
        reporter.error(str(error))
        raise typer.Exit(EXIT_USAGE) from error
    except (OSError, ValueError) as error:
        reporter.error(f"cannot load model {options.model}: {str(error).strip().splitlines()[0]}")
        raise typer.Exit(EXIT_USAGE) from error
    reporter.info(f"Loaded {options.model} on {malmm.device} (quantize {mode}; {plan.describe()})")
    for note in malmm.notes:
        reporter.info(note)
    if malmm.checkpoint_report is not None:
        report = malmm.checkpoint_report
        (reporter.info if report.clean else reporter.warn)(report.message())
    return malmm


def load_options(
    options: RunOptions, task: Task, readers: int = 1, training: TrainingShape | None = None, frames: int | None = None
) -> LoadOptions:
    """What loading the model needs to know, from the command's options."""
    from malmm_cli.jobs.loading import LoadOptions

    generation = options.generation(task)
    return LoadOptions(
        model=options.model, checkpoint=options.checkpoint, device=options.device, dtype=options.dtype,
        quantize=options.quantize, quantize_vision=options.quantize_vision == "8bit",
        memory_bank_length=options.bank(task), readers=readers, num_beams=generation.num_beams,
        max_new_tokens=generation.max_new_tokens, vision_batch=options.batch_size or 8, training=training,
        frames=frames,
    )  # fmt: skip


def check_checkpoint(options: RunOptions) -> None:
    """A --checkpoint that is not there is a usage error before anything loads. A run folder is
    given as RUN/model.safetensors by now (RunOptions): one without it names the folder, and a run
    that holds only resume/ has not finished an epoch."""
    path = options.checkpoint
    if path is None or path.is_file():
        return
    if path.name == TRAINED_WEIGHTS and path.parent.is_dir():
        unfinished = (path.parent / "resume").is_dir()
        why = ": its run has not finished an epoch yet (go on with `malmm train ... --resume`)" if unfinished else ""
        raise typer.BadParameter(
            f"{shown(path.parent)} is a folder without {TRAINED_WEIGHTS}{why}", param_hint="--checkpoint"
        )
    raise typer.BadParameter(f"{shown(path)}: no such file or folder", param_hint="--checkpoint")


def check_output_dir(folder: Path, option: str = "--output-dir") -> None:
    """The output folder exists or can be made, and a file can be written in it: a usage error
    now rather than every video failing after the model has loaded."""
    if folder.exists() and not folder.is_dir():
        raise typer.BadParameter(f"{shown(folder)} exists and is not a folder", param_hint=option)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".malmm-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        reason = f"cannot write in {shown(folder)}: {error.strerror or error}"
        raise typer.BadParameter(reason, param_hint=option) from None
