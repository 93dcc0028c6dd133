"""Watch a live stream: a caption (and an answer) of every interval, read from the live memory.

    from models import Malmm
    from malmm_cli.media.live import parse_source
    from malmm_cli.jobs.watch import watch
    malmm = Malmm.from_pretrained()
    watch(malmm, parse_source("rtsp://camera/stream"), every=10, on_event=print)

The stream goes through the same reading loop as a file (pipeline.read_streams): `watch_readers`
describes it, a memory that reads every frame and is read out at the end of each interval,
never by reading again. Memory stays the same size however long the stream runs.

`WatchSession` is `malmm watch` as a job: it checks what needs no model (SOURCE, the options,
the checkpoint, that the source answers, --output), loads the model, watches, writes the events
(stdout, --output) and says how it ended (`WatchOutcome`); `stop()` ends it from a signal
handler. Importing this module loads no torch: the checks run before the reading layer loads.
"""

from __future__ import annotations

import datetime
import math
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from malmm_cli.jobs.errors import UsageError
from malmm_cli.jobs.model import RunOptions, check_checkpoint, load_model
from malmm_cli.media.live import STDIN_ADVICE, Source, SourceError, check_source, check_stdin, parse_source
from malmm_cli.media.names import shown
from malmm_cli.media.plans import VideoError
from malmm_cli.output.events import EventWriter, WatchEvent
from malmm_cli.output.stdout import silence
from models.presets import CAPTION, QUESTION, GenerationSettings

if TYPE_CHECKING:  # loaded once the checks have passed
    from malmm_cli.jobs.reporting import Reporter
    from malmm_cli.reading.live import LiveStream
    from malmm_cli.reading.pipeline import Answered, Memory, Reader
    from malmm_cli.reading.stream import Progress
    from models import Malmm


def check_reset(every: float, reset_every: float | None) -> None:
    """Chapters (--reset-every) hold whole intervals: ValueError otherwise."""
    if reset_every is not None and abs(reset_every / every - round(reset_every / every)) > 1e-6:
        raise ValueError(f"the memory is reset between intervals: --reset-every must be a multiple of {every:g} s")


def watch_readers(every: float, question: str | None = None, reset_every: float | None = None) -> list[Reader]:
    """A caption of each interval of `every` seconds and, with a question, its answer, both read
    from memories that run on (or start afresh every `reset_every` seconds, a multiple of `every`)."""
    from malmm_cli.reading.pipeline import Reader

    check_reset(every, reset_every)
    prompt = CAPTION.prompt()
    readers = [Reader("caption", prompt, every=every, at_span=prompt, restart=reset_every)]
    if question is not None:
        asked = QUESTION.prompt(question)
        readers.append(Reader("question", asked, every=every, at_span=asked, restart=reset_every, question=question))
    return readers


def check_watch(every: float, fps: float, reset_every: float | None, bank_length: int, strategy: str = "malmm") -> None:
    """What can be refused before a model loads (ValueError): chapters that cut intervals, and a
    concat memory that a stream would overflow (it keeps every frame of a chapter)."""
    check_reset(every, reset_every)
    if strategy == "concat" and (reset_every is None or reset_every * fps > bank_length):
        raise ValueError(
            f"--memory concat keeps every frame, at most {bank_length}: a stream needs --reset-every "
            f"of at most {bank_length / fps:g} s at {fps:g} frames/s"
        )


@dataclass
class WatchSummary:
    """How a watch ended: frames sampled, read and dropped, and why it stopped (`failed`: on an
    error, not at the end of the stream, --duration or a stop)."""

    sampled: int
    read: int
    dropped: int
    reconnects: int
    ended: str
    failed: bool


def watch(
    malmm: Malmm,
    source: Source,
    *,
    every: float = 10.0,
    fps: float = 1.0,
    question: str | None = None,
    reset_every: float | None = None,
    memory: Memory | None = None,
    settings: GenerationSettings = CAPTION.generation,
    on_event: Callable[[WatchEvent], None],
    duration: float | None = None,
    timeout: float = 10.0,
    reconnect: int = 5,
    buffered: int = 4,
    batch_size: int | None = None,
    notify: Callable[[str], None] = lambda line: None,
    progress: Progress | None = None,
    on_start: Callable[[LiveStream], None] | None = None,
) -> WatchSummary:
    """Read `source` until it ends (or `duration` s of stream, or `LiveStream.stop()`), calling
    on_event for each interval as soon as it is read out; the interval in progress is read out
    at the end. on_start(stream) is called once the stream is open (to stop it from a signal
    handler, or show its status). batch_size: frames encoded at once (None: stream.py's
    VISION_BATCH). Raises VideoError if nothing could be read."""
    from malmm_cli.reading.live import LiveStream
    from malmm_cli.reading.pipeline import Memory, read_streams
    from malmm_cli.reading.stream import VISION_BATCH

    memory = memory or Memory(CAPTION.memory_bank_length)
    check_watch(every, fps, reset_every, memory.bank_length, memory.strategy)
    readers = watch_readers(every, question, reset_every)
    stream = LiveStream(malmm, source, fps, batch_size or VISION_BATCH, timeout=timeout, reconnect=reconnect,
                        duration=duration, buffered=buffered, notify=notify)  # fmt: skip
    answers: dict[tuple[float, float], dict[str, Answered]] = {}

    def answered(answer: Answered) -> None:
        """Gather an interval's answers (caption, and question); the last one makes the event."""
        span = answer.span
        answers.setdefault(span, {})[answer.reader.role] = answer
        if len(answers[span]) < len(readers):
            return
        parts = answers.pop(span)
        start, end = span
        if end < start + every - 1e-6:  # the interval in progress: to the end of its last frame's grid slot
            end = min(start + every, end + 1 / fps)
        frames, dropped = stream.reader.counts(end)
        asked = parts.get("question")
        now = datetime.datetime.now().astimezone().isoformat(timespec="milliseconds")
        on_event(WatchEvent(
            start=start, end=end, wall_time=now,
            text=parts["caption"].answer, frames=frames, dropped=dropped,
            lag=max(0.0, stream.duration - end) + stream.reader.stats.behind,
            question=question, answer=None if asked is None else asked.answer,
            chapter=None if reset_every is None else math.floor(start / reset_every + 1e-9),
        ))  # fmt: skip

    def opened(_source: object) -> LiveStream:
        if on_start is not None:
            on_start(stream)
        return stream

    (result,) = read_streams(
        malmm, [source.location], opened, readers, "watch", memory=memory, settings=settings,
        progress=None if progress is None else [progress], on_answer=answered,
    )  # fmt: skip
    reader = stream.reader
    if isinstance(result, Exception):
        if isinstance(result, VideoError) and reader.ended and reader.stats.read == 0:
            why = "the stream ended first" if reader.ended == "end" else reader.ended
            raise VideoError(f"no frame was read: {why}") from None
        raise result
    stats, ended = reader.stats, reader.ended or "end"
    return WatchSummary(stats.sampled, stats.read, stats.dropped, stats.reconnects, ended, reader.failed)


@dataclass(frozen=True)
class WatchRequest:
    """What `malmm watch` is asked, beside the options every task shares (RunOptions): SOURCE as
    typed, the intervals, how much of the stream, how to read it, and where events go (`format`
    on stdout when `stdout`, appended to `output` too)."""

    source: str
    every: float = 10.0
    question: str | None = None
    reset_every: float | None = None
    duration: float | None = None
    fps: float = 1.0
    format: str = "jsonl"
    output: Path | None = None
    stdout: bool = True
    timeout: float = 10.0
    reconnect: int = 5


@dataclass(frozen=True)
class WatchOutcome:
    """How a watch ended. `ended`: "end" (the stream ended), "duration" (--duration reached),
    "stopped" (`WatchSession.stop()`), "closed" (stdout's reader went away, `| head`: not a
    failure) or "failed" (`reason` says why). `name`: the source as messages show it (no
    password). `summary`: frames read and dropped; None when it ended before a frame was read."""

    ended: str
    name: str
    summary: WatchSummary | None = None
    reason: str | None = None


def _no_status_line(describe: Callable[[], str]) -> AbstractContextManager[object]:
    return nullcontext()


class WatchSession:
    """`malmm watch` as a job: `run()` checks, loads the model, watches until the stream ends
    (or --duration, a failure, `stop()`) and returns how it ended.

    on_event: also receives every event, after it is written. on_open: called once the stream is
    open, from when `stop()` ends it with the interval in progress read out (before, a Ctrl-C is
    the caller's KeyboardInterrupt). status_line(describe): a context around the watching, given
    a function that says how far the stream is (`status`), to show it."""

    def __init__(
        self,
        request: WatchRequest,
        options: RunOptions,
        reporter: Reporter,
        *,
        on_event: Callable[[WatchEvent], None] | None = None,
        on_open: Callable[[], None] | None = None,
        status_line: Callable[[Callable[[], str]], AbstractContextManager[object]] = _no_status_line,
    ):
        self.request, self.options, self.reporter = request, options, reporter
        self.on_event, self.on_open, self.status_line = on_event, on_open, status_line
        self.stopping = False  # stop() was called (from a signal handler too: a plain assignment)
        self._name = request.source
        self._stream: LiveStream | None = None
        self._writer: EventWriter | None = None
        self._closed = False  # stdout's reader went away
        self._problem: str | None = None  # --output could not be written

    def stop(self) -> None:
        """End the watch at the next frame; the interval in progress is still read out and written.
        Safe in a signal handler."""
        self.stopping = True
        if self._stream is not None:
            self._stream.stop()

    def status(self) -> str:
        """A line for a person watching: how far the stream is, how fast it is read, how far behind."""
        return f"opening {self._name}" if self._stream is None else self._stream.status()

    def check(self) -> Source:
        """Everything that needs no model: SOURCE, --reset-every and --memory, --checkpoint
        (UsageError), and that the source can be read now: a wrong address, a terminal or an MP4
        on stdin (SourceError). Reads the first bytes of stdin, handing them on."""
        request, options = self.request, self.options
        try:
            source = parse_source(request.source)
        except SourceError as error:
            raise UsageError(str(error), option="SOURCE") from None
        self._name = source.display
        try:
            check_watch(request.every, request.fps, request.reset_every, options.bank(CAPTION), options.memory)
        except ValueError as error:
            raise UsageError(str(error), option="--reset-every/--memory") from None
        check_checkpoint(options)
        if source.kind == "stdin":
            check_stdin()  # a terminal, or an MP4 a pipe cannot give, is said before the model loads
        check_source(source, request.timeout)  # a wrong address is said now, not after the model loads
        return source

    def run(self) -> WatchOutcome:
        """Check (see `check`), open the event writer, load the model and watch. Raises UsageError
        or SetupError before anything is read; a KeyboardInterrupt (Ctrl-C before the stream is
        open, or a second one) goes up, the events written so far kept."""
        try:
            source = self.check()
        except SourceError as error:
            return WatchOutcome("failed", self._name, reason=str(error))
        self._writer = self._open_writer()
        try:
            return self._watch(source)
        finally:
            self._writer.close()

    def _open_writer(self) -> EventWriter:
        request = self.request
        try:
            return EventWriter(request.format, stdout=request.stdout, path=request.output)
        except OSError as error:
            reason = f"cannot write {shown(request.output)}: {error.strerror or error}"
            raise UsageError(reason, option="--output") from None
        except ValueError as error:
            raise UsageError(shown(str(error)), option="--output") from None

    def _watch(self, source: Source) -> WatchOutcome:
        from malmm_cli.jobs.loading import vision_batch_size
        from malmm_cli.reading.pipeline import Memory, check_memory

        request, options, name = self.request, self.options, self._name
        malmm = load_model(options, CAPTION, self.reporter, readers=2 if request.question else 1)
        try:
            memory = Memory(options.bank(CAPTION), options.memory)
            check_memory(malmm, memory)
            self.reporter.info(
                f"Watching {name}: a caption every {request.every:g} s of stream, {request.fps:g} frames/s read"
            )
            with self.status_line(self.status):
                summary = watch(
                    malmm, source, every=request.every, fps=request.fps, question=request.question,
                    reset_every=request.reset_every, memory=memory, settings=options.generation(CAPTION),
                    on_event=self._write, duration=request.duration, timeout=request.timeout,
                    reconnect=request.reconnect, batch_size=vision_batch_size(malmm, options.batch_size),
                    notify=self.reporter.warn, on_start=self._opened,
                )  # fmt: skip
        except (VideoError, ValueError) as error:
            if self.stopping:  # stopped before the first frame
                return WatchOutcome("stopped", name)
            hint = f" (standard input is read in order, as {STDIN_ADVICE})" if source.kind == "stdin" else ""
            return WatchOutcome("failed", name, reason=f"{error}{hint}")
        if self.stopping:  # also when stopping closed the pipe stdout went to
            return WatchOutcome("stopped", name, summary)
        if self._problem or summary.failed:
            return WatchOutcome("failed", name, summary, self._problem or summary.ended)
        if self._closed:
            return WatchOutcome("closed", name, summary)
        return WatchOutcome("duration" if summary.ended == "duration" else "end", name, summary)

    def _opened(self, stream: LiveStream) -> None:
        self._stream = stream
        if self.stopping:  # stopped while it was opening
            stream.stop()
        if self.on_open is not None:
            self.on_open()

    def _write(self, event: WatchEvent) -> None:
        """Write an event; a reader of stdout that went away, or an --output that cannot be
        written (a full disk), ends the watch (the stream is stopped, the interval in progress read out)."""
        try:
            self._writer.write(event)
        except BrokenPipeError:  # the reader of stdout went away (`| head -3`): stop, quietly
            silence(sys.stdout)  # what stdout's buffer holds must not fail again at exit
            self._closed = True
            self._stream.stop()
        except OSError as error:  # --output cannot be written (disk full...): stop, and say so
            self._problem = f"cannot write {self.request.output}: {error.strerror or error}"
            self._stream.stop()
        if self.on_event is not None:
            self.on_event(event)
