"""Live test streams over loopback: a thread that sends MPEG-TS in real time, to a UDP address or
a file it appends to, and free local ports. Nothing leaves 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
import numpy as np

SIZE = (64, 48)


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def mpegts_bytes(path: Path, seconds: float, fps: int = 10) -> Path:
    """A whole MPEG-TS file of `seconds`, written at once (for standard input)."""
    _send(str(path), seconds, fps, realtime=False, stop=threading.Event())
    return path


class Sender(threading.Thread):
    """Sends `seconds` of MPEG-TS at `fps` in real time to `target` (udp://127.0.0.1:PORT or a file
    path, appended packet by packet). stop() ends it early. codec "h264" sends H.264 as cameras do,
    a keyframe every `gop` frames, without encoder delay."""

    def __init__(self, target: str | Path, seconds: float, fps: int = 10, codec: str = "mpeg2video",
                 gop: int | None = None):  # fmt: skip
        super().__init__(daemon=True)
        self.target, self.seconds, self.fps, self.codec, self.gop = str(target), seconds, fps, codec, gop
        self._stop_sending = threading.Event()

    def run(self) -> None:
        _send(self.target, self.seconds, self.fps, realtime=True, stop=self._stop_sending, codec=self.codec,
              gop=self.gop)  # fmt: skip

    def stop(self) -> None:
        self._stop_sending.set()
        self.join(10)


def write_frames(output: av.container.OutputContainer, pictures: Iterable[np.ndarray], fps: int = 10,
                 codec: str = "mpeg2video", gop: int | None = None) -> None:  # fmt: skip
    """Encode RGB pictures [H, W, 3] as one video stream of `output` at `fps` (a keyframe every
    `gop` frames, else the codec's default), and close it."""
    stream = None
    # H.264 as a camera sends it: each frame sent as it is encoded, keyframes only every `gop` frames
    options = {"tune": "zerolatency", "x264-params": "scenecut=0"} if codec in ("h264", "libx264") else {}
    try:
        for index, picture in enumerate(pictures):
            if stream is None:
                stream = output.add_stream(codec, rate=fps, options=options)
                if gop is not None:
                    stream.codec_context.gop_size = gop
                stream.height, stream.width = picture.shape[:2]
                stream.pix_fmt = "yuv420p"
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = index
            output.mux(stream.encode(frame))
        if stream is not None:
            output.mux(stream.encode())
    finally:
        output.close()


def _send(target: str, seconds: float, fps: int, realtime: bool, stop: threading.Event, codec: str = "mpeg2video",
          gop: int | None = None) -> None:  # fmt: skip
    url = f"{target}?pkt_size=1316" if target.startswith("udp://") else target
    output = av.open(url, mode="w", format="mpegts", options={"flush_packets": "1"})
    started = time.monotonic()

    def pictures() -> Iterator[np.ndarray]:
        for index in range(round(seconds * fps)):
            if stop.is_set():
                return
            if realtime:  # frame `index` is due at index / fps
                time.sleep(max(0.0, started + index / fps - time.monotonic()))
            yield np.full((SIZE[1], SIZE[0], 3), (index * 9) % 256, np.uint8)

    write_frames(output, pictures(), fps, codec, gop)
