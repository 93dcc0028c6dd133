"""Test media made on the fly: tiny videos whose frames carry their own index, and broken files.

Every frame of `make_video` draws its display-order index as a 16-bit barcode of black and white
cells across the top of the picture, so a test can tell exactly which frame a reader returned
(`read_barcode`). Files are written with PyAV (its FFmpeg has the encoders) in codecs that OpenCV's
own FFmpeg decodes: h264, hevc, vp9, mpeg4, mjpeg. `av1` is written too, but OpenCV's bundled
FFmpeg has no software AV1 decoder, which makes it the honest example of an unsupported codec.
"""

from __future__ import annotations

import bisect
import random
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

BARCODE_BITS = 16  # frames 0 .. 65535
_COLUMNS = 8  # cells per barcode row; 2 rows
_MS = Fraction(1, 1000)  # time base for variable frame rate files: pts in milliseconds

# codec name -> (FFmpeg encoder, pixel format, encoder options)
_ENCODERS = {
    "h264": ("libx264", "yuv420p", {"preset": "veryfast"}),
    "hevc": ("libx265", "yuv420p", {"preset": "superfast", "x265-params": "log-level=error"}),
    "vp9": ("libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8"}),
    "av1": ("libsvtav1", "yuv420p", {"preset": "12"}),
    "mpeg4": ("mpeg4", "yuv420p", {"qscale": "3"}),
    "mjpeg": ("mjpeg", "yuvj420p", {}),
}


def _barcode_cells(width: int, height: int) -> tuple[int, int]:
    """Cell size (w, h) in pixels: 8 cells per row, 2 rows, cells at most a sixth of the height."""
    cell_w = width // _COLUMNS
    return cell_w, max(4, min(cell_w, height // 6))


def draw_barcode(luma: np.ndarray, index: int) -> None:
    """Write `index` into the top rows of a (H, W) luma plane, in place; bit 0 is the top-left cell."""
    height, width = luma.shape
    cell_w, cell_h = _barcode_cells(width, height)
    for bit in range(BARCODE_BITS):
        row, col = divmod(bit, _COLUMNS)
        value = 235 if (index >> bit) & 1 else 16
        luma[row * cell_h : (row + 1) * cell_h, col * cell_w : (col + 1) * cell_w] = value


def read_barcode(image: np.ndarray) -> int:
    """The frame index drawn by `draw_barcode`, from an image in its stored (unrotated) orientation.

    image: (H, W, 3) RGB or BGR, or (H, W) gray, uint8. Each cell is read from its central half, so
    compression blur at the cell edges does not matter; only those pixels are read (fast at 1080p).
    """
    height, width = image.shape[:2]
    cell_w, cell_h = _barcode_cells(width, height)
    index = 0
    for bit in range(BARCODE_BITS):
        row, col = divmod(bit, _COLUMNS)
        top, left = row * cell_h + cell_h // 4, col * cell_w + cell_w // 4
        cell = image[top : top + max(1, cell_h // 2), left : left + max(1, cell_w // 2)]
        if cell.mean() > 128:
            index |= 1 << bit
    return index


def vfr_times(seconds: float, fps: float, seed: int = 0) -> list[float]:
    """Frame times (s) of a variable-rate clip: `fps` for the first third, fps / 2 for the second,
    then irregular durations of 0.5 to 3 frame periods, like a phone dropping frames."""
    rng = random.Random(seed)
    times, t = [], 0.0
    while t < seconds - 1e-9:
        times.append(t)
        if t < seconds / 3:
            t += 1 / fps
        elif t < 2 * seconds / 3:
            t += 2 / fps
        else:
            t += rng.choice([0.5, 1.0, 2.0, 3.0]) / fps
    return times


def _pictures(size: tuple[int, int], count: int, noise: int, seed: int) -> Iterator[np.ndarray]:
    """(H * 3 / 2, W) yuv420p pictures: a diagonal pattern drifting right, temporal noise, barcode."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0 : width + 256]
    texture = (128 + 60 * np.sin((x + y) / 9.0) * np.cos(y / 17.0)).astype(np.int16)  # [H, W + 256]
    # A few noise fields reused in turn: cheap to make, and x264's single reference frame (veryfast)
    # cannot predict one from another, so the bitrate stays that of a noisy camera.
    fields = [rng.integers(-noise, noise + 1, (height, width), dtype=np.int16) for _ in range(7)] if noise else []
    chroma = np.full((height // 2, width), 128, np.uint8)  # U and V planes, stacked as yuv420p expects
    for index in range(count):
        shift = (2 * index) % 256
        luma = texture[:, shift : shift + width]
        if fields:
            luma = luma + fields[index % len(fields)]
        luma = np.clip(luma, 0, 255).astype(np.uint8)
        draw_barcode(luma, index)
        yield np.concatenate([luma, chroma])


def make_video(
    path: Path,
    seconds: float = 3.0,
    fps: float = 10.0,
    size: tuple[int, int] = (64, 48),
    codec: str = "h264",
    vfr: bool = False,
    rotate: int = 0,
    keyint: int | None = None,
    faststart: bool = True,
    noise: int = 6,
    crf: int | None = None,
    seed: int = 0,
    times: Sequence[float] | None = None,
) -> Path:
    """Write a clip whose frame i shows barcode i; the container follows the suffix (.mp4, .mkv, .webm...).

    size: (W, H) as stored, even numbers. vfr: real irregular timestamps (`vfr_times`), ms time base;
    times: explicit frame times in seconds instead (gaps, pauses), ms time base; `seconds` is then unused.
    rotate: clockwise degrees a player must turn the picture (display matrix), like a phone's
    "rotate" tag; OpenCV then returns (W, H) pictures. keyint: frames between keyframes (encoder
    default otherwise). faststart: MP4 index (moov) before the data.
    """
    path = Path(path)
    encoder, pix_fmt, options = _ENCODERS[codec]
    options = dict(options)
    if crf is not None:
        options["crf"] = str(crf)
    timed = vfr or times is not None
    if times is None:
        times = vfr_times(seconds, fps, seed) if vfr else [i / fps for i in range(round(seconds * fps))]
    rate = Fraction(fps).limit_denominator(1001)
    container_options = {"movflags": "+faststart"} if faststart and path.suffix in (".mp4", ".mov", ".m4v") else {}
    with av.open(str(path), "w", options=container_options) as container:
        stream = container.add_stream(encoder, rate=rate, options=options)
        stream.width, stream.height = size
        stream.pix_fmt = pix_fmt
        if keyint is not None:
            stream.codec_context.gop_size = keyint
        if timed:
            stream.codec_context.time_base = _MS
            stream.time_base = _MS
        if rotate % 360:
            if not hasattr(stream, "set_display_rotation"):
                raise RuntimeError(f"PyAV {av.__version__} cannot write a display matrix: rotated clips need av>=18.1")
            stream.set_display_rotation(-rotate)  # PyAV counts counter-clockwise
        for index, picture in enumerate(_pictures(size, len(times), noise, seed)):
            frame = av.VideoFrame.from_ndarray(picture, format="yuv420p")
            if pix_fmt != "yuv420p":
                frame = frame.reformat(format=pix_fmt)
            if timed:
                frame.pts, frame.time_base = round(times[index] * 1000), _MS
            else:
                frame.pts, frame.time_base = index, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def frame_times(path: Path) -> list[float]:
    """Display times (s) of every video frame, from the packets (no decoding), on OpenCV's clock:
    seconds since the stream's start time, in display order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None)
        return [float((value - start) * stream.time_base) for value in pts]  # stream is freed on close


def keyframe_times(path: Path) -> list[float]:
    """Times (s, OpenCV's clock) of the keyframes: where decoding can restart after damage."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.is_keyframe)
        return [float((value - start) * stream.time_base) for value in pts]


def byte_offset(path: Path, time: float) -> int:
    """Where in the file the compressed data of the frame shown at `time` (s) begins."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        packets = [
            (abs(float((p.pts - start) * stream.time_base) - time), p.pos)
            for p in container.demux(stream)
            if p.pts is not None
        ]
        return min(packets)[1]


def times_in_bytes(path: Path, first: int, end: int) -> list[float]:
    """Times (s) of the frames whose compressed data overlaps bytes [first, end) of the file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        start = stream.start_time or 0
        pts = sorted(
            p.pts for p in container.demux(stream) if p.pts is not None and p.pos < end and p.pos + p.size > first
        )
        return [float((value - start) * stream.time_base) for value in pts]


def expected_index(times: list[float], target: float) -> int:
    """Index of the frame on screen at `target`, the frame a reader must return: the last frame at or
    before it (1 ms slack), or the first frame when `target` comes before it. `times` ascending."""
    return max(0, bisect.bisect_right(times, target + 1e-3) - 1)


def make_audio_only(path: Path, seconds: float = 1.0) -> Path:
    """An AAC track in an .m4a (or any suffix's) container: a 440 Hz tone, no video stream."""
    path = Path(path)
    sample_rate, frame_size = 44100, 1024
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        samples = np.sin(2 * np.pi * 440 * np.arange(int(seconds * sample_rate)) / sample_rate).astype(np.float32)
        for start in range(0, len(samples) - frame_size + 1, frame_size):
            frame = av.AudioFrame.from_ndarray(samples[None, start : start + frame_size], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def remux(src: Path, dst: Path, faststart: bool) -> Path:
    """Copy the video stream of `src` into `dst` without re-encoding, index at front or at the end."""
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(src)) as source, av.open(str(dst), "w", options=options) as target:
        stream_in = source.streams.video[0]
        stream_out = target.add_stream_from_template(stream_in)
        for packet in source.demux(stream_in):
            if packet.dts is None:  # the flush packet at the end
                continue
            packet.stream = stream_out
            target.mux(packet)
    return Path(dst)


def remux_with_offset(src: Path, dst: Path, offset: float) -> Path:
    """`src`'s video stream in `dst` (say .mkv) with every timestamp `offset` seconds later, as
    recordings cut from a longer stream often are."""
    with av.open(str(src)) as source, av.open(str(dst), "w") as target:
        stream_in = source.streams.video[0]
        stream_out = target.add_stream_from_template(stream_in)
        shift = round(offset / stream_in.time_base)
        for packet in source.demux(stream_in):
            if packet.dts is None:
                continue
            packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
            packet.stream = stream_out
            target.mux(packet)
    return Path(dst)


_TAG = "malmm-cafe-tag"  # written as ASCII, then "cafe" becomes Latin-1 "café"


def with_tags_not_utf8(src: Path, dst: Path) -> Path:
    """`src`'s video stream in `dst` (.mp4, .mkv...) with a title and a handler name in Latin-1, not
    UTF-8 (b"caf\\xe9"), as old cameras and editors write them. Written as ASCII and the bytes then
    changed in place, since PyAV before 19 writes tags strictly as UTF-8 and PyAV 19 takes no
    encoding argument."""
    with av.open(str(src)) as source, av.open(str(dst), "w") as target:
        target.metadata["title"] = _TAG
        stream_in = source.streams.video[0]
        stream_out = target.add_stream_from_template(stream_in)
        stream_out.metadata["handler_name"] = _TAG
        for packet in source.demux(stream_in):
            if packet.dts is None:
                continue
            packet.stream = stream_out
            target.mux(packet)
    data = Path(dst).read_bytes()
    if data.count(_TAG.encode()) != 2:
        raise RuntimeError(
            f"{dst}: expected the title and the handler name in the file, found {data.count(_TAG.encode())}"
        )
    Path(dst).write_bytes(data.replace(b"cafe-tag", b"caf\xe9-tag"))  # same length: no box or element resized
    return Path(dst)


def mux_two_videos(first: Path, second: Path, dst: Path) -> Path:
    """One container holding the video streams of `first` and `second` (a longer second stream
    makes the container's duration that of the second)."""
    with av.open(str(first)) as one, av.open(str(second)) as two, av.open(str(dst), "w") as target:
        pairs = [(source, target.add_stream_from_template(source.streams.video[0])) for source in (one, two)]
        for source, stream_out in pairs:  # every stream exists before the first packet is muxed
            for packet in source.demux(source.streams.video[0]):
                if packet.dts is None:
                    continue
                packet.stream = stream_out
                target.mux(packet)
    return Path(dst)


def make_still_image(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    """A PNG or JPEG (by suffix) with barcode 0 on it."""
    picture = next(_pictures(size, 1, 6, 0))
    cv2.imwrite(str(path), cv2.cvtColor(picture, cv2.COLOR_YUV2BGR_I420))
    return Path(path)


def make_truncated(src: Path, dst: Path, keep_fraction: float, faststart: bool) -> Path:
    """`src` (MP4) cut after `keep_fraction` of its bytes, like a recording interrupted mid-write.

    faststart=True: the index (moov) sits before the data and survives, so the file opens and the
    frames before the cut decode. faststart=False: the index was due at the end and is lost.
    """
    with tempfile.TemporaryDirectory() as scratch:
        whole = remux(src, Path(scratch) / "whole.mp4", faststart)
        data = whole.read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * keep_fraction)])
    return Path(dst)


def make_garbage_middle(src: Path, dst: Path, at_fraction: float, nbytes: int, seed: int = 0) -> Path:
    """`src` with `nbytes` of random bytes written over it at `at_fraction` of the file (same size)."""
    data = bytearray(Path(src).read_bytes())
    start = int(len(data) * at_fraction)
    end = min(len(data), start + nbytes)
    data[start:end] = np.random.default_rng(seed).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


def make_unsupported_codec(path: Path, fourcc: bytes = b"QZX9") -> Path:
    """An AVI whose video stream declares a codec no FFmpeg knows.

    OpenCV's VideoWriter writes a real MJPG AVI; the codec tag in its headers (the stream header's
    handler and the bitmap header's compression field, both before the 'movi' data) is then
    replaced, as if the file came from a camera with a proprietary codec.
    """
    path = Path(path)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    if not writer.isOpened():
        raise RuntimeError("OpenCV cannot write MJPG AVI files")
    for index in range(10):
        writer.write(np.full((48, 64, 3), 20 * index, np.uint8))
    writer.release()
    data = path.read_bytes()
    header_end = data.index(b"movi")
    header = data[:header_end]
    if header.count(b"MJPG") != 2:
        raise RuntimeError(f"unexpected AVI header: {header.count(b'MJPG')} MJPG tags")
    path.write_bytes(header.replace(b"MJPG", fourcc) + data[header_end:])
    return path


def make_text_file(path: Path) -> Path:
    """A text file, whatever its name says (for example notes.mp4)."""
    Path(path).write_text("These are meeting notes, not a video.\n" * 20)
    return Path(path)


def make_empty_file(path: Path) -> Path:
    Path(path).write_bytes(b"")
    return Path(path)


def copy_as(src: Path, dst: Path) -> Path:
    """A copy under another name (or suffix), for example a video named .txt."""
    shutil.copyfile(src, dst)
    return Path(dst)


SCENE_COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def make_scene(path: Path, colour: str, seed: int, seconds: float = 2.0, fps: float = 8.0, size: int = 32) -> Path:
    """A clip for learning tests: a background of `colour` (SCENE_COLOURS) with moving distractor
    shapes of other colours, their number, sizes, paths and colours drawn from `seed`."""
    draw = random.Random(seed)
    background = np.array(SCENE_COLOURS[colour], dtype=np.int16)
    shapes = []
    for _ in range(draw.randint(1, 3)):
        side = draw.randint(size // 6, size // 3)
        start = [draw.uniform(0, size - side), draw.uniform(0, size - side)]
        speed = [draw.uniform(-3, 3), draw.uniform(-3, 3)]
        shapes.append((side, start, speed, [draw.randint(0, 255) for _ in range(3)]))
    with av.open(str(path), "w") as container:
        stream = container.add_stream(
            "libx264", rate=Fraction(fps).limit_denominator(1001), options={"preset": "veryfast"}
        )
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(round(seconds * fps)):
            shade = np.clip(background + draw.randint(-15, 15), 0, 255)
            picture = np.broadcast_to(shade, (size, size, 3)).astype(np.uint8).copy()
            for side, (x, y), (dx, dy), rgb in shapes:
                left, top = int(x + dx * index) % (size - side), int(y + dy * index) % (size - side)
                picture[top : top + side, left : left + side] = rgb
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = index, 1 / stream.average_rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_scenes(
    path: Path, colours: list[str], seed: int, seconds: float = 2.0, fps: float = 8.0, size: int = 32
) -> Path:
    """One video of scenes in a row (find's tests): `seconds` of each colour of `colours`, drawn as
    `make_scene` draws a scene (its own distractor shapes each), so scene i spans
    [i * seconds, (i + 1) * seconds)."""
    parts = [path.with_name(f".{path.stem}-{i}.mp4") for i in range(len(colours))]
    for i, (part, colour) in enumerate(zip(parts, colours, strict=True)):
        make_scene(part, colour, seed=seed * 100 + i, seconds=seconds, fps=fps, size=size)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(
            "libx264", rate=Fraction(fps).limit_denominator(1001), options={"preset": "veryfast"}
        )
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        index = 0
        for part in parts:
            with av.open(str(part)) as source:
                for frame in source.decode(video=0):
                    picture = frame.to_ndarray(format="rgb24")
                    out = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
                    out.pts, out.time_base = index, 1 / stream.average_rate
                    container.mux(stream.encode(out))
                    index += 1
            part.unlink()
        container.mux(stream.encode(None))
    return path
