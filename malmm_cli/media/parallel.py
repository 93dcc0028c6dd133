"""Exact sampling decoded by several processes (`--decode-workers N`), for machines with cores to spare.

The requested times are cut into consecutive chunks, dealt round-robin to N worker processes.
Each worker reads its chunks with the ordinary VideoReader (seeking to a chunk's first time,
then reading forward) and the frames are handed back chunk by chunk, in time order. Every worker
has its own small queue, so at most N x QUEUE_FRAMES frames wait in memory whatever the video's
length, and a worker runs ahead of the consumer by at most that much. Frames are identical to a
single VideoReader's; the price is one extra seek per chunk and copying frames between processes.
"""

from __future__ import annotations

import multiprocessing
import queue
from collections.abc import Iterator, Sequence
from pathlib import Path

from malmm_cli.media.plans import VideoError, VideoInfo
from malmm_cli.media.probe import probe
from malmm_cli.media.video import Frame, ReadReport, VideoReader

CHUNKS_PER_WORKER = 4  # enough chunks that no worker idles long while another finishes
QUEUE_FRAMES = 16
_DONE, _FAILED = "done", "failed"


def _worker(path: str, info: VideoInfo, chunks: list[tuple[int, list[float]]], out: multiprocessing.Queue) -> None:
    """Decode the chunks given, in order: each frame, then (_DONE, report) or (_FAILED, reason)."""
    with VideoReader(Path(path), info) as reader:
        for number, times in chunks:
            try:
                for frame in reader.frames(times):
                    out.put((number, frame))
                out.put((number, (_DONE, reader.report)))
            except VideoError as error:
                out.put((number, (_FAILED, str(error))))
            except BaseException as error:  # report it rather than leave the consumer waiting
                out.put((number, (_FAILED, f"{type(error).__name__}: {error}")))
                return


class ParallelReader:
    """Same use as VideoReader: `frames(times)` then `report`."""

    def __init__(self, path: Path, info: VideoInfo | None = None, workers: int = 2) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.path = Path(path)
        self.info = info if info is not None else probe(self.path)
        self.workers = workers
        self.report: ReadReport | None = None
        self._processes: list[multiprocessing.Process] = []

    def close(self) -> None:
        for process in self._processes:
            if process.is_alive():
                process.terminate()
            process.join()
        self._processes = []

    def __enter__(self) -> ParallelReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def frames(self, times: Sequence[float]) -> Iterator[Frame]:
        targets = [float(t) for t in times]
        report = self.report = ReadReport(requested=len(targets))
        chunks = _chunks(targets, self.workers * CHUNKS_PER_WORKER)
        context = multiprocessing.get_context("spawn")  # never fork a process holding torch threads or CUDA
        queues = [context.Queue(QUEUE_FRAMES) for _ in range(self.workers)]
        for worker, out in enumerate(queues):
            mine = [(number, chunk) for number, chunk in enumerate(chunks) if number % self.workers == worker]
            process = context.Process(target=_worker, args=(str(self.path), self.info, mine, out), daemon=True)
            process.start()
            self._processes.append(process)
        offset = 0
        try:
            for number, chunk in enumerate(chunks):
                out = queues[number % self.workers]
                while True:
                    chunk_number, item = self._next(out, number % self.workers)
                    assert chunk_number == number, "each worker hands back its chunks in order"
                    if isinstance(item, Frame):
                        report.delivered += 1
                        yield Frame(offset + item.index, item.target, item.time, item.image)
                        continue
                    status, detail = item
                    if status == _FAILED:
                        if detail != "no frame could be decoded":
                            raise VideoError(detail)
                        report.missing.extend(chunk)  # a chunk inside damaged data: later ones may decode
                    else:
                        report.missing.extend(detail.missing)
                        if detail.ended_at is not None:
                            report.ended_at = detail.ended_at
                    break
                offset += len(chunk)
        finally:
            self.close()
        if report.delivered == 0 and targets:
            raise VideoError("no frame could be decoded")
        if targets and max(targets) not in report.missing:
            report.ended_at = None  # an earlier chunk stopping short is damage, not the end of the data

    def _next(self, out: multiprocessing.Queue, worker: int) -> tuple[int, object]:
        while True:
            try:
                return out.get(timeout=1.0)
            except queue.Empty:
                if not self._processes[worker].is_alive():
                    raise VideoError("a decoding worker stopped unexpectedly") from None


def _chunks(targets: list[float], count: int) -> list[list[float]]:
    """Consecutive runs of targets, as even as possible, at most `count` of them."""
    count = max(1, min(count, len(targets)))
    size, extra = divmod(len(targets), count)
    chunks, start = [], 0
    for number in range(count):
        end = start + size + (1 if number < extra else 0)
        chunks.append(targets[start:end])
        start = end
    return [chunk for chunk in chunks if chunk]
