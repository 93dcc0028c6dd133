"""The options a task shares and the model they load: `RunOptions`, the checks that need no
model, and `load_model`. Importing this module loads no torch: the checks run first, and loading
imports the reading layer only when it starts."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from malmm_cli.jobs.errors import SetupError, UsageError
from malmm_cli.media.names import shown
from malmm_cli.media.sampling import Sampling
from models.presets import DEFAULT_MODEL, TRAINED_WEIGHTS, GenerationSettings, Task

if TYPE_CHECKING:  # loaded when a job runs
    from malmm_cli.jobs.loading import LoadOptions
    from malmm_cli.jobs.records import Settings
    from malmm_cli.jobs.reporting import Reporter
    from malmm_cli.reading.feature_cache import FeatureCache
    from models.malmm import Malmm
    from models.memory_plan import TrainingShape


@dataclass
class RunOptions:
    """The options every task command shares (caption, ask, predict; watch, train and eval use some):
    what to load, how to sample, where results go. Each command declares them (Typer reads a
    command's options from its signature) and gathers them here."""

    model: str = DEFAULT_MODEL
    checkpoint: Path | None = None
    frames: int | None = None
    fps: float | None = None
    memory_bank_length: int | None = None
    memory: str = "malmm"
    format: list[str] | None = None
    output_dir: Path | None = None
    overwrite: bool = False
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "auto"
    quantize_vision: str = "none"
    max_new_tokens: int | None = None
    num_beams: int | None = None
    batch_size: int | None = None
    video_batch: int | None = None
    seek: str = "exact"
    decode_workers: int = 1
    no_cache: bool = False
    quiet: bool = False
    engine: str = "local"
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float | None = None

    def __post_init__(self) -> None:
        if self.frames is not None and self.fps is not None:
            raise UsageError("give --frames or --fps, not both", option="--frames/--fps")
        if len(set(self.formats)) != len(self.formats):
            raise UsageError("a format is given twice", option="--format")
        if self.checkpoint is not None and self.checkpoint.is_dir():  # a `malmm train` run: its weights
            self.checkpoint = self.checkpoint / TRAINED_WEIGHTS

    @property
    def formats(self) -> list[str]:
        return list(self.format or ["txt"])

    def cache(self, reporter: Reporter) -> FeatureCache | None:
        from malmm_cli.reading.feature_cache import FeatureCache

        return None if self.no_cache else FeatureCache(on_problem=reporter.warn)

    def sampling(self, task: Task) -> Sampling:
        from malmm_cli.media.sampling import Sampling

        rate = {"fps": self.fps} if self.fps is not None else {"frames": self.frames or task.frames}
        return Sampling(**rate, seek=self.seek, decode_workers=self.decode_workers)

    def bank(self, task: Task) -> int:
        return self.memory_bank_length or task.memory_bank_length

    def most_frames(self, task: Task) -> int | None:
        """The most frames a video reads: --frames (clips too), else None: with --fps it follows
        each video's length, so the memory is planned for the whole bank."""
        return None if self.fps is not None else self.frames or task.frames

    def generation(self, task: Task) -> GenerationSettings:
        return task.generation.with_overrides(max_new_tokens=self.max_new_tokens, num_beams=self.num_beams)

    def settings(self, task: Task, name: str, request: dict[str, object]) -> Settings:
        """What the results of this run depend on, for the records beside them."""
        from malmm_cli.jobs.loading import resolve_device
        from malmm_cli.jobs.records import Settings, checkpoint_identity, model_identity
        from malmm_cli.reading.feature_cache import default_cache_dir

        try:
            device = resolve_device(self.device).split(":")[0]
        except SetupError as error:
            raise UsageError(str(error), option="--device") from error
        memo = None if self.no_cache or not default_cache_dir().is_dir() else default_cache_dir()
        return Settings(
            task=name, request=request, model=model_identity(self.model),
            checkpoint=checkpoint_identity(self.checkpoint, memo), sampling=self.sampling(task).describe(),
            memory_bank_length=self.bank(task),
            precision={"device": device, "dtype": self.dtype, "quantize": self.quantize,
                       "quantize_vision": self.quantize_vision},
            generation=dataclasses.asdict(self.generation(task)), memory=self.memory,
        )  # fmt: skip


def read_lines(path: Path, what: str, option: str) -> list[str]:
    """Non-empty stripped lines of a text file (questions, labels)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read {shown(path)}: {error.strerror or error}", option=option) from error
    try:
        lines = [line.strip() for line in data.decode("utf-8-sig").splitlines()]
    except UnicodeDecodeError as error:  # Python's words ('utf-8' codec, position 1234) help nobody find it
        number = data[: error.start].count(b"\n") + 1
        raise UsageError(
            f"{shown(path)} is not UTF-8 text (line {number}): save it as UTF-8 and run again", option=option
        ) from error
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise UsageError(f"{shown(path)} has no {what} (one per line)", option=option)
    return lines


def load_model(
    options: RunOptions,
    task: Task,
    reporter: Reporter,
    readers: int = 1,
    training: TrainingShape | None = None,
    frames: int | None = None,
) -> Malmm:
    """Load the model once for all inputs; one that cannot be run as asked raises SetupError.
    training: plan the memory of training steps of this shape instead of reading videos. frames:
    the most any video reads (None: not known, a stream), which bounds the memory bank planned."""
    from transformers.utils import logging as transformers_logging

    from malmm_cli.jobs.loading import load, locate
    from models.checkpoint import CheckpointError

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    to_load = load_options(options, task, readers, training, frames)
    try:
        folder = locate(options.model, reporter.downloading)
        with reporter.status(f"Loading {options.model}"):
            malmm, mode, plan = load(to_load, folder)
    except CheckpointError as error:
        raise SetupError(str(error)) from error
    except (OSError, ValueError) as error:
        raise SetupError(f"cannot load model {options.model}: {str(error).strip().splitlines()[0]}") from error
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
        raise UsageError(f"{shown(path.parent)} is a folder without {TRAINED_WEIGHTS}{why}", option="--checkpoint")
    raise UsageError(f"{shown(path)}: no such file or folder", option="--checkpoint")


def check_output_dir(folder: Path, option: str = "--output-dir") -> None:
    """The output folder exists or can be made, and a file can be written in it: a usage error
    now rather than every video failing after the model has loaded."""
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{shown(folder)} exists and is not a folder", option=option)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".malmm-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        reason = f"cannot write in {shown(folder)}: {error.strerror or error}"
        raise UsageError(reason, option=option) from None
