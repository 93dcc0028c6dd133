"""Small pictures of a video for the HTML report, taken from frames malmm decodes anyway.

`ThumbnailCollector` is handed each decoded frame by `VideoStream` (in its decoding thread) and
keeps, for every span of each grid it was given (segments, timeline intervals, and a few spans
over the whole video), the frame planned nearest the span's middle, shrunk to a small JPEG. So
an hour's report holds one picture per band, never one per sampled frame, and no frame is
decoded twice. Frames replayed from the feature cache were not decoded in this run: the same
choice is made among them by time alone, and only the few frames chosen are decoded at the end
(`preview(decode=...)`), so a report from cached features has its pictures too.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import cv2
import numpy as np
from PIL import Image

from malmm_cli.media.plans import VideoError
from malmm_cli.reading.results import Preview, Thumbnail
from malmm_cli.wording import counted, plural

THUMBNAIL_WIDTH = 192  # pixels: sharp enough on a phone, ~5 KB as JPEG
JPEG_QUALITY = 70
OVERVIEW_SPANS = 8  # pictures across the whole video, for videos without segments and the folder index


Decode = Callable[[list[float]], Iterable[tuple[float, float, np.ndarray]]]
"""Planned times -> (target, time, RGB image) of each that decodes (VideoStream.pictures)."""


class Spans(Protocol):
    """Consecutive spans over a video (pipeline.Grid): which span a time is in, and its bounds."""

    def index(self, seconds: float) -> int: ...

    def span(self, index: int) -> tuple[float, float]: ...


def shrink(image: np.ndarray, width: int = THUMBNAIL_WIDTH, quality: int = JPEG_QUALITY) -> Thumbnail:
    """RGB uint8 [H, W, 3] -> a JPEG at most `width` pixels wide (times filled in by the caller)."""
    height, original = image.shape[:2]
    if original > width:
        size = (width, max(1, round(height * width / original)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, "JPEG", quality=quality, optimize=True)
    return Thumbnail(0.0, 0.0, buffer.getvalue(), image.shape[1], image.shape[0])


class ThumbnailCollector:
    """Keeps the frame planned nearest the middle of each span of each grid, as a JPEG.

    Frames arrive in time order, so a span's best frame is known once a frame of a later span
    arrives; only then is it shrunk and encoded (one encoding per span, one raw frame held per grid).
    """

    def __init__(self, grids: Sequence[Spans], planned: Sequence[float], duration: float):
        self.grids = list(grids)
        self.planned = list(planned)
        self.duration = duration
        self._best: list[tuple[int, float, float, float, np.ndarray | None] | None] = [None] * len(self.grids)
        self._kept: dict[float, Thumbnail] = {}  # by target: grids that pick the same frame share it
        self._wanted: set[float] = set()  # targets chosen among replayed frames: decoded in preview()
        self.decoded = 0
        self.replayed = 0

    def offer(self, target: float, time: float, image: np.ndarray) -> None:
        """A frame just decoded (RGB, as stored in the file, before any training transform)."""
        self.decoded += 1
        self._consider(target, time, image)

    def replayed_frame(self, target: float, time: float) -> None:
        """A frame whose features came from the feature cache: not decoded in this run. If it is
        the one a span keeps, preview() decodes it (that frame alone)."""
        self.replayed += 1
        self._consider(target, time, None)

    def _consider(self, target: float, time: float, image: np.ndarray | None) -> None:
        for number, grid in enumerate(self.grids):
            span = grid.index(target)
            start, end = grid.span(span)
            distance = abs(target - (start + end) / 2)
            best = self._best[number]
            if best is not None and best[0] != span:
                self._keep(best)
                best = None
            if best is None or distance < best[1]:
                self._best[number] = (span, distance, target, time, image)

    def _keep(self, best: tuple[int, float, float, float, np.ndarray | None]) -> None:
        _, _, target, time, image = best
        if image is None:
            self._wanted.add(target)
        elif target not in self._kept:
            picture = shrink(image)
            self._kept[target] = Thumbnail(target, time, picture.jpeg, picture.width, picture.height)

    def preview(
        self, missing: Sequence[float] = (), ended_at: float | None = None, decode: Decode | None = None
    ) -> Preview:
        """The pictures kept, in time order, with the damaged spans: `missing` are the planned
        times whose frame could not be decoded, `ended_at` where decoding stopped before the end
        (if it did). decode: reads the frames chosen among those replayed from the feature cache
        (without it, or where it fails, the report says why those pictures are missing). Call once
        the stream has ended."""
        for number, best in enumerate(self._best):
            if best is not None:
                self._keep(best)
                self._best[number] = None
        wanted = sorted(self._wanted.difference(self._kept))
        if wanted and decode is not None:
            try:
                for target, time, image in decode(wanted):
                    self._keep((0, 0.0, target, time, image))
            except (VideoError, OSError):  # not worth failing a video for: the report says they are missing
                pass
        unmade = len(self._wanted.difference(self._kept))
        reason = None
        if unmade:
            reason = (
                f"{counted(unmade, 'picture')} {plural(unmade, 'is')} missing: their frames' vision features came "
                "from the feature cache and the frames could not be decoded again (--no-cache decodes every frame)"
            )
        thumbnails = sorted(self._kept.values(), key=lambda t: t.target)
        return Preview(thumbnails, damaged_spans(self.planned, missing, self.duration, ended_at), reason)


def damaged_spans(
    planned: Sequence[float], missing: Sequence[float], duration: float, ended_at: float | None = None
) -> list[tuple[float, float]]:
    """Runs of consecutive planned times with no frame, as spans: each from its first missing
    time to the next planned time (or the end of the video); where decoding stopped early, the
    last span starts there (what the report's warning says), not at the next planned time."""
    lost = set(missing)
    spans: list[tuple[float, float]] = []
    times = sorted(planned)
    for number, time in enumerate(times):
        if time not in lost:
            continue
        end = times[number + 1] if number + 1 < len(times) else max(duration, time)
        if spans and spans[-1][1] == time:
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((time, end))
    if ended_at is not None:
        tail = min([ended_at] + [start for start, end in spans if end > ended_at])
        spans = [(start, end) for start, end in spans if end <= tail] + [(tail, max(duration, tail))]
    return spans
