"""Watch a live stream: a caption (and an answer) of every interval, read from the live memory.

    from models import Malmm
    from malmm_cli.media.live import parse_source
    from malmm_cli.jobs.watch import watch
    malmm = Malmm.from_pretrained()
    watch(malmm, parse_source("rtsp://camera/stream"), every=10, on_event=print)

The stream goes through the same reading loop as a file (pipeline.read_streams): `watch_readers`
describes it, a memory that reads every frame and is read out at the end of each interval,
never by reading again. Memory stays the same size however long the stream runs.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from dataclasses import dataclass

from malmm_cli.media.live import Source
from malmm_cli.media.plans import VideoError
from malmm_cli.output.events import WatchEvent
from malmm_cli.reading.live import LiveStream
from malmm_cli.reading.pipeline import Answered, Memory, Reader, read_streams
from malmm_cli.reading.stream import VISION_BATCH, Progress
from models import CAPTION, QUESTION, GenerationSettings, Malmm


def watch_readers(every: float, question: str | None = None, reset_every: float | None = None) -> list[Reader]:
    """A caption of each interval of `every` seconds and, with a question, its answer, both read
    from memories that run on (or start afresh every `reset_every` seconds, a multiple of `every`)."""
    if reset_every is not None and abs(reset_every / every - round(reset_every / every)) > 1e-6:
        raise ValueError(f"the memory is reset between intervals: --reset-every must be a multiple of {every:g} s")
    prompt = CAPTION.prompt()
    readers = [Reader("caption", prompt, every=every, at_span=prompt, restart=reset_every)]
    if question is not None:
        asked = QUESTION.prompt(question)
        readers.append(Reader("question", asked, every=every, at_span=asked, restart=reset_every, question=question))
    return readers


def check_watch(every: float, fps: float, reset_every: float | None, memory: Memory) -> None:
    """What can be refused before a model loads (ValueError): chapters that cut intervals, and a
    concat memory that a stream would overflow (it keeps every frame of a chapter)."""
    watch_readers(every, None, reset_every)
    if memory.strategy == "concat" and (reset_every is None or reset_every * fps > memory.bank_length):
        raise ValueError(
            f"--memory concat keeps every frame, at most {memory.bank_length}: a stream needs --reset-every "
            f"of at most {memory.bank_length / fps:g} s at {fps:g} frames/s"
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
    batch_size: int = VISION_BATCH,
    notify: Callable[[str], None] = lambda line: None,
    progress: Progress | None = None,
    on_start: Callable[[LiveStream], None] | None = None,
) -> WatchSummary:
    """Read `source` until it ends (or `duration` s of stream, or `LiveStream.stop()`), calling
    on_event for each interval as soon as it is read out; the interval in progress is read out
    at the end. on_start(stream) is called once the stream is open (to stop it from a signal
    handler, or show its status). Raises VideoError if nothing could be read."""
    memory = memory or Memory(CAPTION.memory_bank_length)
    check_watch(every, fps, reset_every, memory)
    readers = watch_readers(every, question, reset_every)
    stream = LiveStream(malmm, source, fps, batch_size, timeout=timeout, reconnect=reconnect, duration=duration,
                        buffered=buffered, notify=notify)  # fmt: skip
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
