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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from malmm_cli.feature_cache import CachedVideo, CacheWriter, FeatureCache
from malmm_cli.keyframes import KeyframeReader, supports_keyframes
from malmm_cli.parallel import ParallelReader
from malmm_cli.results import Answer, RankedLabel, TimedText, VideoResult
from malmm_cli.timefmt import format_timestamp
from malmm_cli.video import Frame, VideoReader, prefetch, probe, sample_times
from models import CAPTION, CLASSIFICATION, QUESTION, GenerationSettings, Malmm, MemoryState

TIMELINE_PROMPT = CLASSIFICATION.instruction
NEXT_ACTION_PROMPT = "what is the person likely to do next?"
VISION_BATCH = 8  # frames encoded together by the vision model


@dataclass(frozen=True)
class Sampling:
    """Which frames to read: `frames` spread uniformly over the video, or `fps` per second.

    seek: "exact" reads the frame at each time; "keyframe" takes the nearest keyframes instead
    (H.264 only, much faster, approximate). decode_workers > 1 decodes exact frames in that many
    processes (same frames, for machines with cores to spare).
    """

    frames: int | None = None
    fps: float | None = None
    seek: str = "exact"
    decode_workers: int = 1

    def times(self, duration: float) -> list[float]:
        return sample_times(duration, frames=self.frames, fps=self.fps)

    def describe(self) -> str:
        """What decides which frames are read (part of the feature cache key)."""
        rate = f"frames={self.frames}" if self.fps is None else f"fps={self.fps:g}"
        return f"{rate},seek={self.seek}"


@dataclass(frozen=True)
class Sample:
    """Where a frame read sits: its index in the plan, the time asked for, and its real timestamp."""

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
    written to the cache as they are computed. Use it in a `with` block: leaving the block
    (Ctrl-C included) stops the decoding thread and releases the file at once.
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
        self.batch_size = batch_size
        self._decoded: Iterator[tuple[Frame, torch.Tensor]] | None = None
        self._writer: CacheWriter | None = None
        self._reader: VideoReader | KeyframeReader | ParallelReader | None = None
        self._cached: CachedVideo | None = None
        self._notes: list[str] = []
        key = None
        if cache is not None and self.path.is_file():
            key = cache.key(self.path, sampling.describe(), cache.vision_key(malmm.model, malmm.image_processor))
            self._cached = cache.load(key)
        if self._cached is not None:
            self.duration = float(self._cached.meta["duration"])
            self.times = list(self._cached.meta["times"])
            self._missing = int(self._cached.meta["missing"])
            self._ended_at = self._cached.meta["ended_at"]
            return
        info = probe(self.path)
        self.duration = info.duration
        self.times = sampling.times(info.duration)
        if sampling.seek == "keyframe" and supports_keyframes(info):
            self._reader = KeyframeReader(self.path, info)
        else:
            if sampling.seek == "keyframe":
                self._notes.append(f"keyframe sampling supports H.264 only: exact frames read from this {info.codec}")
            workers = sampling.decode_workers
            self._reader = ParallelReader(self.path, info, workers) if workers > 1 else VideoReader(self.path, info)
        if key is not None:
            self._writer = cache.writer(key)

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
        if self._cached is not None:
            yield from self._replay(self._cached)
            return
        decoded = ((frame, preprocess(self.malmm, frame.image)) for frame in self._reader.frames(self.times))
        self._decoded = prefetch(decoded)
        batch: list[tuple[Frame, torch.Tensor]] = []
        for item in self._decoded:
            batch.append(item)
            if len(batch) == self.batch_size:
                yield from self._encode(batch)
                batch = []
        if batch:
            yield from self._encode(batch)
        if self._writer is not None:
            report = self._reader.report
            meta = {"duration": self.duration, "times": self.times, "missing": len(report.missing),
                    "ended_at": report.ended_at}  # fmt: skip
            self._writer.commit(meta)
            self._writer = None

    def _encode(self, batch: list[tuple[Frame, torch.Tensor]]) -> Iterator[tuple[Sample, torch.Tensor]]:
        pixels = torch.stack([pixels for _, pixels in batch])
        if self.malmm.device.type == "cuda":  # page-locked memory lets the copy overlap the decoding
            pixels = pixels.pin_memory().to(self.malmm.device, non_blocking=True)
        features = self.malmm.encode_frames(pixels)
        if self._writer is not None:  # the cache keeps float16: read the same values now as on a hit
            features = features.to(torch.float16).to(features.dtype)
        for (frame, _), feature in zip(batch, features, strict=True):
            if self._writer is not None:
                self._writer.add(frame.target, frame.time, feature)
            yield Sample(frame.index, frame.target, frame.time), feature.unsqueeze(0)

    def _replay(self, cached: CachedVideo) -> Iterator[tuple[Sample, torch.Tensor]]:
        dtype = self.malmm.model.frame_position_embedding.weight.dtype
        index = 0
        for targets, times, features in cached.chunks():
            features = features.to(self.malmm.device, dtype)
            for target, time_s, feature in zip(targets.tolist(), times.tolist(), features, strict=True):
                yield Sample(index, target, time_s), feature.unsqueeze(0)
                index += 1

    def notes(self) -> list[str]:
        """How the frames were read, where it differs from what was asked (not a failure)."""
        return list(self._notes)

    def warnings(self) -> list[str]:
        """What could not be read (damaged or truncated files)."""
        if self._reader is not None:
            report = self._reader.report
            missing, ended_at = len(report.missing), report.ended_at
        else:
            missing, ended_at = self._missing, self._ended_at
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
    """Bookkeeping shared by the tasks: frames read and their times."""

    frames: int = 0
    first: float = 0.0
    last: float = 0.0

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
            notes=stream.notes(),
        )


def _bucket(seconds: float, length: float) -> int:
    return math.floor(seconds / length + 1e-9)


def _span(index: int, length: float, duration: float) -> tuple[float, float]:
    return index * length, min((index + 1) * length, duration)


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
    planned = Counter(_bucket(time, segment) for time in stream.times) if segment else Counter()
    segments: list[TimedText] = []
    current: _Segment | None = None

    def close(part: _Segment) -> None:
        start, end = _span(part.index, segment, stream.duration)
        segments.append(TimedText(start, end, malmm.generate(part.output, prompt, settings)[0]))

    run, output = _Run(), None
    progress.start(len(stream.times), stream.from_cache)
    for sample, features in stream:
        run.saw(sample)
        output, whole = malmm.step(whole, features)
        if segment is not None:
            index = _bucket(sample.target, segment)
            if current is None or current.index != index:  # a new segment starts with an empty memory
                if current is not None:
                    close(current)
                current = _Segment(index, malmm.new_memory(prompt, memory_bank_length, planned[index]))
            current.output, current.state = malmm.step(current.state, features)
        progress.advance()
    if current is not None:
        close(current)
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
    with VideoStream(malmm, path, sampling or Sampling(frames=QUESTION.frames), batch_size, cache) as stream:
        state = malmm.new_memory(prompts, memory_bank_length, total_frames=len(stream.times))
        run, output = _Run(), None
        progress.start(len(stream.times), stream.from_cache)
        for frame, features in stream:
            run.saw(frame)
            output, state = malmm.step(state, features.expand(len(questions), -1, -1))
            progress.advance()
        result = run.result(stream, path, "ask")
    answers = malmm.generate(output, prompts, settings)
    result.answers = [Answer(q, a) for q, a in zip(questions, answers, strict=True)]
    return result


def rank_labels(malmm: Malmm, output: torch.Tensor, labels: list[str], top_k: int) -> list[RankedLabel]:
    """The `top_k` likeliest labels for one video's query output [1, NQ, D]."""
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
    timeline: list[TimedText] = []

    def describe(output: torch.Tensor) -> str:
        if labels:
            return rank_labels(malmm, output, labels, 1)[0].label
        return malmm.generate(output, TIMELINE_PROMPT, settings)[0]

    run, output, interval = _Run(), None, None  # interval: index of the current one on the --every grid
    progress.start(len(stream.times), stream.from_cache)
    for sample, features in stream:
        index = _bucket(sample.time, every) if every else None
        if interval is not None and index != interval:  # an interval ended: what the memory says so far
            timeline.append(TimedText(*_span(interval, every, stream.duration), describe(output)))
        interval = index
        run.saw(sample)
        output, state = malmm.step(state, features)
        progress.advance()
    if interval is not None:
        start, end = _span(interval, every, stream.duration)
        timeline.append(TimedText(start, max(end, run.last), describe(output)))
    result = run.result(stream, path, "predict")
    result.timeline = timeline
    if labels:
        result.labels = rank_labels(malmm, output, labels, top_k)
    else:
        result.next_action = malmm.generate(output, NEXT_ACTION_PROMPT, settings)[0]
    return result
