"""From a video file to an answer: the library functions the `malmm` command calls.

    from models import Malmm
    from malmm_cli.pipeline import caption_video
    malmm = Malmm.from_pretrained()
    print(caption_video(malmm, "clip.mp4").caption)

A frame's way: `VideoStream` probes the file, plans sample times, decodes them ahead in a thread
(video.py), preprocesses them with the model's image processor and encodes them with the vision
model in small batches; each task then steps one or more memory states frame by frame and asks the
LLM at the end (and, for segments and timelines, at their boundaries).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from malmm_cli.feature_cache import CachedVideo, CacheReadError, CacheWriter, FeatureCache
from malmm_cli.keyframes import KeyframeReader, keyframes_unavailable
from malmm_cli.parallel import ParallelReader
from malmm_cli.results import Answer, RankedLabel, TimedText, VideoResult
from malmm_cli.timefmt import format_timestamp
from malmm_cli.video import Plan, VideoInfo, VideoReader, plan_times, prefetch, probe
from models import CAPTION, CLASSIFICATION, QUESTION, GenerationSettings, Malmm, MemoryState

TIMELINE_PROMPT = CLASSIFICATION.instruction
NEXT_ACTION_PROMPT = "what is the person likely to do next?"
VISION_BATCH = 8  # frames encoded together by the vision model


@dataclass(frozen=True)
class Sampling:
    """Which frames to read: `frames` spread uniformly over the video, or `fps` per second.

    seek: "exact" reads the frame at each time; "keyframe" takes the nearest keyframes instead
    (H.264 only, much faster, approximate). decode_workers > 1 decodes exact frames in that many
    processes (same frames, for machines with cores to spare). A video never gets more samples
    than it has frames (`plan_times`).
    """

    frames: int | None = None
    fps: float | None = None
    seek: str = "exact"
    decode_workers: int = 1

    def __post_init__(self) -> None:
        if (self.frames is None) == (self.fps is None):
            raise ValueError("give exactly one of frames or fps")
        if self.frames is not None and (isinstance(self.frames, bool) or self.frames < 1):
            raise ValueError(f"frames must be a positive integer, got {self.frames!r}")
        if self.fps is not None and not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be a positive, finite number, got {self.fps!r}")
        if self.seek not in ("exact", "keyframe"):
            raise ValueError(f"seek must be 'exact' or 'keyframe', got {self.seek!r}")
        if self.decode_workers < 1:
            raise ValueError(f"decode_workers must be at least 1, got {self.decode_workers!r}")

    def plan(self, info: VideoInfo) -> Plan:
        return plan_times(info, frames=self.frames, fps=self.fps)

    def describe(self) -> str:
        """What decides which frames are read, exactly (part of the feature cache key)."""
        rate = f"frames={self.frames}" if self.fps is None else f"fps={self.fps!r}"
        return f"{rate},seek={self.seek}"


@dataclass(frozen=True)
class Sample:
    """Where a frame read sits: its index in the plan, the time asked for, and its real timestamp.

    The index, not the count of frames read, gives the frame its position embedding, so frames
    skipped (keyframe sampling) or missing (damaged files) leave later frames where they belong.
    """

    index: int
    target: float
    time: float


class Progress(Protocol):
    """Receives per-video progress (the CLI draws it; library callers may pass nothing)."""

    def start(self, total_frames: int, from_cache: bool = False) -> None: ...

    def advance(self, frames: int = 1) -> None: ...


class _NoProgress:
    def start(self, total_frames: int, from_cache: bool = False) -> None:
        pass

    def advance(self, frames: int = 1) -> None:
        pass


def preprocess(malmm: Malmm, image: np.ndarray) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> [3, S, S] exactly as the model was trained (its own image processor)."""
    return malmm.image_processor(images=Image.fromarray(image), return_tensors="pt").pixel_values[0]


class VideoStream:
    """The sampled frames of one video with their vision features, in time order, memory bounded.

    With a feature cache, a video read before with the same settings and vision weights is
    replayed from disk (no probing, decoding or vision encoding); otherwise its features are
    written to the cache as they are computed. Should a cached entry break while it is replayed
    (removed by another run, damaged), the rest of the video is decoded instead. Use it in a
    `with` block: leaving the block (Ctrl-C included) stops the decoding thread and releases the
    file at once.
    """

    def __init__(
        self,
        malmm: Malmm,
        path: str | Path,
        sampling: Sampling,
        batch_size: int = VISION_BATCH,
        cache: FeatureCache | None = None,
    ):
        self.malmm = malmm
        self.path = Path(path)
        self.sampling = sampling
        self.batch_size = batch_size
        self.cache = cache
        self._decoded: Iterator[tuple[Sample, torch.Tensor]] | None = None
        self._writer: CacheWriter | None = None
        self._reader: VideoReader | KeyframeReader | ParallelReader | None = None
        self._cached: CachedVideo | None = None
        self._notes: list[str] = []
        self._replayed_missing = 0  # frames the cached part of the video could not decode back then
        self._replayed_end: float | None = None
        key = None
        if cache is not None and self.path.is_file():
            key = cache.key(self.path, sampling.describe(), cache.vision_key(malmm.model, malmm.image_processor))
            self._cached = cache.load(key) if key else None
        if self._cached is not None:
            meta = self._cached.meta
            self.duration = float(meta["duration"])
            self.times = [float(t) for t in meta["times"]]
            self._notes = list(meta["notes"])
            return
        self._open()
        if key is not None:
            self._writer = cache.writer(key)

    def _open(self) -> None:
        """Probe the file, plan its sample times and choose the reader."""
        info = probe(self.path)
        self.duration = info.duration
        plan = self.sampling.plan(info)
        self.times = plan.times
        if plan.note:
            self._notes.append(plan.note)
        self._reader = self._choose_reader(info)

    def _choose_reader(self, info: VideoInfo) -> VideoReader | KeyframeReader | ParallelReader:
        if self.sampling.seek == "keyframe":
            if (reason := keyframes_unavailable(info)) is None:
                return KeyframeReader(self.path, info)
            if reason not in self._notes:
                self._notes.append(reason)
        workers = self.sampling.decode_workers
        return ParallelReader(self.path, info, workers) if workers > 1 else VideoReader(self.path, info)

    @property
    def from_cache(self) -> bool:
        return self._cached is not None

    def __enter__(self) -> VideoStream:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._decoded is not None:
            self._decoded.close()  # stops and joins the decoding thread
        if self._reader is not None:
            self._reader.close()
        if self._writer is not None:  # not committed: the video was not read to the end
            self._writer.abandon()

    def __iter__(self) -> Iterator[tuple[Sample, torch.Tensor]]:
        """(sample, features [1, N, C]) per frame read; decoding and preprocessing run ahead."""
        start = 0
        if self._cached is not None:
            resume = yield from self._replay(self._cached)
            if resume is None:
                return
            start = resume
            self._reader = self._choose_reader(probe(self.path))  # the rest of the same plan, decoded
        yield from self._decode(start)

    def _decode(self, start: int) -> Iterator[tuple[Sample, torch.Tensor]]:
        """Decode, preprocess (in a thread, ahead) and encode the planned frames from index `start`."""

        def samples() -> Iterator[tuple[Sample, torch.Tensor]]:
            for frame in self._reader.frames(self.times[start:]):
                sample = Sample(start + frame.index, frame.target, frame.time)
                yield sample, preprocess(self.malmm, frame.image)

        self._decoded = prefetch(samples())
        batch: list[tuple[Sample, torch.Tensor]] = []
        for item in self._decoded:
            batch.append(item)
            if len(batch) == self.batch_size:
                yield from self._encode(batch)
                batch = []
        if batch:
            yield from self._encode(batch)
        if self._writer is not None:
            report = self._reader.report
            meta = {"duration": self.duration, "times": self.times, "missing": report.missing,
                    "ended_at": report.ended_at, "notes": self._notes}  # fmt: skip
            self._writer.commit(meta)
            self._writer = None

    def _encode(self, batch: list[tuple[Sample, torch.Tensor]]) -> Iterator[tuple[Sample, torch.Tensor]]:
        pixels = torch.stack([pixels for _, pixels in batch])
        if self.malmm.device.type == "cuda":  # page-locked memory lets the copy overlap the decoding
            pixels = pixels.pin_memory().to(self.malmm.device, non_blocking=True)
        features = self.malmm.encode_frames(pixels)
        if self._writer is not None:  # the cache keeps float16: read the same values now as on a hit
            features = features.to(torch.float16).to(features.dtype)
        for (sample, _), feature in zip(batch, features, strict=True):
            if self._writer is not None:
                self._writer.add(sample.index, sample.target, sample.time, feature)
            yield sample, feature.unsqueeze(0)

    def _replay(self, cached: CachedVideo) -> Generator[tuple[Sample, torch.Tensor], None, int | None]:
        """Frames from the cache. Returns None when all were replayed, else the plan index to go on
        decoding from (the entry broke while being read)."""
        dtype = self.malmm.model.frame_position_embedding.weight.dtype
        missing, resume = [float(t) for t in cached.meta["missing"]], 0
        try:
            for indices, targets, times, features in cached.chunks():
                features = features.to(self.malmm.device, dtype)
                for index, target, time_s, feature in zip(indices.tolist(), targets.tolist(), times.tolist(),
                                                          features, strict=True):  # fmt: skip
                    yield Sample(index, target, time_s), feature.unsqueeze(0)
                    resume = index + 1
        except CacheReadError as error:
            self.cache.problem("an entry broke while it was read; the rest of the video is decoded", error)
            self._cached = None
            resumed_at = self.times[resume] if resume < len(self.times) else math.inf
            self._replayed_missing = sum(1 for t in missing if t < resumed_at)
            return resume
        self._replayed_missing = len(missing)
        self._replayed_end = cached.meta["ended_at"]
        return None

    def notes(self) -> list[str]:
        """How the frames were read, where it differs from what was asked (not a failure)."""
        return list(self._notes)

    def warnings(self) -> list[str]:
        """What could not be read (damaged or truncated files)."""
        missing, ended_at = self._replayed_missing, self._replayed_end
        if self._reader is not None and self._reader.report is not None:
            missing += len(self._reader.report.missing)
            ended_at = self._reader.report.ended_at
        notes = []
        if ended_at is not None:
            notes.append(
                f"decoding stopped at {format_timestamp(ended_at)} of "
                f"{format_timestamp(self.duration)}: the file is truncated or damaged"
            )
        if missing:
            notes.append(f"{missing} of {len(self.times)} sampled frames could not be decoded")
        return notes


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

    def result(self, stream: VideoStream, path: str | Path, task: str) -> VideoResult:
        return VideoResult(
            path=str(path),
            task=task,
            duration=stream.duration,
            frames=self.frames,
            first_frame=self.first,
            last_frame=self.last,
            warnings=stream.warnings(),
            notes=stream.notes() + self.notes,
        )


@dataclass(frozen=True)
class Grid:
    """Consecutive spans of `length` seconds over a video (segments, timeline intervals).

    One rule for both: a frame belongs to the span of the time it was planned for (its target),
    so a span's frames are known before any is read; a frame's real timestamp is within one
    frame of that with exact seeking, up to half a keyframe interval with `--seek keyframe`.
    """

    length: float
    duration: float

    def index(self, seconds: float) -> int:
        return math.floor(seconds / self.length + 1e-9)

    def span(self, index: int) -> tuple[float, float]:
        return index * self.length, min((index + 1) * self.length, self.duration)

    def count(self) -> int:
        return max(1, math.ceil(self.duration / self.length - 1e-9))

    def planned(self, times: list[float]) -> Counter[int]:
        return Counter(self.index(t) for t in times)

    def empty_note(self, times: list[float], what: str) -> str | None:
        """Say how many spans got no sampled frame (they are left out of the result), and how to
        sample densely enough; None when every span has frames."""
        empty = self.count() - len(set(self.planned(times)) & set(range(self.count())))
        if not empty:
            return None
        every = self.length / 4
        return (
            f"{empty} of {self.count()} {what}s have no sampled frame and are left out ({len(times)} frames over "
            f"{format_timestamp(self.duration)}): sample at least a frame every {every:g} s (--fps {1 / every:.3g})"
        )


def caption_video(
    malmm: Malmm,
    path: str | Path,
    *,
    sampling: Sampling | None = None,
    memory_bank_length: int = CAPTION.memory_bank_length,
    segment: float | None = None,
    settings: GenerationSettings = CAPTION.generation,
    progress: Progress | None = None,
    batch_size: int = VISION_BATCH,
    cache: FeatureCache | None = None,
) -> VideoResult:
    """A caption of the whole video; with `segment` seconds, also one caption per segment.

    Each segment is read with a memory of its own (started empty at the segment start), beside
    the whole-video memory; the frames are decoded and encoded once for both.
    """
    progress = progress or _NoProgress()
    with VideoStream(malmm, path, sampling or Sampling(frames=CAPTION.frames), batch_size, cache) as stream:
        return _caption(malmm, stream, path, memory_bank_length, segment, settings, progress)


def _caption(
    malmm: Malmm,
    stream: VideoStream,
    path: str | Path,
    memory_bank_length: int,
    segment: float | None,
    settings: GenerationSettings,
    progress: Progress,
) -> VideoResult:
    prompt = CAPTION.prompt()
    whole = malmm.new_memory(prompt, memory_bank_length, total_frames=len(stream.times))
    grid = Grid(segment, stream.duration) if segment else None
    planned = grid.planned(stream.times) if grid else Counter()
    first_planned: dict[int, int] = {}  # segment -> plan index of its first frame: positions restart there
    if grid is not None:
        for number, time in enumerate(stream.times):
            first_planned.setdefault(grid.index(time), number)
    segments: list[TimedText] = []
    current: _Segment | None = None

    def close(part: _Segment) -> None:
        segments.append(TimedText(*grid.span(part.index), malmm.generate(part.output, prompt, settings)[0]))

    run, output = _Run(), None
    progress.start(len(stream.times), stream.from_cache)
    for sample, features in stream:
        run.saw(sample)
        output, whole = malmm.step(whole, features, sample.index)
        if grid is not None:
            index = grid.index(sample.target)
            if current is None or current.index != index:  # a new segment starts with an empty memory
                if current is not None:
                    close(current)
                current = _Segment(index, malmm.new_memory(prompt, memory_bank_length, planned[index]))
            position = sample.index - first_planned[index]
            current.output, current.state = malmm.step(current.state, features, position)
        progress.advance()
    if current is not None:
        close(current)
    if grid is not None and (note := grid.empty_note(stream.times, "segment")):
        run.notes.append(note)
    result = run.result(stream, path, "caption")
    result.caption = malmm.generate(output, prompt, settings)[0]
    result.segments = segments
    return result


@dataclass
class _Segment:
    """A segment being read: its index on the segment grid, its own memory, its latest output."""

    index: int
    state: MemoryState
    output: torch.Tensor | None = None


def answer_questions(
    malmm: Malmm,
    path: str | Path,
    questions: list[str],
    *,
    sampling: Sampling | None = None,
    memory_bank_length: int = QUESTION.memory_bank_length,
    settings: GenerationSettings = QUESTION.generation,
    progress: Progress | None = None,
    batch_size: int = VISION_BATCH,
    cache: FeatureCache | None = None,
) -> VideoResult:
    """Answers to questions about one video, read once: one memory per question, stepped as a batch.

    (The Q-Former reads each frame through the question, so each question needs its own memory.)
    """
    if not questions:
        raise ValueError("no questions to answer")
    progress = progress or _NoProgress()
    prompts = [QUESTION.prompt(question) for question in questions]
    run = _Run(notes=_long_question_notes(malmm, questions, prompts))
    with VideoStream(malmm, path, sampling or Sampling(frames=QUESTION.frames), batch_size, cache) as stream:
        state = malmm.new_memory(prompts, memory_bank_length, total_frames=len(stream.times))
        output = None
        progress.start(len(stream.times), stream.from_cache)
        for sample, features in stream:
            run.saw(sample)
            output, state = malmm.step(state, features.expand(len(questions), -1, -1), sample.index)
            progress.advance()
        result = run.result(stream, path, "ask")
    answers = malmm.generate(output, prompts, settings)
    result.answers = [Answer(q, a) for q, a in zip(questions, answers, strict=True)]
    return result


def _long_question_notes(malmm: Malmm, questions: list[str], prompts: list[str]) -> list[str]:
    """The Q-Former reads at most 128 tokens of an instruction (MA-LMM's limit)."""
    notes, limit = [], malmm.instruction_limit
    for number, prompt in enumerate(prompts, start=1):
        length = malmm.instruction_length(prompt)
        if length > limit:
            which = f"question {number}" if len(questions) > 1 else "the question"
            notes.append(
                f"{which} is {length} tokens with its prompt, more than the Q-Former's {limit}: "
                f"the Q-Former reads only its last {limit} (the LLM reads all of it)"
            )
    return notes


def rank_labels(malmm: Malmm, output: torch.Tensor, labels: list[str], top_k: int) -> list[RankedLabel]:
    """The `top_k` likeliest labels for one video's query output [1, NQ, D]; a label given twice
    is ranked once (it would split its probability)."""
    labels = list(dict.fromkeys(labels))
    scores = malmm.score_labels(output, CLASSIFICATION.prompt(), labels)[0]
    probabilities = torch.softmax(scores, dim=0)
    order = torch.argsort(scores, descending=True)[:top_k]
    return [RankedLabel(labels[i], scores[i].item(), probabilities[i].item()) for i in order.tolist()]


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
    progress: Progress | None = None,
    batch_size: int = VISION_BATCH,
    cache: FeatureCache | None = None,
) -> VideoResult:
    """Action predictions, read online from the memory as the video plays.

    Without labels: a timeline (every `every` seconds, what is happening so far) and the likely
    next action at the end. With labels: the labels ranked by likelihood (top_k), and with `every`
    also the likeliest label per interval.
    """
    progress = progress or _NoProgress()
    with VideoStream(malmm, path, sampling or Sampling(frames=CLASSIFICATION.frames), batch_size, cache) as stream:
        return _predict(malmm, stream, path, labels, every, top_k, memory_bank_length, settings, progress)


def _predict(
    malmm: Malmm,
    stream: VideoStream,
    path: str | Path,
    labels: list[str] | None,
    every: float | None,
    top_k: int,
    memory_bank_length: int,
    settings: GenerationSettings,
    progress: Progress,
) -> VideoResult:
    state = malmm.new_memory(CLASSIFICATION.prompt(), memory_bank_length, total_frames=len(stream.times))
    grid = Grid(every, stream.duration) if every else None
    timeline: list[TimedText] = []

    def describe(output: torch.Tensor) -> str:
        if labels:
            return rank_labels(malmm, output, labels, 1)[0].label
        return malmm.generate(output, TIMELINE_PROMPT, settings)[0]

    run, output, interval = _Run(), None, None  # interval: index of the current one on the --every grid
    progress.start(len(stream.times), stream.from_cache)
    for sample, features in stream:
        index = grid.index(sample.target) if grid else None
        if interval is not None and index != interval:  # an interval ended: what the memory says so far
            timeline.append(TimedText(*grid.span(interval), describe(output)))
        interval = index
        run.saw(sample)
        output, state = malmm.step(state, features, sample.index)
        progress.advance()
    if interval is not None:
        start, end = grid.span(interval)
        timeline.append(TimedText(start, max(end, run.last), describe(output)))
    if grid is not None and (note := grid.empty_note(stream.times, "timeline interval")):
        run.notes.append(note)
    result = run.result(stream, path, "predict")
    result.timeline = timeline
    if labels:
        result.labels = rank_labels(malmm, output, labels, top_k)
    else:
        result.next_action = malmm.generate(output, NEXT_ACTION_PROMPT, settings)[0]
    return result
