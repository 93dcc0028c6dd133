"""The one loaded model answering requests: each read as `malmm caption|ask|predict` reads one video
(the same readers, sampling, memory, generation and batch sizes, through reading/pipeline.py), one
request at a time, the others waiting in a line of bounded length."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from malmm_cli.jobs.model import RunOptions
from malmm_cli.jobs.server.chat import ApiError, ChatRequest, as_fields
from malmm_cli.media.plans import VideoError

if TYPE_CHECKING:
    from malmm_cli.jobs.reporting import Reporter
    from malmm_cli.reading.pipeline import Reader
    from malmm_cli.reading.results import VideoResult
    from malmm_cli.reading.stream import Progress
    from models.malmm import Malmm

T = TypeVar("T")


@dataclass
class Reply:
    """One request's answer: the result, the message's content (what `malmm ... -f txt` prints) and
    OpenAI's token counts."""

    result: VideoResult
    content: str
    usage: dict[str, int] = field(default_factory=dict)


class Service(Protocol):
    """What the application needs of a model: its name, where it runs, the options requests start
    from, and an answer to one request about one video file."""

    model_id: str
    device: str
    defaults: RunOptions

    def answer(self, request: ChatRequest, video: Path, progress: Progress | None = None) -> Reply: ...


class VideoService:
    """A loaded model, reading one video per request exactly as the command line reads it."""

    def __init__(self, malmm: Malmm, defaults: RunOptions, model_id: str, reporter: Reporter):
        self.malmm, self.defaults, self.model_id = malmm, defaults, model_id
        self.device = str(malmm.device)
        self.cache = defaults.cache(reporter)  # the feature cache, as the command line's

    def answer(self, request: ChatRequest, video: Path, progress: Progress | None = None) -> Reply:
        """Read the video for the request's task; ApiError for a video that cannot be read or
        options the model refuses."""
        from malmm_cli.jobs.loading import reading_sizes, vision_batch_size
        from malmm_cli.media.probe import check_readable
        from malmm_cli.output.writers import to_txt
        from malmm_cli.reading.pipeline import Memory, check_memory, read_videos
        from malmm_cli.reading.stream import NoProgress

        options, task = request.options, request.task.preset
        readers = request.task.readers()
        memory = Memory(options.bank(task), options.memory)
        try:
            check_memory(self.malmm, memory)
            check_readable(video)  # the command line's cheap check, and its words
        except (ValueError, VideoError) as error:
            raise ApiError(as_fields(str(error)), code="unreadable_video"
                           if isinstance(error, VideoError) else "invalid_value") from None  # fmt: skip
        generation = options.generation(task)
        vision_batch = vision_batch_size(self.malmm, options.batch_size)
        sizes = reading_sizes(
            self.malmm, memory_bank_length=memory.bank_length, frames=options.most_frames(task),
            readers=len(readers), num_beams=generation.num_beams, max_new_tokens=generation.max_new_tokens,
            vision_batch=vision_batch, videos=1,
        )  # fmt: skip
        (result,) = read_videos(
            self.malmm, [video], readers, request.task.name, sampling=options.sampling(task), memory=memory,
            settings=generation, progress=[progress or NoProgress()], batch_size=vision_batch, cache=self.cache,
            answers_per_batch=sizes.answers,
        )  # fmt: skip
        if isinstance(result, VideoError):
            raise ApiError(str(result), code="unreadable_video")
        if isinstance(result, Exception):
            raise result
        return Reply(result, to_txt(result).rstrip("\n"), self.usage(readers, result))

    def usage(self, readers: list[Reader], result: VideoResult) -> dict[str, int]:
        """Tokens the LLM read (each read-out: the query tokens and the prompt) and wrote (the texts
        generated; ranking labels writes none)."""
        tokens = self.malmm.tokenizer
        queries = self.malmm.model.config.num_query_tokens

        def count(text: str) -> int:
            return len(tokens(text, add_special_tokens=False).input_ids)

        prompt = 0
        for reader in readers:
            spans = {"segment": len(result.segments), "timeline": len(result.timeline)}.get(reader.role, 0)
            if reader.at_end is not None:
                prompt += queries + count(reader.at_end)
            if reader.at_span is not None:
                prompt += spans * (queries + count(reader.at_span))
        texts = [result.caption or "", *(s.text for s in result.segments), *(a.answer for a in result.answers)]
        if not result.labels:
            texts += [*(s.text for s in result.timeline), result.next_action or ""]
        completion = sum(count(text) for text in texts if text)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class QueueFull(Exception):
    """The line for the model is full: the client should come back after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


class ModelLine:
    """Requests take turns with the one model: one is read at a time, in a thread of its own (so the
    server goes on answering), and at most `waiting` more wait for it; more are refused (QueueFull)
    at once rather than left to time out."""

    def __init__(self, waiting: int):
        self.waiting = waiting
        self._lock = threading.Lock()
        self._admitted = 0  # waiting and being read
        self._reading = False
        self._seconds = 0.0  # how long a request took lately (a moving average), for Retry-After
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future]] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name="malmm-model", daemon=True)
        self._worker.start()

    @property
    def queued(self) -> int:
        with self._lock:
            return self._admitted - self._reading

    @property
    def reading(self) -> bool:
        return self._reading

    def submit(self, work: Callable[[], T]) -> Future[T]:
        """Run `work` when the model is free; QueueFull when `waiting` requests already wait."""
        with self._lock:
            if self._admitted > self.waiting:
                raise QueueFull(max(1, round(self._seconds * (self._admitted - self._reading + 1))))
            self._admitted += 1
        future: Future[T] = Future()
        self._jobs.put((work, future))
        return future

    def _work(self) -> None:
        while True:
            work, future = self._jobs.get()
            started = time.monotonic()
            try:
                if not future.set_running_or_notify_cancel():  # its client went away while it waited
                    continue
                with self._lock:
                    self._reading = True
                try:
                    future.set_result(work())
                except BaseException as error:  # handed to the request, which says it
                    future.set_exception(error)
            finally:
                with self._lock:
                    self._admitted -= 1
                    self._reading = False
                    self._seconds = 0.7 * self._seconds + 0.3 * (time.monotonic() - started)
