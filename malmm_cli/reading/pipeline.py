"""From video files to answers: the one reading loop that every task describes.

    from models import Malmm
    from malmm_cli.reading.pipeline import caption_video
    malmm = Malmm.from_pretrained()
    print(caption_video(malmm, "clip.mp4").caption)

A frame's way: `VideoStream` (stream.py) yields the vision features of each sampled frame, in time
order (for a live stream, `LiveStream` in live.py). `read_streams` steps every memory with them,
one frame of each video of a batch per step (the videos in lockstep, their memories stepped as
one batch). Memories are read out at the ends of their spans and at the end of the video, and the
LLM turns each read-out into text or ranks labels (every read-out of a step in one batch). A task
is only a description of its readers (`Reader`): caption, ask, predict and watch are lists of
readers, not loops. Which videos and clips are read together is lockstep.py's to say.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from malmm_cli.media.plans import VideoError
from malmm_cli.media.sampling import Sampling
from malmm_cli.media.timefmt import format_timestamp
from malmm_cli.reading.feature_cache import FeatureCache
from malmm_cli.reading.results import Answer, Found, RankedLabel, TimedText, VideoResult
from malmm_cli.reading.stream import VISION_BATCH, FrameSource, NoProgress, Progress, Sample, VideoStream, preprocess
from malmm_cli.reading.thumbnails import OVERVIEW_SPANS, ThumbnailCollector
from malmm_cli.reading.timed_text import on_video_clock, parse_timed
from malmm_cli.wording import counted, plural
from models import CAPTION, CLASSIFICATION, QUESTION, GenerationSettings, Malmm, MemoryState
from models.presets import DENSE, GROUND

if TYPE_CHECKING:
    from malmm_cli.reading.find import FindRule

__all__ = [  # what the command line and library callers use; stream.py's names are re-exported
    "Answered", "Memory", "Reader", "Sampling", "VideoFiles", "VideoStream", "answer_questions", "caption_readers",
    "caption_video", "check_memory", "dense_readers", "find_readers", "predict_actions", "predict_readers",
    "preprocess", "question_readers", "read_streams", "read_videos", "shared_memories",
]  # fmt: skip

TIMELINE_PROMPT = CLASSIFICATION.instruction
NEXT_ACTION_PROMPT = "what is the person likely to do next?"
ANSWERS_PER_BATCH = 16  # read-outs the LLM answers at once, unless the caller sizes it


@dataclass(frozen=True)
class Memory:
    """How every reader remembers: bank length and strategy (models.memory.STRATEGIES).

    With "concat" the bank length is the most frames a memory may hold (it keeps all of them)."""

    bank_length: int
    strategy: str = "malmm"


@dataclass(frozen=True)
class Reader:
    """One memory reading the video with its Q-Former instruction, and when it is read out.

    at_end: the LLM prompt when the video ends (None: no read-out then). every: also read out at
    the end of each span of this many seconds (`Grid`), asking `at_span`. restart: the memory
    starts empty every this many seconds (a multiple of `every`; segment captions restart with
    each span); otherwise one memory reads the whole video and span read-outs say what it holds
    so far (a timeline). labels: rank these instead of generating text (the top_k at the end,
    the span_top_k likeliest at each span).
    role: the part of the result it fills: caption, segment, question, timeline, found (then
    `find` turns its span rankings into moments: find.py) or dense (a dense caption: its answer's
    time-stamped events become the result's events). timed: a question whose answer names spans
    (timed_text.py reads them; ask --timed).
    """

    role: str
    instruction: str
    at_end: str | None = None
    every: float | None = None
    at_span: str | None = None
    restart: float | None = None
    labels: tuple[str, ...] = ()
    top_k: int = 1
    question: str | None = None
    span_top_k: int = 1
    find: FindRule | None = None
    timed: bool = False


def caption_readers(segment: float | None = None) -> list[Reader]:
    """The whole video's caption; with `segment` seconds, also each segment's, read on its own."""
    prompt = CAPTION.prompt()
    readers = [Reader("caption", prompt, at_end=prompt)]
    if segment:
        readers.append(Reader("segment", prompt, every=segment, at_span=prompt, restart=segment))
    return readers


def dense_readers() -> list[Reader]:
    """A dense caption (models/presets.DENSE): one memory reads the whole video, and the answer
    is read back into time-stamped events (a checkpoint trained with `--task dense` answers so)."""
    prompt = DENSE.prompt()
    return [Reader("dense", prompt, at_end=prompt)]


def question_readers(questions: Sequence[str], timed: bool = False) -> list[Reader]:
    """One reader per question: the Q-Former reads each frame through the question. The video's
    visual memory is shared by all of them (models/memory.py). timed: each question is a moment
    to find, asked in models/presets.GROUND's wording (what `--task ground` trains), and its
    answer is read back into spans."""
    if not questions:
        raise ValueError("no questions to answer")
    preset = GROUND if timed else QUESTION
    return [Reader("question", preset.prompt(q), at_end=preset.prompt(q), question=q, timed=timed) for q in questions]


def predict_readers(labels: Sequence[str] | None = None, every: float | None = None, top_k: int = 5) -> list[Reader]:
    """Without labels: a timeline (every `every` seconds, what is happening so far) and the likely
    next action at the end. With labels: the top_k labels at the end, and the likeliest label per
    interval with `every`. A label given twice is ranked once (it would split its probability)."""
    prompt = CLASSIFICATION.prompt()
    if labels:
        ranked = tuple(dict.fromkeys(labels))
        return [Reader("timeline", prompt, at_end=prompt, every=every, at_span=prompt, labels=ranked, top_k=top_k)]
    return [Reader("timeline", prompt, at_end=NEXT_ACTION_PROMPT, every=every, at_span=TIMELINE_PROMPT)]


def find_readers(queries: Sequence[str], window: float, rule: FindRule, restart: bool = True) -> list[Reader]:
    """Where each query happens, every `window` seconds (find.py scores the windows). likelihood:
    one reader ranks every query, as the answer to the caption instruction, in each window and
    over the whole video (one memory for all queries). yes: a reader per query asks whether the
    window shows it. restart: each window read by a memory of its own (docs/find.md says why)."""
    from malmm_cli.reading.find import YES_NO, yes_prompt

    queries = tuple(dict.fromkeys(queries))
    if not queries:
        raise ValueError("no query to find")
    every = {"every": window, "restart": window if restart else None}
    if rule.score == "yes":
        return [Reader("found", yes_prompt(q), at_span=yes_prompt(q), labels=YES_NO, span_top_k=2, question=q,
                       find=rule, **every) for q in queries]  # fmt: skip
    prompt = CAPTION.prompt()
    whole = Reader("found", prompt, at_end=prompt, labels=queries, top_k=len(queries), question=queries[0])
    spans = Reader("found", prompt, at_span=prompt, labels=queries, span_top_k=len(queries), find=rule, **every)
    return [spans, whole]


@dataclass
class _Run:
    """Bookkeeping shared by the tasks: frames read, their times, and notes on the result."""

    frames: int = 0
    first: float = 0.0
    last: float = 0.0
    notes: list[str] = field(default_factory=list)

    def saw(self, frame: Sample) -> None:
        if self.frames == 0:
            self.first = frame.time
        self.frames += 1
        self.last = frame.time

    def result(self, stream: FrameSource, path: str | Path, task: str) -> VideoResult:
        thumbnails = stream.thumbnails  # replayed frames' pictures: decoded now, those few frames alone
        preview = None if thumbnails is None else thumbnails.preview(stream.missing(), stream.ended_at, stream.pictures)
        return VideoResult(
            path=str(path),
            task=task,
            duration=stream.span[1] - stream.span[0],
            frames=self.frames,
            first_frame=self.first,
            last_frame=self.last,
            warnings=stream.warnings(),
            notes=stream.notes() + self.notes,
            preview=preview,
            clip=stream.clip,
        )


@dataclass(frozen=True)
class Grid:
    """Consecutive spans of `length` seconds over a video or a clip of it (segments, timeline
    intervals, chapters), from `start` to `end` (a clip's, else 0 and the video's duration).

    One rule for all: a frame belongs to the span of the time it was planned for (its target),
    so a span's frames are known before any is read; a frame's real timestamp is within one
    frame of that with exact seeking, up to half a keyframe interval with `--seek keyframe`.
    end None: a live stream, whose end is not known (its frames are not planned ahead).
    """

    length: float
    end: float | None
    start: float = 0.0

    def index(self, seconds: float) -> int:
        return math.floor((seconds - self.start) / self.length + 1e-9)

    def span(self, index: int) -> tuple[float, float]:
        start = self.start + index * self.length
        end = start + self.length
        return start, end if self.end is None else min(end, self.end)

    def count(self) -> int:
        return max(1, math.ceil((self.end - self.start) / self.length - 1e-9))

    def empty_note(
        self, times: list[float], what: str, clip: bool = False, video_fps: float | None = None
    ) -> str | None:
        """Say how many spans got no sampled frame (they are left out of the result), and what
        sampling gives each a frame; None when every span has frames.

        A last span shorter than one of the video's frames (a 4.004 s clip in 2 s intervals) may
        hold no frame at all: it is not worth a note. The advice never lowers the rate sampled
        (--fps 0.5 for 100 frames over 4 s would read 3), nor asks for more frames per second than
        the video has (spans shorter than a frame then need to be longer instead)."""
        count = self.count()
        hit = {self.index(t) for t in times}
        empty = [i for i in range(count) if i not in hit]
        tail = self.span(count - 1)
        if video_fps and empty and empty[-1] == count - 1 and tail[1] - tail[0] < 1 / video_fps - 1e-9:
            empty.pop()  # a sliver past the last frame
            count -= 1
        if not empty:
            return None
        needed = 1 / self.length  # frames per second that put one in every span
        if video_fps and needed > video_fps * (1 + 1e-9):
            option = {"segment": "--segment", "window": "--window"}.get(what, "--every")
            advice = (
                f": the video has {video_fps:g} frames/s, so a {what} needs {option} "
                f"{_rate_up(1 / video_fps)} s or more to hold one"
            )
        elif clip:
            advice = f": sample --frames {self.frames_for_every_span()} or more"
        elif len(times) / (self.end - self.start) < needed:
            advice = f": sample at least a frame every {self.length:g} s (--fps {_rate_up(needed)})"
        else:
            advice = ""  # already sampled densely enough: those spans hold no frame of the video
        return (
            f"{len(empty)} of {counted(count, what)} {plural(len(empty), 'has')} no sampled frame and "
            f"{plural(len(empty), 'is')} left out ({counted(len(times), 'frame')} over "
            f"{format_timestamp(self.end - self.start)}){advice}"
        )

    def frames_for_every_span(self) -> int:
        """The fewest --frames whose segment centres put a frame in every span (a short last span
        can need more than one per span length)."""
        count, length = self.count(), self.end - self.start
        for frames in range(count, 64 * count):
            if len({self.index(self.start + (i + 0.5) * length / frames) for i in range(frames)}) >= count:
                return frames
        return 64 * count


def _rate_up(rate: float) -> str:
    """A rate written in at most 3 significant digits, never below `rate` (0.333... -> 0.334)."""
    scale = 10 ** (2 - math.floor(math.log10(rate)))
    return f"{math.ceil(rate * scale - 1e-9) / scale:g}"


@dataclass
class _Readout:
    """A memory read out: which reader, which span (None: the end of the video), what the LLM
    reads ([1, T, D], dropped once answered), what it is asked; `answer` once answered (text, or
    ranked labels)."""

    video: _Video
    reader: int
    span: tuple[float, float] | None
    tokens: torch.Tensor | None
    prompt: str
    answer: str | list[RankedLabel] | None = None
    beams: list[str] = field(default_factory=list)  # every beam returned, best first


@dataclass(frozen=True)
class Answered:
    """A read-out answered, handed over as it happens (a live stream's events): the video's number
    in the batch, its reader, the span read out (None: the end of the video) and the answer."""

    video: int
    reader: Reader
    span: tuple[float, float] | None
    answer: str | list[RankedLabel]
    beams: tuple[str, ...] = ()


@dataclass(frozen=True)
class Growing:
    """An answer being generated, handed over at each new token (greedy decoding only): the video's
    number in the batch, its reader, the span read out (None: the end) and the text so far."""

    video: int
    reader: Reader
    span: tuple[float, float] | None
    text: str


def _chapter_plans(grid: Grid, times: list[float]) -> dict[int, tuple[int, int]]:
    """Chapter -> (plan index of its first planned frame, frames planned in it). Positions start at
    the first *planned* frame, so a missing first frame does not shift the others; a live stream
    plans nothing, so its chapters start at their first frame read."""
    plans: dict[int, tuple[int, int]] = {}
    for number, time in enumerate(times):
        chapter = grid.index(time)
        first, count = plans.get(chapter, (number, 0))
        plans[chapter] = (first, count + 1)
    return plans


class _Video:
    """One video being read: its stream, bookkeeping, the spans of its readers and the memories
    of its restarting readers (the others live in the batch's shared state)."""

    def __init__(
        self, malmm: Malmm, number: int, path: str | Path, stream: FrameSource, readers: list[Reader], memory: Memory
    ):
        self.malmm, self.number, self.path, self.stream = malmm, number, path, stream
        self.readers, self.memory = readers, memory
        self.memories = shared_memories(readers)  # the instructions of its rows in the batch's shared state
        self.row_of = {i: self.memories.index(r.instruction) for i, r in enumerate(readers) if not r.restart}
        self.frames = iter(stream)
        self.run = _Run()
        self.live = stream.times is None  # a live stream: no plan of its frames
        start, end = (0.0, None) if self.live else stream.span
        self.start = start  # what frame times count from (time-aware frames): the clip's start
        self.grids = {i: Grid(r.every, end, start) for i, r in enumerate(readers) if r.every}
        self.chapters = {i: Grid(r.restart, end, start) for i, r in enumerate(readers) if r.restart}
        self.span: dict[int, int] = {}  # reader -> index of its current span on its grid
        self.chapter: dict[int, int] = {}  # restarting reader -> index of its current chapter
        self.first_index: dict[int, int] = {}  # restarting reader -> plan index its chapter's positions start at
        self.chapter_start: dict[int, float] = {}  # restarting reader -> when its chapter starts (s)
        self.chapter_plans = (
            {} if self.live else {i: _chapter_plans(grid, stream.times) for i, grid in self.chapters.items()}
        )
        self.outputs: dict[int, torch.Tensor] = {}  # reader -> what the LLM would read now [1, T, D]
        self.restarted: dict[int, MemoryState] = {}  # restarting reader -> memory of its current chapter
        self.readouts: list[_Readout] = []
        self.error: Exception | None = None

    def span_ends(self, sample: Sample) -> list[_Readout]:
        """Before stepping a frame: read out the spans it leaves; a restarting reader starts an
        empty memory for the chapter it enters."""
        ended = []
        for i, grid in self.grids.items():
            index = grid.index(sample.target)
            if self.span.get(i, index) != index:
                ended.append(self._readout(i, grid.span(self.span[i]), self.readers[i].at_span))
            self.span[i] = index
        for i, grid in self.chapters.items():
            index = grid.index(sample.target)
            if self.chapter.get(i) != index:
                self.chapter[i] = index
                self.first_index[i], total = (sample.index, None) if self.live else self.chapter_plans[i][index]
                self.chapter_start[i] = grid.span(index)[0]
                self.restarted[i] = self.malmm.new_memory(
                    self.readers[i].instruction, self.memory.bank_length, total, strategy=self.memory.strategy
                )
        return ended

    def step(self, sample: Sample, features: torch.Tensor, shared: dict[int, torch.Tensor]) -> None:
        """After the shared state has read the frame (`shared`: reader -> its output), step the
        restarting readers' memories (frame positions and times restart with each chapter)."""
        self.run.saw(sample)
        self.outputs.update(shared)
        for i, state in self.restarted.items():
            time = sample.time - self.chapter_start[i]
            self.outputs[i], _ = self.malmm.step(state, features, sample.index - self.first_index[i], times=[time])

    def time(self, sample: Sample) -> float:
        """When the frame was sampled, in seconds from the clip's start (the decoder's timestamp):
        what a time-aware model reads with it."""
        return sample.time - self.start

    def end(self) -> list[_Readout]:
        """The video ended: its last spans and its end read-outs."""
        if self.run.frames == 0:
            raise VideoError("no frame could be decoded")
        ended = []
        for i, grid in self.grids.items():
            start, end = grid.span(self.span[i])
            if self.live:  # the span in progress ends with the last frame read
                end = max(start, self.run.last)
            elif not self.readers[i].restart:  # a timeline's last interval reaches the last frame read
                end = max(end, self.run.last)
            ended.append(self._readout(i, (start, end), self.readers[i].at_span))
        for i, reader in enumerate(self.readers):
            if reader.at_end is not None:
                ended.append(self._readout(i, None, reader.at_end))
        return ended

    def _readout(self, reader: int, span: tuple[float, float] | None, prompt: str | None) -> _Readout:
        return _Readout(self, reader, span, self.outputs[reader], prompt or self.readers[reader].instruction)

    def outcome(self, task: str) -> VideoResult | Exception:
        """The result of a video read to the end, or what it failed with."""
        if self.error is not None:
            return self.error
        try:
            return self.result(task)
        except Exception as error:
            return error

    def result(self, task: str) -> VideoResult:
        result = self.run.result(self.stream, self.path, task)
        result.notes += _long_instruction_notes(self.malmm, self.readers)
        for i, grid in self.grids.items():
            what = "window" if self.readers[i].find else "segment" if self.readers[i].restart else "timeline interval"
            if self.live:  # nothing was planned
                continue
            if note := grid.empty_note(self.stream.times, what, self.stream.clip is not None, self.stream.fps):
                result.notes.append(note)
        readouts = sorted(self.readouts, key=lambda r: (r.reader, r.span or (math.inf, math.inf)))
        questions = [reader for reader in self.readers if reader.role == "question"]
        for readout in readouts:
            reader = self.readers[readout.reader]
            if reader.role != "found":
                _fill(result, reader, readout, questions.index(reader) + 1 if len(questions) > 1 else None)
        for i, reader in enumerate(self.readers):
            if reader.find is not None:
                result.found += self._found(reader, [(r.span, r.answer) for r in readouts if r.reader == i])
        return result

    def _found(self, reader: Reader, spans: list[tuple[tuple[float, float], list[RankedLabel]]]) -> list[Found]:
        """A find reader's queries, scored at its windows (against the end read-out of a reader
        ranking the same labels: the whole video, for the likelihood rule)."""
        ends = [r.answer for r in self.readouts if r.span is None and self.readers[r.reader].labels == reader.labels]
        queries = reader.labels if reader.find.score == "likelihood" else (reader.question,)
        return reader.find.found(queries, spans, ends[0] if ends else None)


def _fill(result: VideoResult, reader: Reader, readout: _Readout, number: int | None = None) -> None:
    """Put one answered read-out where its reader's role says (number: the question's, among several)."""
    answer = readout.answer
    if readout.span is not None:
        text = answer[0].label if reader.labels else answer
        (result.segments if reader.role == "segment" else result.timeline).append(TimedText(*readout.span, text))
    elif reader.role == "caption":
        result.caption = answer
    elif reader.role == "dense":
        result.caption = answer
        spans, problems = _read_times(result, answer, "the dense caption")
        result.events, result.problems = spans, problems
    elif reader.role == "question":
        beams = tuple(readout.beams) if len(readout.beams) > 1 else ()
        if reader.timed:
            spans, problems = _read_times(result, answer, f"question {number}'s answer" if number else "the answer")
            result.answers.append(Answer(reader.question, answer, beams, tuple(spans), tuple(problems)))
        else:
            result.answers.append(Answer(reader.question, answer, beams))
    elif reader.labels:
        result.labels = answer
    else:
        result.next_action = answer


def _read_times(result: VideoResult, answer: str, what: str) -> tuple[list[TimedText], list[str]]:
    """An answer's spans on the video's clock (from what the memory read: result.start, the clock
    the time-aware frames were told, to result.end), and its problems; each problem and each span
    cut at the end is also a note on the result, so no format hides it."""
    timed, cut = on_video_clock(parse_timed(answer), result.start, result.end)
    result.notes += [f"{what}: {note}" for note in cut]
    result.notes += [f"{what} does not all read as times ({problem}): its raw text is kept"
                     for problem in timed.problems]  # fmt: skip
    return list(timed.spans), list(timed.problems)


def read_videos(
    malmm: Malmm,
    paths: Sequence[str | Path],
    readers: Sequence[Reader],
    task: str,
    *,
    sampling: Sampling,
    memory: Memory,
    settings: GenerationSettings,
    progress: Sequence[Progress] | None = None,
    batch_size: int = VISION_BATCH,
    cache: FeatureCache | None = None,
    answers_per_batch: int = ANSWERS_PER_BATCH,
    on_done: Callable[[int, VideoResult | Exception], None] | None = None,
    thumbnails: bool = False,
) -> list[VideoResult | Exception]:
    """Read several video files in lockstep and answer what their readers ask (see `read_streams`):
    one result per path, or the exception that video failed with. thumbnails: keep pictures of
    decoded frames for the HTML report (`VideoResult.preview`, see thumbnails.py)."""

    files = VideoFiles(malmm, batch_size, cache, thumbnails)
    return read_streams(
        malmm, paths, lambda path: files(path, sampling, readers), readers, task, memory=memory, settings=settings,
        progress=progress, answers_per_batch=answers_per_batch, on_done=on_done,
    )  # fmt: skip


@dataclass(frozen=True)
class VideoFiles:
    """Opens a video file (or URL) as a stream of its sampled frames' vision features, `batch_size`
    frames encoded at once; thumbnails: with pictures of decoded frames for the HTML report
    (`VideoResult.preview`, see thumbnails.py) along the spans of its readers."""

    malmm: Malmm
    batch_size: int = VISION_BATCH
    cache: FeatureCache | None = None
    thumbnails: bool = False

    def __call__(self, path: str | Path, sampling: Sampling, readers: Sequence[Reader]) -> VideoStream:
        stream = VideoStream(self.malmm, path, sampling, self.batch_size, self.cache)
        if self.thumbnails:
            stream.thumbnails = thumbnail_collector(stream, readers)
        return stream


def read_streams(
    malmm: Malmm,
    sources: Sequence[str | Path],
    open_stream: Callable[[str | Path], FrameSource],
    readers: Sequence[Reader] | Sequence[Sequence[Reader]],
    task: str,
    *,
    memory: Memory,
    settings: GenerationSettings,
    progress: Sequence[Progress] | None = None,
    answers_per_batch: int = ANSWERS_PER_BATCH,
    on_done: Callable[[int, VideoResult | Exception], None] | None = None,
    on_answer: Callable[[Answered], None] | None = None,
    stopped: Callable[[int], bool] | None = None,
    on_text: Callable[[Growing], None] | None = None,
) -> list[VideoResult | Exception]:
    """The one reading loop: read the streams `open_stream` opens for each source (once each, in
    order) in lockstep and answer what their readers ask; one result per source, or the exception
    it failed with (the others go on without it). readers: every source's, or a list per source
    (a clip's own questions), with as many `shared_memories` each.

    A stream is a `FrameSource` (stream.py): a file's `VideoStream`, a `LiveStream`. Each is decoded
    in a thread of its own (all ahead of the model); at every step the next frame of each video
    is read by one batched state (the readers that never restart, several per video sharing its
    visual bank); videos that end, or fail, leave the batch there. Results equal reading each
    video alone (to float rounding). on_done(i, result) is called the moment the i-th video ends
    or fails. on_answer: receives every read-out as soon as it is answered (a live stream's
    events), instead of its being collected into the result. stopped(i): whether the i-th video is
    no longer wanted (its client went away): asked before each of its frames, it then leaves the
    batch, failed with `Stopped`, and the others go on. on_text: receives each answer as it grows,
    token by token, when decoding is greedy (`settings.num_beams` 1).
    """
    each = _readers_of(readers, len(sources))
    check_memory(malmm, memory)
    progress = list(progress) if progress is not None else [NoProgress() for _ in sources]
    results: list[VideoResult | Exception | None] = [None] * len(sources)

    def conclude(number: int, result: VideoResult | Exception) -> None:
        results[number] = result
        if on_done is not None:
            on_done(number, result)

    def deliver(readouts: list[_Readout]) -> None:
        for readout in readouts:
            readout.tokens = None  # answered: what the LLM read is no longer needed
            if on_answer is None:
                readout.video.readouts.append(readout)
            else:
                reader = readout.video.readers[readout.reader]
                on_answer(Answered(readout.video.number, reader, readout.span, readout.answer, tuple(readout.beams)))

    with ExitStack() as streams:
        videos: list[_Video] = []
        for number, source in enumerate(sources):
            try:
                stream = streams.enter_context(open_stream(source))
                planned = None if stream.times is None else len(stream.times)
                _check_frames(memory, planned)
                video = _Video(malmm, number, source, stream, each[number], memory)
            except Exception as error:  # one video's failure is its own
                conclude(number, error)
                continue
            videos.append(video)
            progress[number].start(planned, stream.from_cache)
        batch = _Lockstep(malmm, videos, memory)
        while batch.videos:
            frames, pending, ended = [], [], []
            for video in batch.videos:
                if stopped is not None and stopped(video.number):
                    video.error = Stopped(f"stopped after {video.run.frames} frames: no longer wanted")
                    continue
                try:
                    item = next(video.frames, None)
                    if item is None:
                        pending += video.end()
                        ended.append(video)
                    else:
                        pending += video.span_ends(item[0])
                        frames.append((video, *item))
                except Exception as error:
                    video.error = error
            finished = [video for video in batch.videos if video in ended or video.error is not None]
            batch.keep([video for video, _, _ in frames])  # those that ended or failed leave the batch
            batch.step(frames)
            for video, _, _ in frames:
                progress[video.number].advance()
            answered = [r for r in pending if r.video.error is None]
            _answer(malmm, answered, settings, answers_per_batch, on_text)
            deliver(answered)
            for video in [*finished, *(v for v in batch.videos if v.error is not None)]:
                conclude(video.number, video.outcome(task))
            batch.keep([video for video in batch.videos if video.error is None])
    return results


class Stopped(Exception):
    """A video left unread because whoever asked for it no longer wants it (read_streams' `stopped`)."""


class _Lockstep:
    """The videos of a batch still being read, and the one state their shared readers step in:
    each video's `memories` rows, video-major (as many rows for every video)."""

    def __init__(self, malmm: Malmm, videos: list[_Video], memory: Memory):
        self.malmm, self.videos = malmm, videos
        self.state: MemoryState | None = None
        self.width = len(videos[0].memories) if videos else 0  # state rows per video
        if self.width:
            totals = [None if video.live else len(video.stream.times) for video in videos]
            rows = [instruction for video in videos for instruction in video.memories]
            self.state = malmm.new_memory(rows, memory.bank_length, totals, strategy=memory.strategy,
                                          readers_per_video=self.width)  # fmt: skip

    def keep(self, videos: list[_Video]) -> None:
        """Go on with these videos only (a subset, in the same order)."""
        if self.state is not None and len(videos) < len(self.videos):
            self.state = self.state.select([self.videos.index(video) for video in videos]) if videos else None
        self.videos = videos

    def step(self, frames: list[tuple[_Video, Sample, torch.Tensor]]) -> None:
        """One frame of every video (features [1, N, C] each): the shared state reads them as one
        batch, then each video steps its restarting readers."""
        outputs = None
        if self.state is not None and frames:
            features = torch.cat([features for _, _, features in frames])  # [V, N, C]
            indices = [sample.index for _, sample, _ in frames]
            times = [video.time(sample) for video, sample, _ in frames]
            outputs, self.state = self.malmm.step(self.state, features, indices, times=times)
        width = self.width
        for row, (video, sample, features) in enumerate(frames):
            rows = {} if outputs is None else {
                reader: outputs[row * width + j : row * width + j + 1] for reader, j in video.row_of.items()
            }  # fmt: skip
            try:
                video.step(sample, features, rows)
            except Exception as error:
                video.error = error


def shared_memories(readers: Sequence[Reader]) -> list[str]:
    """The memories a video's readers that never restart step in: one per distinct instruction.

    Readers with the same instruction remember the same (a memory depends on the instruction and
    the frames only), so they share one. Videos read in lockstep need as many each (the rows of
    their shared state)."""
    return list(dict.fromkeys(reader.instruction for reader in readers if not reader.restart))


def _readers_of(readers: Sequence[Reader] | Sequence[Sequence[Reader]], sources: int) -> list[list[Reader]]:
    """Each source's readers: the same for all (a list of readers), or a list per source."""
    each = [list(readers)] * sources if all(isinstance(r, Reader) for r in readers) else [list(r) for r in readers]
    if not readers or not all(each):
        raise ValueError("nothing to read: no readers")
    if len(each) != sources or len({len(shared_memories(r)) for r in each}) > 1:
        raise ValueError("videos read in lockstep need readers for each, with as many memories each")
    return each


def thumbnail_collector(stream: VideoStream, readers: Sequence[Reader]) -> ThumbnailCollector:
    """A picture per span of each reader's grid (the report's bands), and a few over the whole video."""
    start, end = stream.span
    lengths = dict.fromkeys([r.every for r in readers if r.every] + [(end - start) / OVERVIEW_SPANS])
    return ThumbnailCollector([Grid(length, end, start) for length in lengths if length > 0], stream.times,
                              stream.duration)  # fmt: skip


def check_memory(malmm: Malmm, memory: Memory, prompt_tokens: int = 64) -> None:
    """concat gives the LLM every frame's query tokens: refuse a cap the LLM cannot read."""
    if memory.strategy != "concat":
        return
    config = malmm.model.config
    limit = getattr(config.text_config, "max_position_embeddings", None)  # T5's relative positions have none
    tokens = memory.bank_length * config.num_query_tokens
    if limit is not None and tokens + prompt_tokens > limit:
        most = max(1, (limit - prompt_tokens) // config.num_query_tokens)
        raise ValueError(
            f"--memory concat with a bank length of {memory.bank_length} gives the LLM {tokens} query tokens, "
            f"more than its {limit} positions hold with a prompt: use --memory-bank-length {most} or less"
        )


def _check_frames(memory: Memory, planned: int | None) -> None:
    """concat keeps every frame: refuse a video with more planned frames than it may hold (a live
    stream's are not known: its memory refuses the frame past its room)."""
    if memory.strategy == "concat" and planned is not None and planned > memory.bank_length:
        raise VideoError(
            f"{planned} frames are planned, but --memory concat keeps at most the memory bank length "
            f"({memory.bank_length}) frames: sample fewer (--frames) or raise --memory-bank-length"
        )


def _answer(
    malmm: Malmm,
    pending: list[_Readout],
    settings: GenerationSettings,
    per_batch: int,
    on_text: Callable[[Growing], None] | None = None,
) -> None:
    """Answer read-outs in batches of `per_batch`: those ranking the same labels together, those
    generating text together (grouped by the length of what the LLM reads: concat varies);
    on_text: each generated answer as it grows (see read_streams)."""
    groups: dict[tuple, list[_Readout]] = defaultdict(list)
    for readout in pending:
        reader = readout.video.readers[readout.reader]
        top_k = reader.span_top_k if readout.span is not None else reader.top_k
        groups[(reader.labels, top_k, readout.tokens.shape[1])].append(readout)
    for (labels, top_k, _), group in groups.items():
        for start in range(0, len(group), per_batch):
            chunk = group[start : start + per_batch]
            tokens = torch.cat([readout.tokens for readout in chunk])
            prompts = [readout.prompt for readout in chunk]
            if labels:
                answers = rank_labels(malmm, tokens, prompts, list(labels), top_k)
                beams = [[] for _ in chunk]
            else:
                told = None if on_text is None else lambda row, text, chunk=chunk: on_text(_growing(chunk[row], text))
                beams = malmm.generate_beams(tokens, prompts, settings, told)
                answers = [texts[0] for texts in beams]
            for readout, answer, texts in zip(chunk, answers, beams, strict=True):
                readout.answer, readout.beams = answer, texts


def _growing(readout: _Readout, text: str) -> Growing:
    return Growing(readout.video.number, readout.video.readers[readout.reader], readout.span, text)


def rank_labels(
    malmm: Malmm, tokens: torch.Tensor, prompts: str | list[str], labels: list[str], top_k: int
) -> list[list[RankedLabel]]:
    """The `top_k` likeliest labels for each read-out [B, T, D], likeliest first."""
    scores = malmm.score_labels(tokens, prompts, labels)  # [B, K]
    ranked = []
    for row in scores:
        probabilities = torch.softmax(row, dim=0)
        order = torch.argsort(row, descending=True)[:top_k]
        ranked.append([RankedLabel(labels[i], row[i].item(), probabilities[i].item()) for i in order.tolist()])
    return ranked


def _long_instruction_notes(malmm: Malmm, readers: list[Reader]) -> list[str]:
    """The Q-Former reads at most 128 tokens of an instruction (MA-LMM's limit)."""
    notes, limit = [], malmm.instruction_limit
    questions = [reader for reader in readers if reader.role == "question"]
    for number, reader in enumerate(questions, start=1):
        length = malmm.instruction_length(reader.instruction)
        if length > limit:
            which = f"question {number}" if len(questions) > 1 else "the question"
            notes.append(
                f"{which} is {length} tokens with its prompt, more than the Q-Former's {limit}: "
                f"the Q-Former reads only its last {limit} (the LLM reads all of it)"
            )
    return notes


def read_video(malmm: Malmm, path: str | Path, readers: Sequence[Reader], task: str, **options: object) -> VideoResult:
    """One video (see `read_videos`); its failure is raised."""
    progress = options.pop("progress", None)
    (result,) = read_videos(malmm, [path], readers, task, progress=[progress or NoProgress()], **options)
    if isinstance(result, Exception):
        raise result
    return result


def caption_video(
    malmm: Malmm,
    path: str | Path,
    *,
    sampling: Sampling | None = None,
    memory_bank_length: int = CAPTION.memory_bank_length,
    segment: float | None = None,
    settings: GenerationSettings = CAPTION.generation,
    memory: str = "malmm",
    progress: Progress | None = None,
    batch_size: int = VISION_BATCH,
    cache: FeatureCache | None = None,
) -> VideoResult:
    """A caption of the whole video; with `segment` seconds, also one caption per segment.

    Each segment is read with a memory of its own (started empty at the segment start), beside
    the whole-video memory; the frames are decoded and encoded once for both.
    """
    return read_video(
        malmm, path, caption_readers(segment), "caption", sampling=sampling or Sampling(frames=CAPTION.frames),
        memory=Memory(memory_bank_length, memory), settings=settings, progress=progress, batch_size=batch_size,
        cache=cache,
    )  # fmt: skip


def answer_questions(
    malmm: Malmm,
    path: str | Path,
    questions: list[str],
    *,
    sampling: Sampling | None = None,
    memory_bank_length: int = QUESTION.memory_bank_length,
    settings: GenerationSettings = QUESTION.generation,
    memory: str = "malmm",
    progress: Progress | None = None,
    batch_size: int = VISION_BATCH,
    cache: FeatureCache | None = None,
    answers_per_batch: int = ANSWERS_PER_BATCH,
) -> VideoResult:
    """Answers to questions about one video, read once: one memory per question (the Q-Former reads
    each frame through the question), one visual memory for all of them."""
    return read_video(
        malmm, path, question_readers(questions), "ask", sampling=sampling or Sampling(frames=QUESTION.frames),
        memory=Memory(memory_bank_length, memory), settings=settings, progress=progress, batch_size=batch_size,
        cache=cache, answers_per_batch=answers_per_batch,
    )  # fmt: skip


def predict_actions(
    malmm: Malmm,
    path: str | Path,
    *,
    labels: list[str] | None = None,
    every: float | None = None,
    top_k: int = 5,
    sampling: Sampling | None = None,
    memory_bank_length: int = CLASSIFICATION.memory_bank_length,
    settings: GenerationSettings = CLASSIFICATION.generation,
    memory: str = "malmm",
    progress: Progress | None = None,
    batch_size: int = VISION_BATCH,
    cache: FeatureCache | None = None,
) -> VideoResult:
    """Action predictions, read online from the memory as the video plays (see `predict_readers`)."""
    return read_video(
        malmm, path, predict_readers(labels, every, top_k), "predict",
        sampling=sampling or Sampling(frames=CLASSIFICATION.frames), memory=Memory(memory_bank_length, memory),
        settings=settings, progress=progress, batch_size=batch_size, cache=cache,
    )  # fmt: skip
