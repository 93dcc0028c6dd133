"""Progress and messages on stderr, with Rich: bars on a terminal, plain lines elsewhere.

stdout carries results only, so `malmm caption clip.mp4 > caption.txt` and pipes stay clean.
Nothing is animated when stderr is not a terminal or with --quiet; --quiet also drops the
informational lines, leaving errors, warnings and the failure summary.

Messages name files, and a file's name is data (names.py): every message, bar and summary cell
goes through `names.shown` (no control character reaches the terminal, a message stays one line)
and Rich's `escape` (a `[bold]` in a name is text, not markup).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Column, Table
from rich.text import Text
from tqdm import tqdm

from malmm_cli.media.inputs import Outcome
from malmm_cli.media.names import shown
from malmm_cli.wording import counted


def _plain(message: str) -> str:
    """A message (or a name) as Rich markup that prints it as it is shown to a person: escaped
    control characters and undecodable bytes, one line, brackets as text."""
    return escape(shown(message))


class _RateColumn(ProgressColumn):
    """Items per second, in the bar's own unit (frames for a video, videos for the overall bar)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "frames")
        return Text("" if speed is None else f"{speed:.1f} {unit}/s", style="progress.data.speed")


UNFOLDED_WIDTH = 10_000  # columns of a table off a terminal: as wide as its rows
NAME_WIDTH = (12, 40)  # the least and the most a video's name takes on its bar line


def _video_columns(width: int) -> list[ProgressColumn]:
    """A video's bar line that fits `width`: the name and frames done of planned always, then,
    while they fit whole, the eta, the bar, the rate and the elapsed time, least important last.
    Rich shrank every field alike instead, which left "2… 1… eta 0…" at 60 columns."""
    optional = {  # most important first: the room each takes, padding included
        "eta": 12,
        "bar": 21,
        "rate": 16,
        "elapsed": 8,
    }
    room = width - 2 - 12 - NAME_WIDTH[0]  # the spinner, frames done of planned, the shortest name
    kept = set()
    for field, takes in optional.items():
        if takes > room:
            break
        kept.add(field)
        room -= takes
    name = Column(width=min(NAME_WIDTH[0] + max(room, 0), NAME_WIDTH[1]), no_wrap=True, overflow="ellipsis")
    columns: list[ProgressColumn] = [SpinnerColumn(), TextColumn("{task.description}", table_column=name)]
    if "bar" in kept:
        columns.append(BarColumn(bar_width=20))
    columns.append(MofNCompleteColumn(table_column=Column(min_width=11, no_wrap=True)))
    if "rate" in kept:
        columns.append(_RateColumn(table_column=Column(width=15, no_wrap=True)))
    if "elapsed" in kept:
        columns.append(TimeElapsedColumn())
    if "eta" in kept:
        columns += [TextColumn("eta"), TimeRemainingColumn()]
    return columns


class Reporter:
    """Everything malmm tells a person while it works."""

    def __init__(self, quiet: bool = False, console: Console | None = None):
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.animated = self.console.is_terminal and not quiet
        self._progress: Progress | None = None
        self._overall = None
        self._notes_shown: dict[str, str] = {}  # note -> the name of the first video it was shown for

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(_plain(message))

    def note(self, name: str, note: str) -> None:
        """How a video was read, where it differs from what was asked. A note repeated word for word
        for later videos (a long question asked of a whole folder) is shown in full once, then as
        one short line per video: the same words may be about another video's own sampling, and
        must not vanish for it."""
        first = self._notes_shown.setdefault(note, name)
        self.info(f"{name}: {note}" if first == name else f"{name}: the same note as for {first}")

    def table(self, table: Table) -> None:
        """A table fitted to a terminal; elsewhere (a log file, a pipe) in whole lines: folding
        paths at 30 columns because COLUMNS said 80 helps nobody reading a log."""
        if self.console.is_terminal:
            self.console.print(table)
        else:
            Console(file=self.console.file, width=UNFOLDED_WIDTH, highlight=False).print(table)

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/] {_plain(message)}")

    def error(self, message: str) -> None:
        self.console.print(f"[red]error:[/] {_plain(message)}")

    @contextmanager
    def status(self, message: str) -> Iterator[None]:
        """A spinner on a terminal (model download and load), one line elsewhere."""
        if self.animated:
            with self.console.status(_plain(message)):
                yield
        else:
            self.info(message)
            yield

    @contextmanager
    def batch(self, videos: int) -> Iterator[None]:
        """Progress bars for a run over `videos` inputs (an overall bar when there are several)."""
        if not self.animated:
            yield
            return
        with Progress(*_video_columns(self.console.width), console=self.console, transient=False) as progress:
            self._progress = progress
            if videos > 1:
                self._overall = progress.add_task("[bold]all videos", total=videos, unit="videos")
            try:
                yield
            finally:
                self._progress, self._overall = None, None

    @contextmanager
    def downloading(self, repo: str) -> Iterator[type]:
        """A tqdm-compatible class for huggingface_hub that draws bytes on a Rich bar."""
        self.info(f"Downloading {repo} (safetensors weights only)")
        if not self.animated:
            yield _SilentTqdm
            self.info(f"Downloaded {repo}")
            return
        columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn()]
        with Progress(*columns, TimeRemainingColumn(), console=self.console) as progress:
            yield _rich_tqdm(progress, f"download {repo}")

    def video_done(self) -> None:
        if self._progress is not None and self._overall is not None:
            self._progress.advance(self._overall)

    def video(self, name: str) -> VideoProgress:
        """The bar of one video, drawn among the batch's bars (`batch`) when there are any."""
        return VideoProgress(name, self._progress, self.info)


class VideoProgress:
    """The bar of one video (frames read of frames planned); a summary line when not animated.

    bars: where the bar is drawn (None: no bar); say: where its closing line goes."""

    def __init__(self, name: str, bars: Progress | None, say: Callable[[str], None]):
        self.bars = bars
        self.say = say
        self.name = name
        self.task = None
        self.frames = 0
        self.total = 0
        self.from_cache = False
        self.started = time.monotonic()

    def start(self, total_frames: int | None, from_cache: bool = False) -> None:
        self.total = total_frames
        self.from_cache = from_cache
        self.started = time.monotonic()
        if self.bars is not None:
            self.task = self.bars.add_task(_plain(self.name), total=total_frames)

    def advance(self, frames: int = 1) -> None:
        self.frames += frames
        if self.bars is not None and self.task is not None:
            self.bars.advance(self.task, frames)

    def finish(self) -> None:
        if self.bars is not None and self.task is not None:
            self.bars.update(self.task, total=self.frames, completed=self.frames)
            self.bars.remove_task(self.task)
        elapsed = time.monotonic() - self.started
        source = " (vision features from the cache)" if self.from_cache else ""
        self.say(f"{self.name}: {counted(self.frames, 'frame')} in {elapsed:.1f} s{source}")


class _Discard:
    """A text stream that drops what it is given."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class _SilentTqdm(tqdm):
    """huggingface_hub's progress hooks with nothing drawn (stderr is not a terminal, or --quiet)."""

    def __init__(self, *args: object, **kwargs: object):
        kwargs.pop("name", None)
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)


def _rich_tqdm(progress: Progress, description: str) -> type[tqdm]:
    """A tqdm subclass whose byte counts land on one Rich bar. huggingface_hub opens several bars
    (files, network bytes, bytes written); only the bytes-written one is drawn."""

    class RichTqdm(tqdm):
        def __init__(self, *args: object, **kwargs: object):
            kwargs.pop("name", None)
            kwargs["file"] = _Discard()  # tqdm keeps its bookkeeping; Rich does the drawing
            super().__init__(*args, **kwargs)
            drawn = str(kwargs.get("desc", "")).startswith("Reconstructing")
            self._task = progress.add_task(description, total=self.total or None) if drawn else None

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            self._sync()
            return shown

        def refresh(self, *args: object, **kwargs: object) -> None:
            super().refresh(*args, **kwargs)
            self._sync()

        def _sync(self) -> None:
            if getattr(self, "_task", None) is not None:
                progress.update(self._task, completed=self.n, total=self.total or None)

    return RichTqdm


def summary_table(outcomes: list[Outcome]) -> Table:
    table = Table(title="malmm summary", title_justify="left", show_edge=False)
    table.add_column("input", overflow="fold")
    table.add_column("status")
    table.add_column("detail", overflow="fold")
    table.add_column("time", justify="right")
    styles = {"done": "green", "partial": "yellow", "skipped": "dim", "failed": "red"}
    for outcome in outcomes:
        table.add_row(
            _plain(outcome.path),
            f"[{styles.get(outcome.status, '')}]{_plain(outcome.status)}[/]",
            _plain(outcome.detail),
            f"{outcome.seconds:.1f} s" if outcome.seconds else "",
        )
    return table


Job = TypeVar("Job", bound="_LongJob")


class _LongJob:
    """A bar for a long job counted in steps (description, bar, done/total, stats, elapsed, ETA),
    drawn only on a terminal; subclasses say what a step is and what to print without one."""

    description = "working"

    def __init__(self, reporter: Reporter, total: int, completed: int = 0):
        self.reporter, self.total, self.completed = reporter, total, completed
        self.started = time.monotonic()
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self: Job) -> Job:
        if self.reporter.animated:
            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"),
                       TimeRemainingColumn()]  # fmt: skip
            self._progress = Progress(*columns, console=self.reporter.console)
            self._progress.start()
            self._task = self._progress.add_task(self.description, total=self.total, completed=self.completed,
                                                 stats="")  # fmt: skip
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


class TrainingProgress(_LongJob):
    """A training run's bar (optimiser steps, loss, learning rate, examples/s, ETA) and one line
    per epoch; without a terminal, a plain line every `every` steps."""

    description = "training"

    def __init__(self, reporter: Reporter, total_steps: int, epochs: int, every: int = 50):
        super().__init__(reporter, total_steps)
        self.epochs, self.every = epochs, every
        self.examples = 0
        self.loss: float | None = None

    def start(self, step: int) -> None:
        """Steps already done by an earlier run (resume)."""
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def step(self, position: object, loss: float | None, lr: float, examples: int) -> None:
        self.examples += examples
        if loss is not None:  # a running mean, so one odd batch does not make the figure jump
            self.loss = loss if self.loss is None else 0.9 * self.loss + 0.1 * loss
        rate = self.examples / max(time.monotonic() - self.started, 1e-9)
        loss_text = "-" if self.loss is None else f"{self.loss:.4f}"
        stats = f"loss {loss_text}  lr {lr:.2e}  {rate:.1f} examples/s"
        description = f"epoch {position.epoch + 1}/{self.epochs}"
        if self._progress is not None:
            self._progress.update(self._task, completed=position.step, description=description, stats=stats)
        elif position.step % self.every == 0:
            self.reporter.info(f"{description} step {position.step}/{self.total}: {stats}")

    def epoch(self, record: dict) -> None:
        parts = [f"epoch {record['epoch']}/{self.epochs}"]
        shown = (
            ("train_loss", "loss"),
            ("val_loss", "val loss"),
            ("val_accuracy", "val accuracy"),
            ("val_mean_iou", "val mean IoU"),
            ("val_f1", "val F1"),
        )  # the last two: ground's, dense's
        for key, name in shown:
            if record.get(key) is not None:
                parts.append(f"{name} {record[key]:.4f}")
        parts.append(f"{counted(record['examples'], 'example')} in {record['seconds']:.1f} s")
        message = ", ".join(parts)
        if self._progress is not None:
            self._progress.console.print(_plain(message))
        else:
            self.reporter.info(message)


class EvalProgress(_LongJob):
    """An evaluation's bar (examples, examples/s, ETA); without a terminal, a plain line every
    `every` examples."""

    description = "evaluating"

    def __init__(self, reporter: Reporter, total: int, done: int = 0, every: int = 100):
        super().__init__(reporter, total, done)
        self.done, self.every, self.new = done, every, 0

    def advance(self, items: int, seconds: float) -> None:
        before = self.done
        self.done += items
        self.new += items
        stats = f"{self.new / max(time.monotonic() - self.started, 1e-9):.2f} examples/s"
        if self._progress is not None:
            self._progress.update(self._task, completed=self.done, stats=stats)
        elif self.done // self.every > before // self.every or self.done == self.total:
            self.reporter.info(f"evaluated {self.done}/{self.total}: {stats}")


class LiveStatus:
    """One status line on a terminal's stderr while a stream is watched (Rich Live, redrawn twice a
    second from `describe`); nothing elsewhere or with --quiet. What is written to stdout goes
    above the line when stdout is that terminal too, and to stdout itself when it is not (a pipe,
    a file): Rich would otherwise send it to the terminal."""

    def __init__(self, reporter: Reporter, describe: Callable[[], str]):
        self.reporter, self.describe = reporter, describe
        self._live: Live | None = None

    def __rich__(self) -> Text:
        return Text(shown(self.describe()), style="dim")

    def __enter__(self) -> LiveStatus:
        if self.reporter.animated:
            shared = sys.stdout.isatty()  # the same terminal: Rich prints stdout above the line
            self._live = Live(self, console=self.reporter.console, refresh_per_second=2, transient=True,
                              redirect_stdout=shared, redirect_stderr=False)  # fmt: skip
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None
