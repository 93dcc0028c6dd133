"""Video input: probe a file, choose sample times, decode exactly those frames, and decode ahead.

Nothing here knows about the model. OpenCV decodes (its `grab()` moves through frames without
converting them, `retrieve()` converts only the kept ones); PyAV only probes, because it reports
why a file cannot be read where OpenCV just says no. Without PyAV (a machine where it cannot be
installed), probing falls back to OpenCV alone: the same facts, plainer reasons. The sampling
algorithm and its measurements are in docs/benchmarks.md ("Decoding").

Times are seconds on the video's own clock: 0 is the stream's start, as OpenCV's
CAP_PROP_POS_MSEC counts. The frame for a target time t is the frame on screen at t: the last
frame whose timestamp is at or before t (1 ms slack for rounding), or the first frame when t
comes before it.
"""

from __future__ import annotations

import errno
import math
import os
import queue
import random
import re
import stat
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from malmm_cli.wording import counted

try:
    import av
except ImportError:  # probing falls back to OpenCV (`_probe_with_opencv`)
    av = None

T = TypeVar("T")

SLACK = 1e-3  # s: a frame stamped up to 1 ms after a target still counts as shown at it (pts rounding)
# Which frame a target time gets, named in the feature cache key and in result records, so that
# features or results read under an earlier rule (unnamed: "the first frame at or after") are
# never taken for this one's.
FRAME_RULE = "shown"
SEEK_AHEAD = 2.0  # s: targets further ahead than this are reached by seeking, nearer ones by grabbing
GIVE_UP_AFTER = 30.0  # s of requested times failing in a row before asking whether the data has ended

_MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"}
_OTHER_CONTAINERS = (b"\x1a\x45\xdf\xa3", b"RIFF", b"FLV", b"OggS", b"\x00\x00\x01\xba")  # mkv/webm, avi, ...


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


# --- probing ----------------------------------------------------------------------------------------


def _read_head(path: Path, size: int = 64) -> bytes:
    """First bytes of a regular, non-empty, readable file; VideoError saying which it is not."""
    try:
        status = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        if path.is_symlink():
            raise VideoError(f"a broken link: {os.readlink(path)} is not there") from None
        raise VideoError("no such file") from None
    except PermissionError:
        raise VideoError("permission denied") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise VideoError("a symbolic link that points back to itself") from None
        raise VideoError(f"cannot read the file ({error.strerror or error})") from None
    if stat.S_ISDIR(status.st_mode):
        raise VideoError("a directory, not a file")
    if not stat.S_ISREG(status.st_mode):
        raise VideoError("not a regular file (a pipe or device?)")
    if status.st_size == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        with open(path, "rb") as file:
            return file.read(size)
    except PermissionError:
        raise VideoError("permission denied") from None
    except OSError as error:
        raise VideoError(f"cannot read the file ({error.strerror or error})") from None


def _mp4_has_index(path: Path) -> bool:
    """Whether an MP4/MOV file has its index (a top-level 'moov' box); walks box headers only."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        offset = 0
        while offset + 8 <= size:
            file.seek(offset)
            header = file.read(16)
            box_size, kind = struct.unpack(">I4s", header[:8])
            if kind == b"moov":
                return True
            if box_size == 1 and len(header) == 16:  # 64-bit size follows
                box_size = struct.unpack(">Q", header[8:])[0]
            elif box_size == 0:  # box runs to the end of the file
                return False
            if box_size < 8:
                return False
            offset += box_size
    return False


def _unreadable_container_reason(path: Path, head: bytes) -> str:
    """Why FFmpeg could not parse the container: a known format that is damaged, or no video at all."""
    if head[4:8] in _MP4_BOXES:
        if not _mp4_has_index(path):
            return "damaged or incomplete file (no index; truncated while being written?)"
        return "damaged or incomplete file (unreadable index)"
    if head.startswith(_OTHER_CONTAINERS):
        return "damaged or incomplete file (unreadable header)"
    return "not a video file (unrecognised format)"


def _pyav_major(version: str) -> int:
    """The major version of a PyAV version string ("18.1.0", "19.0.0rc1" -> 18, 19)."""
    match = re.match(r"\d+", version)
    if match is None:
        raise ValueError(f"not a PyAV version: {version!r}")
    return int(match.group())


def _tag_decoding(version: str) -> dict[str, str]:
    """What `av.open` needs, in PyAV `version`, so that tags that are not UTF-8 never stop a video.

    Before PyAV 19, tags were decoded strictly unless `metadata_errors="ignore"` was passed (a
    Latin-1 title raised UnicodeDecodeError on opening); PyAV 19 removed that argument (passing it
    raises TypeError) and always decodes them with surrogateescape, which never raises.
    """
    return {"metadata_errors": "ignore"} if _pyav_major(version) < 19 else {}


_TAG_DECODING = _tag_decoding(av.__version__) if av is not None else {}


def open_input(location: str | Path, **options: object) -> av.container.InputContainer:
    """`av.open(location, **options)` for reading, on any PyAV malmm supports: a file or stream
    whose tags (title, handler name...) are not UTF-8 is read like any other, never refused.
    Every opening of an input goes through here (probing, keyframes, live streams)."""
    return av.open(str(location), **_TAG_DECODING, **options)


def quiet_ffmpeg() -> None:
    """OpenCV's own FFmpeg prints every decoding complaint (hundreds of lines for one damaged file)
    to stderr; malmm reports what matters itself. FFmpeg reads this setting when OpenCV opens its
    first file, so it is made just before each open (a user's own setting wins)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def _capture(path: Path) -> cv2.VideoCapture:
    """An OpenCV capture of the file. OpenCV takes a name as UTF-8 text and crashes the process
    on one that is not (a byte os.fsdecode could not decode): such a file is opened here and
    handed over by its descriptor's name, /proc/self/fd/N (/dev/fd/N elsewhere), which FFmpeg
    opens anew, so the descriptor is closed right after."""
    quiet_ffmpeg()
    name = str(path)
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return cv2.VideoCapture(name, cv2.CAP_FFMPEG)
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError as error:
        raise VideoError(f"cannot open the file: {error.strerror}") from None
    try:
        folder = "/proc/self/fd" if os.path.isdir("/proc/self/fd") else "/dev/fd"
        return cv2.VideoCapture(f"{folder}/{descriptor}", cv2.CAP_FFMPEG)
    finally:
        os.close(descriptor)


def _open_container(path: Path, head: bytes) -> av.container.InputContainer:
    try:
        return open_input(path)
    except av.error.InvalidDataError:
        raise VideoError(_unreadable_container_reason(path, head)) from None
    except av.error.PermissionError:
        raise VideoError("permission denied") from None
    except av.error.FFmpegError as error:
        raise VideoError(f"cannot read the file ({error.strerror})") from None


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The first real video stream (cover art in an audio file does not count)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    if container.streams.audio:
        raise VideoError("no video stream (audio only)")
    raise VideoError("no video stream")


def _pyav_decodes_a_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> bool:
    """Whether PyAV's FFmpeg decodes at least one frame among the first few hundred packets."""
    try:
        for count, packet in enumerate(container.demux(stream)):
            try:
                if packet.decode():
                    return True
            except av.error.FFmpegError:
                pass
            if count > 300:
                break
    except av.error.FFmpegError:
        pass
    return False


TAIL_SECONDS = 10.0  # how far before the container's end to look for a stream's last packets


def _packets_end(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int | None:
    """The latest pts + duration among the stream's packets from where the container stands."""
    end = None
    for packet in container.demux(stream):
        if packet.pts is not None:
            finish = packet.pts + (packet.duration or 0)
            end = finish if end is None else max(end, finish)
    return end


def _stream_length(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float | None:
    """Seconds from the stream's first timestamp to the end of its last packet (demux only).

    Looks at the last TAIL_SECONDS of the container first (a seek to this stream's keyframe at or
    before that point, then packet headers), and reads every packet when that finds none of the
    stream's packets. The container's own duration is no substitute: it counts from its
    own start and runs to the end of its longest stream, so it is not this stream's length when the
    timestamps do not start at 0 (MPEG-TS, some Matroska) or another video stream is longer.
    """
    start = stream.start_time or 0
    if container.duration and container.duration > 0:
        container_end = container.duration / av.time_base + (container.start_time or 0) / av.time_base
        target = int((container_end - TAIL_SECONDS) / stream.time_base)
        if target > start:
            try:
                container.seek(target, stream=stream, backward=True)  # this stream's keyframe at or before it
                end = _packets_end(container, stream)
                if end is not None:
                    return float((end - start) * stream.time_base)
            except av.error.FFmpegError:
                pass
    try:
        container.seek(start, stream=stream, backward=True)
    except av.error.FFmpegError:
        return None
    end = _packets_end(container, stream)
    return None if end is None else float((end - start) * stream.time_base)


def probe(path: Path) -> VideoInfo:
    """Facts about a video file, or VideoError with the reason it cannot be read.

    PyAV reads the container (it names what is wrong); OpenCV must then open the file and decode
    its first frame, since OpenCV is the decoder that `VideoReader` uses.
    """
    path = Path(path)
    head = _read_head(path)
    if av is None:
        return _probe_with_opencv(path, head)
    with _open_container(path, head) as container:
        stream = _video_stream(container)
        if stream.codec_context is None:  # FFmpeg does not know the codec tag at all
            raise VideoError("unsupported video codec (unknown to FFmpeg)")
        codec = stream.codec_context.codec.canonical_name

        capture = _capture(path)
        try:
            if not capture.isOpened() or not capture.grab():
                if _pyav_decodes_a_frame(container, stream):
                    raise VideoError(f"unsupported video codec '{codec}'")
                raise VideoError("no frame could be decoded")
            width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))  # after rotation
            height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
            rotation = int(capture.get(cv2.CAP_PROP_ORIENTATION_META)) % 360
            cv_fps = capture.get(cv2.CAP_PROP_FPS)
            cv_count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        finally:
            capture.release()

        still = _is_still_image(container)
        duration = None
        if stream.duration and stream.duration > 0:
            duration = float(stream.duration * stream.time_base)
        elif not still:
            duration = _stream_length(container, stream)
        if not duration and cv_fps > 0 and cv_count > 0:
            duration = cv_count / cv_fps
        if not duration and still:
            duration = 1 / cv_fps if cv_fps > 0 else 0.04
        if not duration or duration <= 0 or not math.isfinite(duration):
            raise VideoError("no timestamps in the file (a raw stream? remux it into .mp4 or .mkv)")

        frame_count = 1 if still else stream.frames if stream.frames and stream.frames > 0 else None
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else cv_fps if cv_fps > 0 else (frame_count or 0) / duration
        if fps <= 0:
            raise VideoError("unknown frame rate")
    return VideoInfo(path, duration, fps, frame_count, width, height, codec, rotation, still)


def _is_still_image(container: av.container.InputContainer) -> bool:
    """FFmpeg reads still images (PNG, JPEG, WebP, BMP, TIFF...) with its image demuxers."""
    names = set(container.format.name.split(","))
    return "image2" in names or any(name.endswith("_pipe") for name in names)


def check_readable(path: Path) -> None:
    """The cheap part of `probe`, run on every input before the model loads: the file exists, is
    readable, is a container FFmpeg recognises and holds a video stream. Raises VideoError."""
    path = Path(path)
    head = _read_head(path)
    if av is None:
        _probe_with_opencv(path, head)
        return
    with _open_container(path, head) as container:
        _video_stream(container)


_FOURCC_CODECS = {  # OpenCV's codec tags, as FFmpeg names the codecs
    "avc1": "h264", "h264": "h264", "hev1": "hevc", "hvc1": "hevc", "hevc": "hevc", "vp09": "vp9", "vp90": "vp9",
    "av01": "av1", "mp4v": "mpeg4", "xvid": "mpeg4", "fmp4": "mpeg4", "mjpg": "mjpeg",
}  # fmt: skip


def _probe_with_opencv(path: Path, head: bytes) -> VideoInfo:
    """`probe` without PyAV: OpenCV's figures (frame count over rate for the duration)."""
    capture = _capture(path)
    try:
        if not capture.isOpened():
            raise VideoError(_unreadable_container_reason(path, head))
        if not capture.grab():
            raise VideoError("no frame could be decoded")
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        rotation = int(capture.get(cv2.CAP_PROP_ORIENTATION_META)) % 360
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        tag = int(capture.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("latin-1").strip("\x00 ").lower()
    finally:
        capture.release()
    if not (fps > 0 and count > 0):
        raise VideoError("no timestamps in the file (a raw stream? remux it into .mp4 or .mkv)")
    codec = _FOURCC_CODECS.get(tag, tag or "unknown")
    return VideoInfo(path, count / fps, fps, count, width, height, codec, rotation, still=count == 1)


# --- sampling ---------------------------------------------------------------------------------------


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


# --- decoding ---------------------------------------------------------------------------------------


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
        self.capture = _capture(self.path)  # no params: an unknown one fails open
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


# --- decoding ahead ---------------------------------------------------------------------------------


_ITEM, _ERROR, _END = range(3)


def prefetch(items: Iterable[T], maxsize: int = 32) -> Iterator[T]:
    """Yield `items` while a background thread computes the next ones (at most `maxsize` ahead).

    OpenCV releases the GIL while decoding, so decoding overlaps the consumer's work. An exception in
    the producer is raised here after the items produced before it. When the consumer stops early
    (break, exception, Ctrl-C, close()), the producer is told to stop and joined as soon as this
    generator is closed, which CPython does when the loop drops it (or use contextlib.closing).
    """
    if maxsize <= 0:
        raise ValueError(f"maxsize must be positive, got {maxsize}")
    buffer: queue.Queue[tuple[int, object]] = queue.Queue(maxsize)
    stop = threading.Event()

    def put(entry: tuple[int, object]) -> bool:
        while not stop.is_set():
            try:
                buffer.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put((_ITEM, item)):
                    return
            put((_END, None))
        except BaseException as error:
            put((_ERROR, error))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # runs the generator's cleanup in its own thread
                close()

    producer = threading.Thread(target=produce, name="malmm-prefetch", daemon=True)
    producer.start()
    try:
        while True:
            kind, value = buffer.get()
            if kind == _ITEM:
                yield value
            elif kind == _ERROR:
                raise value
            else:
                return
    finally:
        stop.set()
        producer.join()
