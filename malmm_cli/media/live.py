"""Live sources for `malmm watch`, as timed frames: cameras, network streams, files still being
written, stdin. No torch: what the model makes of a frame is the caller's `prepare` (reading/live.py).

A live frame's way: `LiveReader` runs a thread that reads the source as fast as it delivers
(so a live source never backs up), gives every frame a stream time (`StreamClock`), keeps the
frames of the `--fps` grid (`FpsSampler`), prepares them (`prepare`: preprocessing, in this
thread) and puts them in a small buffer. When the buffer is full the oldest waiting frame is
dropped and counted: the reader keeps up with the source by reading fewer frames, never by
queueing without end. `parse_source`, `check_source` and `check_stdin` say what SOURCE is, and
whether it can be watched, before a model loads.

Network streams, stdin and files are read with PyAV (FFmpeg): it gives each frame the stream's
own timestamp, takes open and read timeouts, reads stdin and follows a growing file (FFmpeg's
file protocol with `follow=1`). Cameras are read with OpenCV's V4L2 backend (this PyAV build has
no V4L2 input).
"""

from __future__ import annotations

import math
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar
from urllib.parse import urlsplit

from malmm_cli.media.plans import VideoError
from malmm_cli.wording import counted

if TYPE_CHECKING:  # frames are numpy arrays, made by the decoders (PyAV, OpenCV) when a stream opens
    import numpy as np

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "rtp", "srt")
BACKWARD_SLACK = 1e-3  # s: timestamps this much earlier than the last still count as in order
LARGEST_JUMP = 10.0  # s: a timestamp this far ahead of the clock's own progress is a discontinuity
BACKOFF_LIMIT = 30.0  # s: the longest wait between reconnect attempts

Prepared = TypeVar("Prepared")  # what `prepare` makes of a decoded frame (the model's pixels)


class SourceError(VideoError):
    """A live source that cannot be opened or read; str(error) is a one-line reason."""


@dataclass(frozen=True)
class Source:
    """What SOURCE names: kind is "network", "camera", "file" or "stdin"; location is the URL,
    the device, the file or "-". follow: a file still being written, read like `tail -f`."""

    kind: str
    location: str
    follow: bool = False

    @property
    def reconnects(self) -> bool:
        """Whether a lost connection is worth opening again (a file or a pipe that ends has ended)."""
        return self.kind in ("network", "camera")

    @property
    def live(self) -> bool:
        """Whether the source sends in real time, so that its end cannot be told from a lost
        sender: RTSP, UDP, TCP... and cameras. Over HTTP(S) an end is an end (an HLS playlist
        that ends, a file on a server): opening it again would read it again from its start;
        there errors and silence still reconnect."""
        return self.kind == "camera" or (self.kind == "network" and not self.location.lower().startswith("http"))

    @property
    def display(self) -> str:
        """The location without a password (for messages)."""
        parts = urlsplit(self.location)
        if parts.password is None:
            return self.location
        return parts._replace(
            netloc=f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        ).geturl()


def parse_source(text: str) -> Source:
    """SOURCE as typed: `-`, a URL, a camera (`0`, `/dev/video0`) or a file; SourceError if none."""
    if text == "-":
        return Source("stdin", "-")
    scheme = urlsplit(text).scheme.lower()
    if scheme in NETWORK_SCHEMES:
        return Source("network", text)
    if text.isdigit():
        return Source("camera", f"/dev/video{text}")
    if text.startswith("/dev/video"):
        return Source("camera", text)
    if scheme == "file":
        text = urlsplit(text).path
    elif "://" in text:
        raise SourceError(f"{text}: {scheme}:// is not a stream malmm reads ({', '.join(NETWORK_SCHEMES)})")
    path = Path(text)
    if not path.exists():
        raise SourceError(f"{text}: no such file, and not a URL, a camera or -")
    if not path.is_file():
        raise SourceError(f"{text}: not a file")
    return Source("file", text, follow=_followable(path))


def check_source(source: Source, timeout: float) -> None:
    """Open a stream that malmm connects to, or a camera, once and close it again: SourceError if
    it cannot be opened, so that a wrong address is said before a model loads. Sources that wait
    for a sender (udp://, rtp://, a `listen` URL) are not opened, since the sender may start
    later, nor files (parse_source checked them) or stdin (opening it would read it)."""
    if source.kind == "camera":
        _Camera(source, timeout).close()
    elif source.kind == "network" and not _waits_for_sender(source.location):
        _Connection(source, timeout).close()


STDIN_HEAD_LIMIT = 1 << 20  # bytes read ahead of FFmpeg at most, to tell an unreadable MP4 from a stream
STDIN_ADVICE = "MPEG-TS: ffmpeg -i IN -c copy -f mpegts - | malmm watch -"


def check_stdin(fd: int = 0) -> None:
    """Read the first bytes of standard input and say now, before a model loads, when they cannot
    be watched: a terminal (nothing piped in), or an MP4 whose index (moov) comes after its data,
    which a pipe cannot seek back to (FFmpeg would fail once the model had loaded). What was read
    is handed on unchanged: fd 0 becomes a pipe that a thread fills with it and the rest."""
    if os.isatty(fd):
        raise SourceError(f"standard input is a terminal: pipe a stream in ({STDIN_ADVICE})")
    head, verdict = b"", None
    while verdict is None and len(head) < STDIN_HEAD_LIMIT:
        try:
            chunk = os.read(fd, 1 << 16)
        except OSError as error:  # closed (`<&-`), or not readable
            raise SourceError(f"standard input cannot be read: {error.strerror or error}") from None
        if not chunk:
            break
        head += chunk
        verdict = _mp4_verdict(head)
    if verdict:
        raise SourceError(f"standard input {verdict}: send {STDIN_ADVICE}, or watch the file itself (malmm watch FILE)")
    _replay(head, fd)


def _mp4_verdict(head: bytes) -> str | None:
    """Why these first bytes of a pipe cannot be read, "" when they can, None when more are needed:
    only an MP4 (ftyp) whose mdat comes before its moov is refused."""
    if len(head) < 8:
        return None
    if head[4:8] != b"ftyp":
        return ""  # MPEG-TS and the like are read in order
    offset = 0
    while offset + 16 <= len(head):
        size, kind = struct.unpack(">I4s", head[offset : offset + 8])
        if kind == b"moov":
            return ""  # index first (faststart, fragmented): read in order
        if kind == b"mdat":
            return "is an MP4 whose index comes after its data, which a pipe cannot give before the end"
        if size == 1:
            size = struct.unpack(">Q", head[offset + 8 : offset + 16])[0]
        if size < 8:
            return ""  # not boxes after all: FFmpeg says what it is
        offset += size
    return None


def _replay(head: bytes, fd: int) -> None:
    """Make fd a pipe that gives `head` and then the rest of what fd gave (a daemon thread copies)."""
    source = os.dup(fd)
    read_end, write_end = os.pipe()
    os.dup2(read_end, fd)
    os.close(read_end)

    def copy() -> None:
        try:
            data = head
            while data:
                view = memoryview(data)
                while view:
                    view = view[os.write(write_end, view) :]
                data = os.read(source, 1 << 16)
        except OSError:
            pass  # the reader went away (the run stopped): nothing to hand on
        finally:
            os.close(write_end)
            os.close(source)

    threading.Thread(target=copy, name="malmm-stdin", daemon=True).start()


def _waits_for_sender(location: str) -> bool:
    parts = urlsplit(location)
    return parts.scheme.lower() in ("udp", "rtp") or "listen" in parts.query.lower()


def _followable(path: Path) -> bool:
    """Whether a file is read while it is written (followed): MPEG-TS, Matroska/WebM and the like,
    and fragmented MP4. A plain MP4 cannot be read before its index (moov box) is written, which
    a recorder does when it stops: one without it is refused, one with it is complete and read
    to its end."""
    with open(path, "rb") as file:
        head = file.read(12)
    if head[4:8] != b"ftyp":
        return True  # read in order, whatever has been written so far
    boxes = dict(_boxes(path, 0, path.stat().st_size))
    if "moov" not in boxes:
        raise SourceError(
            f"{path}: a plain MP4 cannot be read before its index is written (when recording stops): record "
            "MPEG-TS (-f mpegts) or fragmented MP4 (-movflags frag_keyframe+empty_moov) to watch it as it grows"
        )
    start, end = boxes["moov"]
    return "moof" in boxes or "mvex" in dict(_boxes(path, start + 8, end))  # mvex: fragments follow


def _boxes(path: Path, offset: int, end: int) -> Iterator[tuple[str, tuple[int, int]]]:
    """(name, (start, end)) of the MP4 boxes from `offset` to `end` (box headers only)."""
    with open(path, "rb") as file:
        while offset + 8 <= end:
            file.seek(offset)
            header = file.read(16)
            size, kind = struct.unpack(">I4s", header[:8])
            if size == 1 and len(header) == 16:  # a 64-bit size follows
                size = struct.unpack(">Q", header[8:])[0]
            elif size == 0:  # the box runs to the end
                size = end - offset
            if size < 8:
                return
            yield kind.decode("latin-1"), (offset, min(offset + size, end))
            offset += size


class StreamClock:
    """Stream time in seconds from the first frame: the source's own timestamps where it has them,
    else the time the frame arrived. It never goes backwards: a source that restarts its
    timestamps (a reconnect, a restarted sender, a wrap) goes on from where the clock was, plus the
    time that passed.

    paced: the source sends in real time (a network stream, a camera), so the time that passed is
    measured from when it was last on pace, the earliest any frame arrived for its stream time, not
    from the last arrival: a decoder hands its last frames over only when a read times out, so a
    lost stream's last frames arrive `--timeout` late. A file or a pipe is read at the reader's
    pace: there the time that passed is that since the last frame.
    """

    def __init__(self, now: Callable[[], float] = time.monotonic, paced: bool = False):
        self.now, self.paced = now, paced
        self.offset: float | None = None  # stream time = timestamp + offset
        self.last: float | None = None
        self.last_arrival = 0.0
        self.on_pace = math.inf  # least (arrival - stream time) so far: when stream time 0 was, on pace

    def time(self, timestamp: float | None) -> float:
        arrival = self.now()
        passed = 0.0 if self.last is None else arrival - self.last_arrival
        if self.last is None:
            resumed = 0.0  # where a new run of timestamps starts
        elif self.paced:
            resumed = max(self.last, arrival - self.on_pace)
        else:
            resumed = self.last + passed
        if timestamp is None or not math.isfinite(timestamp):
            current = resumed
        else:
            current = None if self.offset is None else timestamp + self.offset
            went_back = current is not None and current < self.last - BACKWARD_SLACK
            if current is None or went_back or current > self.last + passed + LARGEST_JUMP:
                self.offset = resumed - timestamp
                current = timestamp + self.offset
            current = max(current, self.last if self.last is not None else 0.0)
        self.last, self.last_arrival = current, arrival
        self.on_pace = min(self.on_pace, arrival - current)
        return current

    def discontinue(self) -> None:
        """The next timestamp starts a new run (after a reconnect): anchor it to the clock."""
        self.offset = None


class FpsSampler:
    """Keeps frames on a grid of `fps` per second from the first frame's time: the first frame at
    or after each grid time (1 ms early still counts), one per slot; a gap in the stream skips the
    slots it covered. The slot number is the frame's place in the stream's plan (its position),
    so frames dropped or lost in a gap leave their positions unused, as in a file."""

    SLACK = 1e-3  # s

    def __init__(self, fps: float):
        self.fps = fps
        self.start: float | None = None
        self.last_slot = -1

    def slot(self, seconds: float) -> int | None:
        """The grid slot this frame fills, or None when its slot is filled already."""
        if self.start is None:
            self.start = seconds
        slot = math.floor((seconds - self.start + self.SLACK) * self.fps)
        if slot <= self.last_slot:
            return None
        self.last_slot = slot
        return slot


@dataclass
class LiveFrame(Generic[Prepared]):
    """A frame kept: its slot on the --fps grid (its place in the stream's plan), its stream time
    (s) and what `prepare` made of it."""

    slot: int
    time: float
    pixels: Prepared


@dataclass
class LiveStats:
    """What the reader has done so far (read by the status line and the events)."""

    decoded: int = 0  # frames the source delivered
    sampled: int = 0  # of those, frames on the --fps grid
    dropped: int = 0  # sampled frames dropped because the model was behind
    read: int = 0  # sampled frames the model read
    reconnects: int = 0  # reconnect attempts made
    newest: float = 0.0  # stream time of the newest frame delivered
    newest_read: float = 0.0  # stream time of the newest frame the model took
    behind: float = 0.0  # s the reader is behind a live source's pace (arrival clock minus stream time)
    first_arrival: float = 0.0  # time.monotonic() of the first frame
    started: float = field(default_factory=time.monotonic)


class _Connection:
    """One opening of a source with PyAV: frames as (timestamp or None, convert to RGB)."""

    def __init__(self, source: Source, timeout: float):
        import av

        # Probe half a second of data, not FFmpeg's 5 s and 20 frames for the rate: a live source's
        # first frames would otherwise arrive seconds late, in one burst.
        options, location = {"analyzeduration": "500000", "fpsprobesize": "0"}, source.location
        if source.kind == "stdin":
            location, read_timeout = "pipe:0", None  # a quiet pipe is not a lost one
        else:
            read_timeout = timeout
        if source.kind == "file" and source.follow:
            options |= {"follow": "1", "seekable": "0"}  # read on at the end; never seek (the end moves)
        if source.location.lower().startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = "tcp"  # no lost packets on a lossy network
        if source.location.lower().startswith("udp://"):
            options["overrun_nonfatal"] = "1"
        from malmm_cli.media.probe import open_input  # PyAV, loaded when a stream is opened

        try:
            self.container = open_input(location, options=options, timeout=(timeout, read_timeout))
        except av.error.ExitError:
            raise SourceError(f"no answer within {timeout:g} s") from None
        except (av.error.FFmpegError, OSError) as error:
            raise SourceError(_reason(error)) from None
        if not self.container.streams.video:
            self.container.close()
            raise SourceError("it has no video stream")
        self.follow, self.timeout = source.follow, timeout
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"

    def frames(self) -> Iterator[tuple[float | None, Callable[[], np.ndarray]]]:
        """Decoded frames as they arrive. A packet the decoder refuses is skipped, as ffmpeg does:
        a stream joined while it plays starts mid-GOP (often with no picture size known yet, the
        probe being short), and its packets cannot be decoded until the next keyframe. Only when
        nothing decodes for `timeout` s is the stream failed, with the decoder's reason."""
        import av

        refused_since: float | None = None  # when the decoder began refusing every packet
        try:
            for packet in self.container.demux(self.stream):
                try:
                    decoded = packet.decode()
                except av.error.InvalidDataError as error:
                    now = time.monotonic()
                    refused_since = now if refused_since is None else refused_since
                    if now - refused_since > self.timeout:
                        raise SourceError(
                            f"nothing could be decoded for {self.timeout:g} s ({_reason(error)})"
                        ) from None
                    continue
                if decoded:
                    refused_since = None
                for frame in decoded:
                    yield frame.time, lambda frame=frame: frame.to_ndarray(format="rgb24")
        except av.error.ExitError:
            if self.follow:  # a followed file that stopped growing has ended
                return
            raise SourceError("no data within the timeout") from None
        except av.error.EOFError:
            return
        except (av.error.FFmpegError, OSError) as error:
            raise SourceError(_reason(error)) from None

    def close(self) -> None:
        self.container.close()


class _Camera:
    """One opening of a camera with OpenCV's V4L2 backend."""

    def __init__(self, source: Source, timeout: float):
        import cv2

        if not Path(source.location).exists():
            raise SourceError("no such camera")
        milliseconds = round(timeout * 1000)
        self.capture = cv2.VideoCapture(source.location, cv2.CAP_V4L2, [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, milliseconds, cv2.CAP_PROP_READ_TIMEOUT_MSEC, milliseconds])  # fmt: skip
        if not self.capture.isOpened():
            raise SourceError("the camera cannot be opened (in use, or no permission?)")

    def frames(self) -> Iterator[tuple[float | None, Callable[[], np.ndarray]]]:
        import cv2

        while self.capture.grab():
            milliseconds = self.capture.get(cv2.CAP_PROP_POS_MSEC)
            yield (milliseconds / 1000 if milliseconds > 0 else None), self._retrieve

    def _retrieve(self) -> np.ndarray:
        import cv2

        ok, image = self.capture.retrieve()
        if not ok:
            raise SourceError("the camera delivered a frame that cannot be converted")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self.capture.release()


def _reason(error: Exception) -> str:
    """FFmpeg's reason without the path it repeats."""
    return getattr(error, "strerror", None) or str(error)


class LiveReader(Generic[Prepared]):
    """The thread that reads a live source: stream clock, --fps sampling, a bounded buffer that
    drops the oldest frame when full, reconnects with back-off. Frames come out of `take`.

    A file (finished or still being written) is read at the model's pace instead: its reader waits
    for room in the buffer, so none of it is dropped.

    prepare: a decoded RGB frame -> what the model reads (preprocessing, in this thread).
    duration: stop after this much stream time. reconnect: attempts in a row after a network
    source or camera is lost (counted afresh once frames flow again); the first opening is not
    retried, so a wrong address is said at once. notify: one line per event worth telling
    (a lost connection, each reconnect attempt).
    """

    def __init__(
        self,
        source: Source,
        fps: float,
        prepare: Callable[[np.ndarray], Prepared],
        *,
        timeout: float = 10.0,
        reconnect: int = 5,
        duration: float | None = None,
        buffered: int = 4,
        notify: Callable[[str], None] = lambda line: None,
        open_connection: Callable[[Source, float], _Connection | _Camera] | None = None,
    ):
        self.source, self.prepare, self.timeout = source, prepare, timeout
        self.reconnect, self.duration, self.notify = reconnect, duration, notify
        self.open_connection = open_connection or (_Camera if source.kind == "camera" else _Connection)
        self.clock = StreamClock(paced=source.reconnects)
        self.sampler = FpsSampler(fps)
        self.stats = LiveStats()
        self.buffer: deque[LiveFrame[Prepared]] = deque()
        if buffered < 1:
            raise ValueError(f"buffered must be at least 1 frame, got {buffered}")
        self.buffered = buffered
        self.drops: deque[float] = deque()  # stream times of dropped frames not yet counted in an event
        self.reads: deque[float] = deque()  # stream times of frames read, likewise
        self.ended: str | None = None  # why reading stopped: "end", "duration", "stopped" or a failure
        self.failed = False  # whether it stopped on a failure (exit status 1)
        self.stopping = False  # set by stop() (from a signal handler too: a plain assignment)
        self._lock = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"malmm-watch {source.display}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop reading: `take` returns what is left, then nothing. Safe in a signal handler."""
        self.stopping = True

    def close(self, wait: float = 0.5) -> None:
        """Stop and wait for the thread, at most `wait` s: one blocked in opening or reading a silent
        source ends only at its timeout, and as a daemon it never holds the process up."""
        self.stop()
        if self._thread.is_alive():
            self._thread.join(wait)

    def take(self, most: int) -> list[LiveFrame[Prepared]]:
        """Up to `most` frames waiting, oldest first; waits for one; [] once reading has ended."""
        with self._lock:
            while not self.buffer and self.ended is None and not self.stopping:
                self._lock.wait(0.1)
            taken = [self.buffer.popleft() for _ in range(min(most, len(self.buffer)))]
            self._lock.notify_all()  # room in the buffer, for a file's reader that waits
            self.reads.extend(frame.time for frame in taken)
            self.stats.read += len(taken)
            if taken:
                self.stats.newest_read = taken[-1].time
            return taken

    def counts(self, end: float) -> tuple[int, int]:
        """(frames read, frames dropped) before stream time `end` since the last call: each event
        counts its interval's, and the drops of intervals that had no frame left to read out."""
        with self._lock:
            return _count_before(self.reads, end), _count_before(self.drops, end)

    def _run(self) -> None:
        attempts, connection, reason = 0, None, "end"
        try:
            while not self.stopping:
                try:
                    connection = self.open_connection(self.source, self.timeout)
                    for timestamp, image in connection.frames():
                        if self.stopping:
                            break
                        attempts = 0
                        if self._arrived(timestamp, image):
                            reason = "duration"
                            return
                    reason = "end"
                except SourceError as error:
                    if self.stats.decoded == 0 and attempts == 0:  # the first opening: say it at once
                        self._finish(str(error), failed=True)
                        return
                    reason = str(error)
                finally:
                    if connection is not None:
                        connection.close()
                        connection = None
                if self.stopping or not self.source.reconnects or (reason == "end" and not self.source.live):
                    return
                if attempts >= self.reconnect:  # an end is an end; an error, silence or failed attempts, a loss
                    if attempts:
                        reason = (
                            f"lost the stream ({_said(reason)}) and {counted(attempts, 'reconnect attempt')} failed"
                        )
                    self._finish(reason, failed=reason != "end")
                    return
                attempts += 1
                delay = min(BACKOFF_LIMIT, 2.0 ** (attempts - 1))
                self.notify(f"lost the stream ({_said(reason)}): reconnecting in {delay:g} s (attempt {attempts} of "
                            f"{self.reconnect})")  # fmt: skip
                self._sleep(delay)
                if self.stopping:
                    return
                self.clock.discontinue()
                self.stats.reconnects += 1
        except Exception as error:  # anything unforeseen ends the stream with its reason, not silently
            self._finish(f"reading stopped: {error}", failed=True)
        finally:
            stopped = self.stopping
            self._finish("stopped" if stopped else reason, failed=not stopped and reason not in ("end", "duration"))

    def _arrived(self, timestamp: float | None, image: Callable[[], np.ndarray]) -> bool:
        """One decoded frame: give it its stream time, keep it if it is on the grid. True when
        --duration is reached."""
        seconds = self.clock.time(timestamp)
        if self.stats.decoded == 0:
            self.stats.first_arrival = self.clock.last_arrival
        self.stats.decoded += 1
        if self.duration is not None and seconds >= self.duration - 1e-6:  # the slack of Grid.index
            return True
        self.stats.newest = seconds
        if self.source.live:  # how far reading is behind the source's own pace (decoding too slow?)
            self.stats.behind = max(0.0, (self.clock.last_arrival - self.stats.first_arrival) - seconds)
        slot = self.sampler.slot(seconds)
        if slot is None:
            return False
        frame = LiveFrame(slot, seconds, self.prepare(image()))
        self.stats.sampled += 1
        with self._lock:
            while self.source.kind == "file" and len(self.buffer) >= self.buffered and not self.stopping:
                self._lock.wait(0.1)  # a file waits for the model: nothing of it is lost
            if len(self.buffer) >= self.buffered:  # a live source does not wait: drop the oldest waiting frame
                self.drops.append(self.buffer.popleft().time)
                self.stats.dropped += 1
            self.buffer.append(frame)
            self._lock.notify_all()
        return False

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def _finish(self, reason: str, failed: bool = False) -> None:
        with self._lock:
            if self.ended is None:
                self.ended, self.failed = reason, failed
            self._lock.notify_all()


def _said(reason: str) -> str:
    return "it ended" if reason == "end" else reason


def _count_before(times: deque[float], end: float) -> int:
    """Pop and count the times before `end` (with the slack of Grid.index)."""
    count = 0
    while times and times[0] < end - 1e-6:
        times.popleft()
        count += 1
    return count
