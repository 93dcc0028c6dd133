"""A live source as the reading loop reads it: `LiveStream`, the model's side of a `LiveReader`
(media/live.py). It takes the frames waiting (up to a vision batch), encodes them and yields
(Sample, features) as `VideoStream` does: both are `FrameSource`s (stream.py), so
pipeline.read_streams reads a stream as it reads a file.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from malmm_cli.media.live import LiveReader, Source
from malmm_cli.media.timefmt import format_timestamp
from malmm_cli.reading.stream import FrameSource, Sample, preprocess
from malmm_cli.wording import counted
from models import Malmm


class LiveStream(FrameSource):
    """A live source as the reading loop reads it: (Sample, features [1, N, C]) as frames arrive.

    A FrameSource with its defaults: nothing planned (`times` is None), cached, clipped or pictured
    (a stream's report is its events). `duration` is the stream time read so far. Use it in a
    `with` block: leaving it stops the reader thread.
    """

    def __init__(self, malmm: Malmm, source: Source, fps: float, batch_size: int = 8, **reading: object):
        self.malmm, self.source, self.batch_size = malmm, source, batch_size
        self.reader: LiveReader[torch.Tensor] = LiveReader(source, fps, lambda image: preprocess(malmm, image),
                                                           **reading)  # fmt: skip

    @property
    def duration(self) -> float:
        return self.reader.stats.newest

    @property
    def span(self) -> tuple[float, float]:
        """What the results cover: the stream read so far, from 0."""
        return (0.0, self.duration)

    def __enter__(self) -> LiveStream:
        self.reader.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.reader.close(wait=0.0 if kind is KeyboardInterrupt else 0.5)  # a second Ctrl-C quits at once

    def stop(self) -> None:
        """End the stream at the next frame (Ctrl-C): what was read is still read out."""
        self.reader.stop()

    def __iter__(self) -> Iterator[tuple[Sample, torch.Tensor]]:
        while frames := self.reader.take(self.batch_size):
            pixels = torch.stack([frame.pixels for frame in frames])
            if self.malmm.device.type == "cuda":
                pixels = pixels.pin_memory().to(self.malmm.device, non_blocking=True)
            features = self.malmm.encode_frames(pixels)
            for frame, feature in zip(frames, features, strict=True):
                yield Sample(frame.slot, frame.time, frame.time), feature.unsqueeze(0)

    def notes(self) -> list[str]:
        stats = self.reader.stats
        notes = [counted(stats.reconnects, "reconnect attempt")] if stats.reconnects else []
        if stats.dropped:
            notes.append(
                f"{stats.dropped} of {counted(stats.sampled, 'sampled frame')} dropped to keep up with the stream"
            )
        return notes

    def warnings(self) -> list[str]:
        return [self.reader.ended] if self.reader.failed and self.reader.ended else []

    def status(self) -> str:
        """A line for a person watching: how far the stream is, how fast it is read, how far behind."""
        stats = self.reader.stats
        rate = stats.read / max(1e-9, time.monotonic() - stats.started)
        behind = max(0.0, stats.newest - stats.newest_read) + stats.behind
        line = (f"stream {format_timestamp(stats.newest)} · {rate:.2f} frames/s read · "
                f"{behind:.1f} s behind · {stats.dropped} dropped")  # fmt: skip
        return line + (f" · {counted(stats.reconnects, 'reconnect attempt')}" if stats.reconnects else "")
