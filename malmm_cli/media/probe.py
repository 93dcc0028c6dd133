"""Probing: whether a file is a video malmm can read, and its facts (`probe` -> VideoInfo).

PyAV probes, because it reports why a file cannot be read where OpenCV just says no; without PyAV
(a machine where it cannot be installed), probing falls back to OpenCV alone: the same facts,
plainer reasons. `check_readable` is the cheap part, run on every input before the model loads.
"""

from __future__ import annotations

import math
import os
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from malmm_cli.media.files import read_head
from malmm_cli.media.plans import VideoError, VideoInfo

if TYPE_CHECKING:  # OpenCV loads when a file is opened: a missing file or a bad option never needs it
    import cv2

try:
    import av
except ImportError:  # probing falls back to OpenCV (`_probe_with_opencv`)
    av = None


_MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid"}
_OTHER_CONTAINERS = (b"\x1a\x45\xdf\xa3", b"RIFF", b"FLV", b"OggS", b"\x00\x00\x01\xba")  # mkv/webm, avi, ...


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


def open_capture(path: Path) -> cv2.VideoCapture:
    """An OpenCV capture of the file. OpenCV takes a name as UTF-8 text and crashes the process
    on one that is not (a byte os.fsdecode could not decode): such a file is opened here and
    handed over by its descriptor's name, /proc/self/fd/N (/dev/fd/N elsewhere), which FFmpeg
    opens anew, so the descriptor is closed right after."""
    import cv2

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
    head = read_head(path)
    if av is None:
        return _probe_with_opencv(path, head)
    with _open_container(path, head) as container:
        stream = _video_stream(container)
        if stream.codec_context is None:  # FFmpeg does not know the codec tag at all
            raise VideoError("unsupported video codec (unknown to FFmpeg)")
        codec = stream.codec_context.codec.canonical_name

        import cv2

        capture = open_capture(path)
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
    head = read_head(path)
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
    import cv2

    capture = open_capture(path)
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
