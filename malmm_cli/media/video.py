"""Decoding: exactly the frames a plan asks for (`VideoReader`), with OpenCV.

Nothing here knows about the model. OpenCV decodes (its `grab()` moves through frames without
converting them, `retrieve()` converts only the kept ones). The sampling algorithm and its
measurements are in docs/benchmarks.md ("Decoding").

Times are seconds on the video's own clock: 0 is the stream's start, as OpenCV's
CAP_PROP_POS_MSEC counts. The frame for a target time t is the frame on screen at t: the last
frame whose timestamp is at or before t (1 ms slack for rounding), or the first frame when t
comes before it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from malmm_cli.media.plans import SLACK, VideoError, VideoInfo
from malmm_cli.media.probe import open_capture, probe

SEEK_AHEAD = 2.0  # s: targets further ahead than this are reached by seeking, nearer ones by grabbing
GIVE_UP_AFTER = 30.0  # s of requested times failing in a row before asking whether the data has ended


@dataclass(frozen=True, eq=False)
class Frame:
    index: int  # position in the requested times
    target: float  # requested time, s
    time: float  # the frame's own timestamp, s
    image: np.ndarray  # (H, W, 3) RGB uint8, as displayed (rotation applied)


@dataclass
class ReadReport:
    """What one `VideoReader.frames` call delivered; final once the iteration has finished."""

    requested: int
    delivered: int = 0
    missing: list[float] = field(default_factory=list)  # targets with no frame (damaged or missing data)
    ended_at: float | None = None  # last decoded time when decoding stopped before the last target


class _Cursor:
    """An OpenCV capture and where it stands, to find the frame shown at a time.

    The frame shown at t is the last frame whose time is at or before t + SLACK (the first frame
    when t comes before it). Only the frame after it proves which one that is, and OpenCV converts
    only the frame grabbed last: so a frame that may be the one (within about a frame interval
    before t) is converted before the next grab, and `kept` holds the last one converted.
    `time` is the frame grabbed last (None: none since a seek, or the grab failed); `previous` the
    one grabbed before it (-inf at the stream's start, None unknown after a seek; after a failed
    grab, the last frame decoded).
    """

    def __init__(self, path: Path, duration: float) -> None:
        self.path = path
        self.duration = duration  # s: the video's, to tell its end from a cut
        self.capture: cv2.VideoCapture | None = None
        self.decoded_until: float | None = None  # latest frame time ever grabbed
        self.reopen()

    def reopen(self) -> None:
        """A fresh capture at the start of the stream (also the cure for one that hit bad data)."""
        self.close()
        self.capture = open_capture(self.path)  # no params: an unknown one fails open
        if not self.capture.isOpened():
            raise VideoError("the file can no longer be opened")
        self.fps = self.capture.get(cv2.CAP_PROP_FPS)  # OpenCV maps frame numbers to times with this
        self.time: float | None = None
        self.previous: float | None = -math.inf
        self.kept: tuple[float, np.ndarray] | None = None

    def close(self) -> None:
        if self.capture is not None:
            self.capture.release()
            self.capture = None

    @property
    def period(self) -> float:
        """The average frame interval, s (0 when OpenCV knows no rate)."""
        return 1 / self.fps if self.fps > 0 else 0.0

    def grab(self) -> bool:
        """Decode the next frame without converting it."""
        if not self.capture.grab():
            if self.time is not None:
                self.previous = self.time
            self.time = None
            return False
        if self.time is not None:
            self.previous = self.time
        self.time = self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1000
        self._decoded(self.time)
        return True

    def _decoded(self, time: float) -> None:
        self.decoded_until = time if self.decoded_until is None else max(self.decoded_until, time)

    def retrieve(self) -> np.ndarray | None:
        """The grabbed frame as (H, W, 3) RGB, rotated as displayed."""
        ok, bgr = self.capture.retrieve()
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if ok and bgr is not None else None

    def _keep(self) -> bool:
        """Convert the frame grabbed, which may be the one shown at a target; False if that fails."""
        image = self.retrieve()
        self.kept = None if image is None else (self.time, image)
        return image is not None

    def _may_be_shown(self, limit: float) -> bool:
        """Whether the frame grabbed may be the last at or before limit: it is unless the next frame
        is too, and that comes a frame interval later (the last one seen, for a variable rate)."""
        known = self.previous is not None and math.isfinite(self.previous)
        interval = max(self.time - self.previous if known else 0.0, self.period, 2 * SLACK)
        return limit - 1.25 * interval < self.time <= limit

    def _proven(self, limit: float) -> tuple[float, np.ndarray] | None:
        """The frame shown at limit - SLACK when where the cursor stands proves it: the frame
        grabbed comes after limit and the one before it was kept, or the stream starts after limit."""
        if self.time is None or self.time <= limit:
            return None
        if self.previous == -math.inf:  # the stream's first frame comes after the target: it is the one shown
            if self.kept is None or self.kept[0] != self.time:
                self._keep()
            return self.kept
        if self.previous is not None and self.previous <= limit and self.kept is not None:
            return self.kept if self.kept[0] == self.previous else None
        return None

    def _near(self, target: float) -> bool:
        """Whether grabbing forward reaches target's frame: the cursor stands at most SEEK_AHEAD before it."""
        if self.time is None:
            return self.previous == -math.inf and target <= SEEK_AHEAD  # fresh capture, target near the start
        return self.time <= target + SLACK and target - self.time <= SEEK_AHEAD

    def find(self, target: float, seek: bool = False, again: bool = True) -> tuple[float, np.ndarray] | None:
        """The frame shown at target, as (its time, RGB image): grabbing forward when it is near, else
        (or if told) seeking. None when bad data or the data's end comes first."""
        limit = target + SLACK
        if (shown := self._proven(limit)) is not None:
            return shown
        if (seek or not self._near(target)) and not self.seek(target):
            return None
        while (shown := self._proven(limit)) is None:
            if self.time is not None:  # else nothing is grabbed yet (a fresh capture)
                if self.time > limit:
                    # The frame before was the one, but a longer interval than expected left it
                    # unconverted: its time is known now, so seek back to it.
                    return self.find(self.previous, seek=True, again=False) if again else None
                if self._may_be_shown(limit) and not self._keep():
                    return None
            if not self.grab():
                return self._last_frame(target, again)
        return shown

    def _last_frame(self, target: float, again: bool) -> tuple[float, np.ndarray] | None:
        """After a failed grab: the frame decoded last when it is the video's last frame, shown until
        the end. (Not after damage or a cut: the frame that should follow could not be decoded.)"""
        last = self.previous
        if last is None or not math.isfinite(last) or not target < self.duration:
            return None
        if last < self.duration - 1.5 * self.period - SLACK:
            return None  # frames should follow: the data broke off
        if self.kept is not None and self.kept[0] == last:
            return self.kept
        return self.find(last, seek=True, again=False) if again else None

    def seek(self, target: float) -> bool:
        """Jump to a frame at or before the one shown at target and grab it, so that grabbing forward
        finds target's frame.

        set(POS_FRAMES, n) lands on frame n, which OpenCV turns into a time through the average rate:
        n is target's frame on a constant rate (proven by grabbing one frame more), and on a variable
        rate the landing can come after target: then seek again 1, 2, 4... s earlier. The start needs
        no seek: reopening lands there.
        """
        back = 0.0
        while True:
            number = math.floor((target + SLACK - back) * self.fps) if self.fps > 0 else 0
            if number <= 1:
                self.reopen()
                return self.grab()
            self.time, self.previous = None, None
            if not self.capture.set(cv2.CAP_PROP_POS_FRAMES, number):
                return False
            before = self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1000  # the frame decoded last while seeking
            if before > 0:
                self._decoded(before)
            if not self.grab():
                return False
            if self.time <= target + SLACK:
                return True
            back = max(1.0, 2 * back)  # landed late


class VideoReader:
    """Decodes the frames shown at given times, exactly, with memory that does not grow with the video.

    Near targets (<= SEEK_AHEAD) are reached by grabbing forward, far ones by a seek whose landing
    time is checked; only frames that may be kept are converted. After a failure (damaged data, end
    of a truncated file) the capture is reopened and later targets are still tried, and a frame is
    accepted only within max(1 s, 2 frames) of its target, so no stale frame is ever returned.
    """

    def __init__(self, path: Path, info: VideoInfo | None = None) -> None:
        self.path = Path(path)
        self.info = info if info is not None else probe(self.path)
        self.report: ReadReport | None = None
        self._cursor: _Cursor | None = None

    def close(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def frames(self, times: Sequence[float]) -> Iterator[Frame]:
        """One Frame per requested time that has a frame, in the order requested; see `report` after."""
        targets = [float(t) for t in times]
        if any(not (math.isfinite(t) and t >= 0) for t in targets):
            raise ValueError("times must be finite and >= 0 seconds")
        report = self.report = ReadReport(requested=len(targets))
        if self._cursor is None:
            self._cursor = _Cursor(self.path, self.info.duration)
        cursor = self._cursor
        tolerance = max(1.0, 2 / cursor.fps) if cursor.fps > 0 else 1.0
        failing_since: float | None = None  # first target of the current run of failures
        given: np.ndarray | None = None  # the image yielded last: a frame shown at two times is copied
        for index, target in enumerate(targets):
            found = self._shown_at(cursor, target, tolerance)
            if found is not None:
                failing_since = None
                report.delivered += 1
                time, image = found
                image = image.copy() if image is given else image
                given = image
                yield Frame(index, target, time, image)
                continue
            report.missing.append(target)
            if cursor.decoded_until is None and not self._any_frame_decodes(cursor):
                raise VideoError("no frame could be decoded")
            cursor.reopen()
            failing_since = target if failing_since is None else failing_since
            later = targets[index + 1 :]
            if later and abs(target - failing_since) >= GIVE_UP_AFTER:
                if self._shown_at(cursor, later[-1], tolerance) is None:
                    report.missing.extend(later)  # nothing decodes, even at the last target: the data has ended
                    break
                failing_since = None  # a long damaged stretch, with data after it: keep going
                cursor.reopen()
        if targets and cursor.decoded_until is None:
            raise VideoError("no frame could be decoded")
        if report.missing and max(targets) in report.missing:
            report.ended_at = cursor.decoded_until

    @staticmethod
    def _shown_at(cursor: _Cursor, target: float, tolerance: float) -> tuple[float, np.ndarray] | None:
        """Time and RGB image of the frame shown at target, or None (no data there, or that frame
        is too far from it: shown since long before, after a cut or a pause in the recording)."""
        found = cursor.find(target)
        if found is None:  # bad data or the end on the way: a fresh capture seeking straight there may get past it
            cursor.reopen()
            found = cursor.find(target, seek=True)
        if found is None or abs(found[0] - target) > tolerance:
            return None
        return found

    @staticmethod
    def _any_frame_decodes(cursor: _Cursor) -> bool:
        cursor.reopen()
        return cursor.grab()
