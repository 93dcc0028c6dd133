"""The job behind `malmm train`: check everything that needs no model, then load it and train.

`run_training(request, options, reporter, progress)` is the whole run; `check_run` its first half,
which reads and checks the data, the run folder and the starting checkpoint without importing
torch, so that a mistake is said in a fraction of a second. Refusals are `UsageError` (a bad option)
and `SetupError` (data, folder or model that cannot be trained as asked), both before training
starts; a run that fails once started raises `TrainingFailed`, and one stopped by Ctrl-C or SIGTERM
`TrainingStopped` once its state is saved.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from malmm_cli.jobs.dataset import DatasetError, Example
from malmm_cli.jobs.errors import SetupError, UsageError
from malmm_cli.jobs.model import RunOptions, check_checkpoint, load_model
from malmm_cli.jobs.training.data import check_videos, held_out, hold_out, read_files
from malmm_cli.jobs.training.folder import TrainingError, check_output, check_writable, saved_epochs
from malmm_cli.jobs.training.settings import TASK_DEFAULTS, TASK_PRESETS, TrainData, TrainSettings, model_name
from malmm_cli.jobs.training.timed import TIMED_TASKS
from malmm_cli.wording import counted, plural
from models.presets import OPTIMIZERS, TRAINED_WEIGHTS

if TYPE_CHECKING:  # loaded once the checks have passed
    from malmm_cli.jobs.reporting import Reporter
    from malmm_cli.jobs.training.trainer import Position, Progress, Trainer

# What the command line names each task's reader, for the line that says how to use the run.
# How a trained run is read: dense events by `caption --dense`, a grounding query by `ask --timed`
READING_COMMANDS = {"caption": "caption", "ask": "ask", "classify": "predict", "find": "find",
                    "dense": "caption --dense", "ground": 'ask --timed "QUERY"'}  # fmt: skip


@dataclass(frozen=True)
class TrainRequest:
    """What a run is asked: the data, the run folder, and the recipe. A recipe field left None
    takes TrainSettings' default or the task's MA-LMM one (TASK_DEFAULTS); `epochs`, with
    `resume`, the length the saved run was planned for."""

    data: Path
    task: str
    output: Path | None = None  # the run folder: required (None is refused as a missing -o)
    val: Path | None = None
    val_split: float | None = None
    videos: Path | None = None
    label_field: str | None = None
    split: str | None = None
    resume: bool = False
    epochs: int | None = None
    lr: float | None = None
    frames: int | None = None
    memory_bank_length: int | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    warmup_steps: int | None = None
    samplings: int | None = None
    seed: int | None = None
    save_every: int | None = None
    optimizer: str | None = None
    augment: bool | None = None
    lora_rank: int | None = None
    llm_lora_rank: int | None = None
    temporal: str | None = None
    temporal_layers: int | None = None
    temporal_with_qformer: bool | None = None
    time_aware: bool | None = None
    window: float | None = None  # find's: seconds a window, negative windows a moment, the rule trained
    negatives: int | None = None
    find_score: str | None = None

    def __post_init__(self) -> None:
        if self.output is None:
            raise UsageError("give the run folder: -o RUN (new, or one to --resume)", option="--output")
        find_options = {"--window": self.window, "--negatives": self.negatives, "--score": self.find_score}
        given = [name for name, value in find_options.items() if value is not None]
        if self.task != "find" and given:
            raise UsageError(f"{', '.join(given)}: find's windows and scoring rule, for --task find only",
                             option=given[0])  # fmt: skip
        if self.task == "find" and self.time_aware:
            raise UsageError("--time-aware does not train --task find yet: find's windows are read without their "
                             "times (docs/time-aware.md)", option="--time-aware")  # fmt: skip
        if self.val is not None and self.val_split is not None:
            raise UsageError("give --val or --val-split, not both", option="--val/--val-split")

    @property
    def run_folder(self) -> Path:
        """`output`, which construction requires."""
        return cast(Path, self.output)

    def settings(self, saved: int | None = None) -> TrainSettings:
        """The run's settings; saved: the epochs of the run's saved state (read when resuming)."""
        recipe = {f.name for f in dataclasses.fields(TrainSettings)} & {f.name for f in dataclasses.fields(self)}
        given = {name: getattr(self, name) for name in recipe - {"task"} if getattr(self, name) is not None}
        if self.resume and self.epochs is None and saved is not None:  # the run's own length; --epochs extends it
            given["epochs"] = saved
        return TrainSettings(task=self.task, **{**TASK_DEFAULTS[self.task], **given})


@dataclass(frozen=True)
class TrainPlan:
    """A run that passed every check that needs no model: ready to load it and train."""

    request: TrainRequest
    options: RunOptions  # what to load, with the run's memory bank
    settings: TrainSettings
    data: TrainData
    train: list[Example]
    val: list[Example]  # empty while --val-split is still to hold them out (`examples`)

    def examples(self) -> tuple[list[Example], list[Example]]:
        """(training, validation): --val-split's held out now (a seeded permutation: torch)."""
        split = self.request.val_split
        if self.request.val is not None or not split:
            return self.train, self.val
        train, val = hold_out(self.train, split, self.settings.seed)
        try:  # the held-out ones may be the only videos there
            check_videos(train)
        except DatasetError as error:
            raise SetupError(str(error)) from error
        return train, val


@dataclass
class TrainRun:
    """How a finished run ended: its folder, training.json's summary, and the examples whose clips
    could not be read (left out; the checkpoint is trained on the rest, which counts as a failure)."""

    output: Path
    summary: dict[str, Any]
    unreadable: list[Example] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.unreadable)


class TrainingFailed(Exception):
    """The run started and could not go on; the message says why and where its last state is."""


class TrainingStopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped the run, its state saved: the same request with `resume` goes on.
    `interrupt` is the signal's own exception (the command line tells Ctrl-C from SIGTERM by it)."""

    def __init__(self, output: Path, interrupt: KeyboardInterrupt):
        super().__init__(f"the run is saved in {output}; the same command with --resume goes on")
        self.interrupt = interrupt


class SilentProgress:
    """A run's progress that shows nothing (Python callers, tests)."""

    def start(self, step: int) -> None:
        pass

    def step(self, position: Position, loss: float | None, lr: float, examples: int) -> None:
        pass

    def epoch(self, record: dict[str, Any]) -> None:
        pass


@contextmanager
def silent_progress(total_steps: int, epochs: int) -> Iterator[Progress]:
    yield SilentProgress()


# What shows a run's progress, made once its length is known: (optimiser steps, epochs) -> Progress.
ProgressFactory = Callable[[int, int], AbstractContextManager["Progress"]]


def check_run(request: TrainRequest, options: RunOptions) -> TrainPlan:
    """Everything that needs no model, in this order: the data files (readable, valid, --val-split
    leaving examples to train on, some videos there), the run folder (new or empty, or holding a
    state to --resume; writable) and the starting checkpoint. Imports no torch; raises SetupError
    or UsageError."""
    output = request.run_folder
    try:
        train, val = read_files(request.data, request.task, request.val, request.videos, request.label_field,
                                request.split)  # fmt: skip
        splitting = request.val is None and bool(request.val_split)
        held = held_out(len(train), request.val_split) if splitting else 0
        check_videos(train, len(train) - held)
        data = TrainData.of(request.data, request.val, request.val_split, request.videos, request.label_field,
                            request.split)  # fmt: skip
        check_output(output, request.resume)
        check_writable(output)
    except (DatasetError, TrainingError) as error:
        raise SetupError(str(error)) from error
    settings = request.settings(saved_epochs(output) if request.resume else None)
    options = dataclasses.replace(options, memory_bank_length=settings.memory_bank_length)
    check_checkpoint(options)
    return TrainPlan(request, options, settings, data, train, val)


def run_training(
    request: TrainRequest, options: RunOptions, reporter: Reporter, progress: ProgressFactory = silent_progress
) -> TrainRun:
    """Check (`check_run`), load the model, train to the end or from where a saved run stopped,
    saving as it goes; say how to use the result. options: what to load (its memory bank is the
    run's). progress: made with the run's optimiser steps and epochs, told of each step and epoch."""
    plan = check_run(request, options)
    from malmm_cli.jobs.training.trainer import NothingReadable, Trainer, training_shape
    from models.checkpoint import CheckpointError

    output, settings = request.run_folder, plan.settings
    train, val = plan.examples()
    shape = training_shape(settings, train + val)
    malmm = load_model(plan.options, TASK_PRESETS[request.task], reporter, training=shape)
    labels = sorted({e.label for e in train}) if request.task == "classify" else None
    try:
        trainer = Trainer(malmm, train, val, settings, output, base_model=model_name(plan.options.model),
                          cache=plan.options.cache(reporter), labels=labels, warn=reporter.warn,
                          data=plan.data)  # fmt: skip
        if request.resume:
            trainer.resume()
    except (TrainingError, CheckpointError) as error:
        raise SetupError(str(error)) from error
    reporter.info(describe(trainer, len(train), len(val)))
    if settings.task in TIMED_TASKS and trainer.malmm.time_aware is None:
        reporter.warn(f"--task {settings.task} without --time-aware: the frames do not know their times, so the "
                      "model can only guess them from the frames' order (docs/time-aware.md)")  # fmt: skip
    try:
        with progress(trainer.total_steps, settings.epochs) as shown:
            shown.start(trainer.position.step)
            summary = trainer.run(shown)
    except KeyboardInterrupt as interrupt:
        raise TrainingStopped(output, interrupt) from None
    except NothingReadable as error:
        raise TrainingFailed(str(error)) from error
    except TrainingError as error:
        raise TrainingFailed(f"{error} (the last saved state is in {output})") from error
    reporter.info(conclusion(summary, output, settings))
    unreadable = [e for e in train + val if e.id in trainer.features.unreadable]  # in file order
    if unreadable:
        reporter.error(left_out(unreadable, output))
    return TrainRun(output, summary, unreadable)


def describe(trainer: Trainer, train: int, val: int) -> str:
    s = trainer.settings
    what = "moment" if s.task == "find" else "clip"
    frames = counted(s.frames, "frame")
    if s.task == "find":
        frames = (f"{s.window:g}s windows of {frames} (1 positive and up to {s.negatives} negative a moment, "
                  f"{s.find_score} rule)")  # fmt: skip
    return (
        f"Training {s.task} on {counted(train, what)} ({val} for validation): {counted(s.epochs, 'epoch')} of "
        f"{counted(s.steps_per_epoch(train), 'step')}, batch {s.batch_size} x {s.grad_accum}, lr {s.lr:g}, "
        f"{frames}, memory bank {s.memory_bank_length}, {OPTIMIZERS[s.optimizer]}"
        f"{', clips cropped and flipped' if s.augment else ''}{f', LoRA rank {s.lora_rank}' if s.lora_rank else ''}"
        f"{f', LLM LoRA rank {s.llm_lora_rank}' if s.llm_lora_rank else ''}"
        f"{_temporal_words(s)}{', time-aware frames' if trainer.malmm.time_aware else ''}; "
        f"{sum(p.numel() for _, p in trainer.trained) / 1e6:.1f} M trained parameters"
    )


def _temporal_words(settings: TrainSettings) -> str:
    if settings.temporal == "none":
        return ""
    alone = "alone, on cached Q-Former outputs" if settings.temporal_only else "with the Q-Former"
    return f", temporal {settings.temporal} ({counted(settings.temporal_layers, 'layer')}) trained {alone}"


def conclusion(summary: dict[str, Any], output: Path, settings: TrainSettings) -> str:
    best = summary["best"] or {}
    if settings.task == "find":  # find samples a rate: the training's frames a window
        score = " --score yes" if settings.find_score == "yes" else ""
        reading = (f'find VIDEO "QUERY" --checkpoint {output} --fps {settings.frames / settings.window:g} '
                   f"--window {settings.window:g}{score}")  # fmt: skip
    else:
        reading = f"{_reading_command(settings.task)} --checkpoint {output} --frames {settings.frames}"
    return (
        f"Done: {output / TRAINED_WEIGHTS} holds epoch {best.get('epoch')} of {settings.epochs}; "
        f"use it with `malmm {reading} --memory-bank-length {settings.memory_bank_length}`"
    )


def _reading_command(task: str) -> str:
    """`caption VIDEO`, `ask VIDEO --timed "QUERY"`: the command, the video where it goes."""
    command, *options = READING_COMMANDS[task].split(" ", 1)
    return " ".join([command, "VIDEO", *options])


def left_out(unreadable: list[Example], output: Path) -> str:
    """The examples a finished run could not read, the first ten named."""
    listed = ", ".join(f"{example.id} ({example.video})" for example in unreadable[:10])
    more = f" and {len(unreadable) - 10} more" if len(unreadable) > 10 else ""
    return (
        f"{counted(len(unreadable), 'example')} could not be read and {plural(len(unreadable), 'was')} left out: "
        f"{listed}{more}; the checkpoint in {output} is trained on the rest: fix them and train again"
    )
