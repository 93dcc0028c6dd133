"""Which frames of a video are read: `Sampling`, the one description every task, the feature cache
and the result records share (the times themselves are planned in plans.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from malmm_cli.media.plans import FRAME_RULE, Plan, VideoInfo, clip_bounds, plan_clip, plan_times


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
    start: float | None = None  # a clip of the video (seconds), with `frames`
    end: float | None = None
    jitter: int | None = None  # a seed: one random time per segment instead of its centre (training)

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
        if self.clipped and self.frames is None:
            raise ValueError("a clip or jittered sampling needs frames, not fps")

    @property
    def clipped(self) -> bool:
        return self.start is not None or self.end is not None or self.jitter is not None

    def bounds(self, duration: float) -> tuple[float, float] | None:
        """The clip [start, end) that is read, in the video's seconds; None for the whole video."""
        if self.start is None and self.end is None:
            return None
        return clip_bounds(duration, self.start, self.end)

    def plan(self, info: VideoInfo) -> Plan:
        if self.clipped:
            return plan_clip(info, self.frames, self.start, self.end, self.jitter)
        return plan_times(info, frames=self.frames, fps=self.fps)

    def describe(self) -> str:
        """What decides which frames are read, exactly (part of the feature cache key and of result
        records), the reader's rule included."""
        rate = f"frames={self.frames}" if self.fps is None else f"fps={self.fps!r}"
        clip = f",clip={self.start!r}-{self.end!r},jitter={self.jitter!r}" if self.clipped else ""
        return f"{rate},seek={self.seek},frame={FRAME_RULE}{clip}"
