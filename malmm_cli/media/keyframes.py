"""Approximate, fast sampling: the keyframe nearest each requested time (`--seek keyframe`).

FFmpeg can skip decoding every frame that is not a keyframe (`skip_frame="NONKEY"`), so one pass
over the file decodes only keyframes: about 15 times faster than exact sampling on long-GOP H.264
(docs/benchmarks.md). Each requested time gets the nearest keyframe; a keyframe is delivered once
even when several times are nearest to it (at 1 frame/s and a 6 s GOP, six times share one), and
every frame carries its true timestamp. Only H.264 is supported: VP9 ignores the skip (every frame
is decoded anyway) and HEVC with open GOPs returns keyframes out of order (measured in
shared/notes/decoding.md), so other codecs are read exactly instead.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from malmm_cli.media.plans import VideoError, VideoInfo
from malmm_cli.media.probe import open_input, probe
from malmm_cli.media.video import Frame, ReadReport

try:
    import av
except ImportError:  # keyframe sampling needs PyAV: exact frames are read without it
    av = None

KEYFRAME_CODECS = frozenset({"h264"})


def keyframes_unavailable(info: VideoInfo) -> str | None:
    """Why keyframe sampling cannot read this video (then it is read exactly), or None."""
    if av is None:
        return "keyframe sampling needs PyAV, which is not installed: exact frames read"
    if info.codec not in KEYFRAME_CODECS:
        return f"keyframe sampling supports H.264 only: exact frames read from this {info.codec}"
    return None


def supports_keyframes(info: VideoInfo) -> bool:
    return keyframes_unavailable(info) is None


class KeyframeReader:
    """Same use as VideoReader: `frames(times)` then `report`; memory holds two frames at most."""

    def __init__(self, path: Path, info: VideoInfo | None = None) -> None:
        self.path = Path(path)
        self.info = info if info is not None else probe(self.path)
        if not supports_keyframes(self.info):
            raise VideoError(keyframes_unavailable(self.info))
        self.report: ReadReport | None = None

    def close(self) -> None:
        pass

    def __enter__(self) -> KeyframeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def frames(self, times: Sequence[float]) -> Iterator[Frame]:
        """The nearest keyframe of each time, in time order, each keyframe once; see `report` after."""
        targets = sorted(float(t) for t in times)
        if any(not (math.isfinite(t) and t >= 0) for t in targets):
            raise ValueError("times must be finite and >= 0 seconds")
        report = self.report = ReadReport(requested=len(targets))
        pending = 0  # first target not yet given a keyframe
        previous: tuple[float, np.ndarray] | None = None  # (time, image) of the keyframe before
        last_sent: float | None = None  # nearest keyframes never move backwards: compare with the last one
        try:
            container = open_input(self.path)
        except av.error.FFmpegError as error:
            raise VideoError(f"cannot read the file ({error.strerror})") from None
        with container:
            stream = next(s for s in container.streams.video if s.codec_context is not None)
            stream.codec_context.skip_frame = "NONKEY"
            stream.thread_type = "NONE"  # measured faster than frame threads when only keyframes decode
            start = float((stream.start_time or 0) * stream.time_base)
            for decoded in _decode(container, stream):
                current = (float(decoded.pts * stream.time_base) - start, _rgb(decoded))
                while pending < len(targets) and targets[pending] <= current[0]:
                    target = targets[pending]  # nearest of the keyframes around it; ties go to the earlier
                    nearest = previous if previous and target - previous[0] <= current[0] - target else current
                    if nearest[0] != last_sent:
                        report.delivered += 1
                        last_sent = nearest[0]
                        yield Frame(pending, target, nearest[0], nearest[1])
                    pending += 1
                previous = current
                if pending == len(targets):
                    break
            if pending < len(targets) and previous is not None and previous[0] != last_sent:
                report.delivered += 1  # times after the last keyframe
                yield Frame(pending, targets[pending], previous[0], previous[1])
        if report.delivered == 0 and targets:
            raise VideoError("no frame could be decoded")


def _decode(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[av.VideoFrame]:
    """Decoded frames, skipping packets FFmpeg reports as damaged instead of stopping there."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            continue
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            continue


def _rgb(frame: av.VideoFrame) -> np.ndarray:
    """(H, W, 3) RGB as displayed: PyAV does not apply the rotation metadata, OpenCV does."""
    image = frame.to_ndarray(format="rgb24")
    turns = (getattr(frame, "rotation", 0) or 0) // 90
    return np.ascontiguousarray(np.rot90(image, k=turns)) if turns else image
