"""Exact sampling decoded by several processes (`--decode-workers N`), for machines with cores to spare.

The requested times are cut into consecutive chunks, dealt round-robin to N worker processes.
Each worker reads its chunks with the ordinary VideoReader (seeking to a chunk's first time,
then reading forward) and the frames are handed back chunk by chunk, in time order. Every worker
has its own small queue, so at most N x QUEUE_FRAMES frames wait in memory whatever the video's
length, and a worker runs ahead of the consumer by at most that much. Frames are identical to a
single VideoReader's; the price is one extra seek per chunk and copying frames between processes.

Frames travel through a pipe whose sending end only the worker holds, so a worker that dies
(killed for memory, crashed), even in the middle of sending a frame, ends the consumer's read
with an error instead of leaving it waiting for the rest of the frame forever.
"""

from __future__ import annotations

import multiprocessing
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path

from malmm_cli.media.plans import VideoError, VideoInfo
from malmm_cli.media.probe import probe
from malmm_cli.media.video import Frame, ReadReport, VideoReader

CHUNKS_PER_WORKER = 4  # enough chunks that no worker idles long while another finishes
QUEUE_FRAMES = 16
_DONE, _FAILED = "done", "failed"


def _worker(path: str, info: VideoInfo, chunks: list[tuple[int, list[float]]], out: Connection) -> None:
    """Send the chunks' frames in order, each chunk followed by (_DONE, report) or (_FAILED, reason).
    A thread decodes up to QUEUE_FRAMES frames ahead of what the pipe has taken."""
    decoded: queue.Queue = queue.Queue(QUEUE_FRAMES)
    threading.Thread(target=_decode, args=(path, info, chunks, decoded.put), daemon=True).start()
    with out:
        for item in iter(decoded.get, None):
            try:
                out.send(item)
            except OSError:  # the consumer has gone: nothing is left to do
                return


def _decode(path: str, info: VideoInfo, chunks: list[tuple[int, list[float]]], put: Callable[[object], None]) -> None:
    """Decode the chunks given, in order: each frame, then (_DONE, report) or (_FAILED, reason); None at the end."""
    try:
        with VideoReader(Path(path), info) as reader:
            for number, times in chunks:
                try:
                    for frame in reader.frames(times):
                        put((number, frame))
                    put((number, (_DONE, reader.report)))
                except VideoError as error:
                    put((number, (_FAILED, str(error))))
                except BaseException as error:  # report it rather than leave the consumer waiting
                    put((number, (_FAILED, f"{type(error).__name__}: {error}")))
                    return
    finally:
        put(None)


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
        self._pipes: list[Connection] = []

    def close(self) -> None:
        for process in self._processes:
            if process.is_alive():
                process.terminate()
            process.join()
            process.close()  # its sentinel descriptor, not left to the garbage collector
        for pipe in self._pipes:
            pipe.close()
        self._processes, self._pipes = [], []

    def __enter__(self) -> ParallelReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def frames(self, times: Sequence[float]) -> Iterator[Frame]:
        targets = [float(t) for t in times]
        report = self.report = ReadReport(requested=len(targets))
        chunks = _chunks(targets, self.workers * CHUNKS_PER_WORKER)
        context = multiprocessing.get_context("spawn")  # never fork a process holding torch threads or CUDA
        for worker in range(self.workers):
            mine = [(number, chunk) for number, chunk in enumerate(chunks) if number % self.workers == worker]
            received, sent = context.Pipe(duplex=False)
            process = context.Process(target=_worker, args=(str(self.path), self.info, mine, sent), daemon=True)
            process.start()
            sent.close()  # the worker's is the only sending end left: its death ends the pipe
            self._processes.append(process)
            self._pipes.append(received)
        offset = 0
        try:
            for number, chunk in enumerate(chunks):
                pipe = self._pipes[number % self.workers]
                while True:
                    chunk_number, item = _receive(pipe)
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


def _receive(pipe: Connection) -> tuple[int, object]:
    try:
        return pipe.recv()
    except (EOFError, OSError):  # OSError: the worker died in the middle of sending a frame
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
