"""The sampled frames of one video and their vision features, in time order: `VideoStream`, and
`FrameSource`, what the reading loop reads of it or of any other source (a live stream).

A frame's way to the memory: `VideoStream` probes the file and plans sample times (`Sampling`,
media/plans.py), decodes them ahead in a thread, preprocesses them with the model's image processor and
encodes them with the vision model in small batches, or replays the features of an earlier read
from the feature cache. pipeline.py steps the memories with what comes out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self, runtime_checkable

import numpy as np
import torch
from PIL import Image

from malmm_cli.media.keyframes import KeyframeReader, keyframes_unavailable
from malmm_cli.media.parallel import ParallelReader
from malmm_cli.media.plans import VideoInfo
from malmm_cli.media.prefetch import prefetch
from malmm_cli.media.probe import probe
from malmm_cli.media.sampling import Sampling
from malmm_cli.media.timefmt import format_timestamp
from malmm_cli.media.video import VideoReader
from malmm_cli.reading.feature_cache import CachedVideo, CacheReadError, CacheWriter, FeatureCache
from malmm_cli.reading.thumbnails import ThumbnailCollector
from malmm_cli.wording import counted
from models import Malmm

VISION_BATCH = 8  # frames encoded together by the vision model


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

    def start(self, total_frames: int | None, from_cache: bool = False) -> None: ...

    def advance(self, frames: int = 1) -> None: ...


class NoProgress:
    def start(self, total_frames: int | None, from_cache: bool = False) -> None:
        pass

    def advance(self, frames: int = 1) -> None:
        pass


@runtime_checkable
class FrameSource(Protocol):
    """What the reading loop (pipeline.read_streams) reads: a source's sampled frames with their
    vision features, (Sample, features [1, N, C]) in time order, in a `with` block (leaving it
    stops whatever reads ahead). `VideoStream` reads a file; `LiveStream` (live.py) a live source.

    The members with a body are those of a source read whole as it arrives, with nothing planned,
    cached or pictured (a live stream's): a class that subclasses FrameSource gets them."""

    def __enter__(self) -> Self: ...

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None: ...

    def __iter__(self) -> Iterator[tuple[Sample, torch.Tensor]]: ...

    @property
    def span(self) -> tuple[float, float]:
        """What the results cover (s): a clip, or the source from 0 to its duration."""
        ...

    def notes(self) -> list[str]:
        """How the frames were read, where it differs from what was asked (not a failure)."""
        ...

    def warnings(self) -> list[str]:
        """What could not be read."""
        ...

    @property
    def times(self) -> Sequence[float] | None:
        """The planned sample times, by plan index (the memory plans for them, spans and chapters
        know their frames ahead); None: nothing is planned, frames come as they arrive."""
        return None

    @property
    def clip(self) -> tuple[float, float] | None:
        """The part read [start, end) (a manifest row's clip), or None for all of it."""
        return None

    @property
    def from_cache(self) -> bool:
        """Whether the features are replayed from the feature cache (progress says so)."""
        return False

    @property
    def fps(self) -> float | None:
        """The source's own frame rate where known: the advice for spans without a sampled frame."""
        return None

    @property
    def thumbnails(self) -> ThumbnailCollector | None:
        """Pictures kept for the HTML report (the opener sets them), else None; with them the
        report also reads `missing`, `ended_at` and `pictures`."""
        return None

    def missing(self) -> list[float]:
        """Planned times whose frame could not be decoded."""
        return []

    @property
    def ended_at(self) -> float | None:
        """Where decoding stopped before the end (a truncated file), else None."""
        return None

    def pictures(self, targets: list[float]) -> Iterator[tuple[float, float, np.ndarray]]:
        """(target, time, RGB image) of these planned times, decoded again (frames replayed from
        the feature cache were not decoded in this run)."""
        return iter(())


def preprocess(malmm: Malmm, image: np.ndarray) -> torch.Tensor:
    """RGB uint8 [H, W, 3] -> [3, S, S] exactly as the model was trained (its own image processor)."""
    return malmm.image_processor(images=Image.fromarray(image), return_tensors="pt").pixel_values[0]


class VideoStream:
    """The sampled frames of one video with their vision features, in time order, memory bounded:
    a `FrameSource` with all its members.

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
        normalize: bool = True,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        """transform: applied to every decoded RGB frame before preprocessing (training's crop and
        flip); frames so transformed are never cached, so it takes no cache."""
        if transform is not None and cache is not None:
            raise ValueError("transformed frames are not cached: pass cache=None with a transform")
        self.malmm = malmm
        self.normalize = normalize  # False: features before the vision LayerNorm (training trains it)
        self.transform = transform
        self.path = Path(path)
        self.sampling = sampling
        self.batch_size = batch_size
        self.cache = cache
        self._decoded: Iterator[tuple[Sample, torch.Tensor]] | None = None
        self._writer: CacheWriter | None = None
        self._reader: VideoReader | KeyframeReader | ParallelReader | None = None
        self._cached: CachedVideo | None = None
        self._notes: list[str] = []
        self.fps: float | None = None  # the video's own frame rate (None: replayed from an older cache entry)
        self._replayed_missing: list[float] = []  # targets the cached part of the video could not decode back then
        self._replayed_end: float | None = None
        self.thumbnails: ThumbnailCollector | None = None  # set before iterating: pictures of decoded frames
        key = None
        if cache is not None and self.path.is_file():
            described = sampling.describe() + ("" if normalize else ",before-layernorm")
            key = cache.key(self.path, described, cache.vision_key(malmm.model, malmm.image_processor))
            self._cached = cache.load(key) if key else None
        if self._cached is not None:
            meta = self._cached.meta
            self.duration = float(meta["duration"])
            self.times = [float(t) for t in meta["times"]]
            self.fps = meta.get("fps")
            self._notes = list(meta["notes"])
            return
        self._open()
        if key is not None:
            self._writer = cache.writer(key)

    def _open(self) -> None:
        """Probe the file, plan its sample times and choose the reader."""
        info = probe(self.path)
        self.duration, self.fps = info.duration, info.fps
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
    def clip(self) -> tuple[float, float] | None:
        """The clip [start, end) of the video that is read (a manifest row's), or None for all of it."""
        return self.sampling.bounds(self.duration)

    @property
    def span(self) -> tuple[float, float]:
        """What the results cover: the clip, or the whole video from 0."""
        return self.clip or (0.0, self.duration)

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
                if self.thumbnails is not None:
                    self.thumbnails.offer(frame.target, frame.time, frame.image)
                image = frame.image if self.transform is None else self.transform(frame.image)
                yield sample, preprocess(self.malmm, image)

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
                    "ended_at": report.ended_at, "notes": self.notes(), "fps": self.fps}  # fmt: skip
            self._writer.commit(meta)
            self._writer = None

    def _encode(self, batch: list[tuple[Sample, torch.Tensor]]) -> Iterator[tuple[Sample, torch.Tensor]]:
        pixels = torch.stack([pixels for _, pixels in batch])
        if self.malmm.device.type == "cuda":  # page-locked memory lets the copy overlap the decoding
            pixels = pixels.pin_memory().to(self.malmm.device, non_blocking=True)
        features = self.malmm.encode_frames(pixels, self.normalize)
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
                    if self.thumbnails is not None:
                        self.thumbnails.replayed_frame(target, time_s)
                    yield Sample(index, target, time_s), feature.unsqueeze(0)
                    resume = index + 1
        except CacheReadError as error:
            self.cache.problem("an entry broke while it was read; the rest of the video is decoded", error)
            self._cached = None
            resumed_at = self.times[resume] if resume < len(self.times) else math.inf
            self._replayed_missing = [t for t in missing if t < resumed_at]
            return resume
        self._replayed_missing = missing
        self._replayed_end = cached.meta["ended_at"]
        return None

    def pictures(self, targets: list[float]) -> Iterator[tuple[float, float, np.ndarray]]:
        """(target, time, RGB image) of these planned times only: the few thumbnails of frames
        replayed from the feature cache, which were not decoded in this run."""
        reader = VideoReader(self.path, probe(self.path))
        try:
            for frame in reader.frames(targets):
                yield frame.target, frame.time, frame.image
        finally:
            reader.close()

    def notes(self) -> list[str]:
        """How the frames were read, where it differs from what was asked (not a failure)."""
        notes = list(self._notes)
        report = self._reader.report if isinstance(self._reader, KeyframeReader) else None
        if report is not None and report.delivered < report.requested:  # times that share a keyframe
            notes.append(
                f"--seek keyframe read {counted(report.delivered, 'distinct frame')} of the {report.requested} "
                "asked for: the video has too few keyframes, so several times share their nearest one "
                "(--seek exact reads them all)"
            )
        return notes

    def missing(self) -> list[float]:
        """Planned times whose frame could not be decoded (damaged or truncated files)."""
        missing = list(self._replayed_missing)
        if self._reader is not None and self._reader.report is not None:
            missing += self._reader.report.missing
        return missing

    @property
    def ended_at(self) -> float | None:
        """Where decoding stopped before the end (a truncated or damaged file), else None."""
        if self._reader is not None and self._reader.report is not None:
            return self._reader.report.ended_at
        return self._replayed_end

    def warnings(self) -> list[str]:
        """What could not be read (damaged or truncated files)."""
        missing, ended_at = len(self.missing()), self.ended_at
        notes = []
        if ended_at is not None:
            notes.append(
                f"decoding stopped at {format_timestamp(ended_at)} of "
                f"{format_timestamp(self.duration)}: the file is truncated or damaged"
            )
        if missing:
            notes.append(f"{missing} of {counted(len(self.times), 'sampled frame')} could not be decoded")
        return notes
