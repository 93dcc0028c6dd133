"""What a video is (`VideoInfo`, from probe.py) and which of its times are read (`Plan`).

Pure arithmetic on seconds: no decoder is loaded, so the sampling of a run can be planned,
described and checked before anything opens a file.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from malmm_cli.wording import counted

SLACK = 1e-3  # s: a frame stamped up to 1 ms after a target still counts as shown at it (pts rounding)
# Which frame a target time gets, named in the feature cache key and in result records, so that
# features or results read under an earlier rule (unnamed: "the first frame at or after") are
# never taken for this one's.
FRAME_RULE = "shown"


class VideoError(Exception):
    """A video that cannot be read; str(error) is a one-line reason without the path."""


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    duration: float  # seconds
    fps: float  # average frames per second (a variable-rate video has no single rate)
    frame_count: int | None  # None when the container does not record it (WebM, MKV)
    width: int  # as displayed, after rotation
    height: int
    codec: str  # FFmpeg's name: h264, hevc, vp9, av1...
    rotation: int  # clockwise degrees players turn the stored picture (0, 90, 180, 270)
    still: bool = False  # a still image (PNG, JPEG...), not a video: it has one frame

    @property
    def frames_available(self) -> int:
        """How many frames the video has (counted by the container, else duration x rate)."""
        if self.still:
            return 1
        return self.frame_count or max(1, round(self.duration * self.fps))


def sample_times(duration: float, frames: int | None = None, fps: float | None = None) -> list[float]:
    """Target times (s) over [0, duration): N centres of N equal parts, or a fixed rate from 0."""
    if not (duration > 0 and math.isfinite(duration)):
        raise ValueError(f"duration must be a positive number of seconds, got {duration}")
    if (frames is None) == (fps is None):
        raise ValueError("give exactly one of frames or fps")
    if frames is not None:
        if isinstance(frames, bool) or not isinstance(frames, int) or frames <= 0:
            raise ValueError(f"frames must be a positive integer, got {frames!r}")
        return [(i + 0.5) * duration / frames for i in range(frames)]
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    count = math.ceil(duration * fps - 1e-9)  # k / fps < duration, with float noise at the boundary
    return [k / fps for k in range(count) if k / fps < duration]


@dataclass(frozen=True)
class Plan:
    """The sample times for one video and, when the request had to be changed, why."""

    times: list[float]
    note: str | None = None


STILL_IMAGE_PLAN = Plan([0.0], "a still image, not a video: read as its one frame")


def plan_times(info: VideoInfo, frames: int | None = None, fps: float | None = None) -> Plan:
    """Sample times for `info`, never more than the video has frames: asking for more would read
    the same frames again and again. A still image gives its one frame."""
    if info.still:
        return STILL_IMAGE_PLAN
    available = info.frames_available
    if frames is not None and frames > available:  # every frame once: at the frames' own times
        note = f"{counted(frames, 'frame')} asked for, but the video has {available}: reading each once"
        return Plan(sample_times(info.duration, fps=info.fps), note)
    if fps is not None and fps > info.fps * (1 + 1e-6):
        note = f"{fps:g} frames/s asked for, but the video has {info.fps:g}: reading at {info.fps:g}"
        return Plan(sample_times(info.duration, fps=info.fps), note)
    return Plan(sample_times(info.duration, frames=frames, fps=fps))


def clip_bounds(duration: float, start: float | None, end: float | None) -> tuple[float, float]:
    """The part [begin, finish) of a video that a clip covers: its start and end, within the video."""
    return max(start or 0.0, 0.0), duration if end is None else min(end, duration)


def plan_clip(
    info: VideoInfo, frames: int, start: float | None = None, end: float | None = None, jitter: int | None = None
) -> Plan:
    """`frames` times in the clip [start, end) of the video, one in each of `frames` equal
    segments: its centre, or with `jitter` (a seed) a random time in it, as MA-LMM samples
    training clips. Never more than the clip has frames."""
    begin, finish = clip_bounds(info.duration, start, end)
    if not finish > begin:
        raise VideoError(f"the clip {begin:g}-{finish:g} s is empty or past the video's end ({info.duration:g} s)")
    if info.still:
        return STILL_IMAGE_PLAN
    available = max(1, round((finish - begin) * info.fps))
    count = min(frames, available)
    note = (
        f"{counted(frames, 'frame')} asked for, but the clip has {available}: reading each once"
        if count < frames
        else None
    )
    draw = random.Random(jitter)
    length = (finish - begin) / count
    latest = max(0.5, 1 - 2 * SLACK / length)  # a time within SLACK of the next segment would read its frame
    offsets = [0.5] * count if jitter is None else [min(draw.random(), latest) for _ in range(count)]
    return Plan([begin + (i + offset) * length for i, offset in enumerate(offsets)], note)
