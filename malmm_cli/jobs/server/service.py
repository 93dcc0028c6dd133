"""The one loaded model answering requests: each read as `malmm caption|ask|predict` reads one video
(the same readers, sampling, memory, generation and batch sizes, through jobs/videos.ModelReading),
the requests waiting in a line of bounded length. Requests that wait together and would be read
with the same settings are read together, in the lockstep batches the command line reads a folder
in; a request whose client went away is dropped from the line, or from its batch mid-video."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from malmm_cli.jobs.errors import SetupError
from malmm_cli.jobs.model import RunOptions
from malmm_cli.jobs.server.chat import ApiError, ChatRequest, as_fields
from malmm_cli.media.plans import VideoError

if TYPE_CHECKING:
    from malmm_cli.jobs.reporting import Reporter
    from malmm_cli.reading.pipeline import Growing, Reader
    from malmm_cli.reading.results import VideoResult
    from malmm_cli.reading.stream import Progress
    from models.malmm import Malmm


@dataclass
class Reply:
    """One request's answer: the result, the message's content (what `malmm ... -f txt` prints) and
    OpenAI's token counts."""

    result: VideoResult
    content: str
    usage: dict[str, int] = field(default_factory=dict)


@dataclass
class Job:
    """One request for the model: what it asks, the video file it reads, where its reading progress
    goes, and its answer, settled by the model's thread. `cancel` when its client goes away."""

    request: ChatRequest
    video: Path
    progress: Progress | None = None
    on_text: Callable[[str], None] | None = None  # the answer as it grows, where it is one text (`grows`)
    answer: Future[Reply] = field(default_factory=Future)
    gone: threading.Event = field(default_factory=threading.Event)

    @property
    def grows(self) -> bool:
        """Whether the reply's content is one generated text, which can be told as it grows: a
        question's answer, or a caption without segments (with greedy decoding only)."""
        task = self.request.task
        return task.name == "ask" or (task.name == "caption" and task.request.get("segment") is None)

    def cancel(self) -> None:
        """Nobody waits for the answer: drop the job if it waits, stop reading its video if read."""
        self.gone.set()
        self.answer.cancel()  # (a job being read is not cancelled by this, `gone` stops it)

    @property
    def wanted(self) -> bool:
        return not self.gone.is_set()


class Service(Protocol):
    """What the application needs of a model: its name, where it runs, the options requests start
    from, which requests may be read together, and the answers to such a group."""

    model_id: str
    device: str
    defaults: RunOptions

    def together(self, request: ChatRequest) -> Hashable:
        """Requests with equal keys may be read in one batch."""
        ...

    def answer(self, jobs: list[Job]) -> None:
        """Read the jobs' videos, settling each job's answer (a Reply or an exception) as soon as it
        is known; a job that stops being wanted may be left unread."""
        ...


class VideoService:
    """A loaded model, reading each request's video exactly as the command line reads a file."""

    def __init__(self, malmm: Malmm, defaults: RunOptions, model_id: str, reporter: Reporter):
        self.malmm, self.defaults, self.model_id = malmm, defaults, model_id
        self.device = str(malmm.device)
        self.cache = defaults.cache(reporter)  # the feature cache, as the command line's

    def together(self, request: ChatRequest) -> Hashable:
        """The settings a lockstep batch shares: the task, sampling, memory and generation, and as
        many readers (and memories shared by them) for every video."""
        from malmm_cli.reading.pipeline import shared_memories

        options, preset, readers = request.options, request.task.preset, request.task.readers()
        return (request.task.name, options.sampling(preset), options.bank(preset), options.memory,
                options.generation(preset), options.batch_size, len(readers),
                len(shared_memories(readers)))  # fmt: skip

    def answer_one(self, request: ChatRequest, video: Path, progress: Progress | None = None) -> Reply:
        """One request read now, in this thread (no line: the llm plugin's in-process model); its
        ApiError or other failure is raised."""
        job = Job(request, video, progress)
        job.answer.set_running_or_notify_cancel()
        self.answer([job])
        return job.answer.result()

    def answer(self, jobs: list[Job]) -> None:
        """Read the jobs (all `together`) in lockstep; a video that cannot be read, or options the
        model refuses, are the request's ApiError."""
        from malmm_cli.jobs.videos import model_reading
        from malmm_cli.media.probe import check_readable
        from malmm_cli.output.writers import to_txt
        from malmm_cli.reading.lockstep import Clip
        from malmm_cli.reading.stream import NoProgress

        task = jobs[0].request.task
        try:
            reading = model_reading(self.malmm, jobs[0].request.options, task.preset, task.name,
                                    len(task.readers()), self.cache)  # fmt: skip
        except SetupError as error:
            for job in jobs:
                job.answer.set_exception(ApiError(as_fields(str(error)), code="invalid_value"))
            return
        readable: list[Job] = []
        for job in jobs:
            try:
                check_readable(job.video)  # the command line's cheap check, and its words
                readable.append(job)
            except VideoError as error:
                job.answer.set_exception(ApiError(as_fields(str(error)), code="unreadable_video"))

        def settle(number: int, result: VideoResult | Exception) -> None:
            job = readable[number]
            if isinstance(result, VideoError):
                job.answer.set_exception(ApiError(str(result), code="unreadable_video"))
            elif isinstance(result, Exception):
                job.answer.set_exception(result)
            else:
                readers = job.request.task.readers()
                job.answer.set_result(Reply(result, to_txt(result).rstrip("\n"), self.usage(readers, result)))

        def grown(growing: Growing) -> None:
            job = readable[growing.video]
            if job.on_text is not None and job.grows and growing.span is None:
                job.on_text(growing.text)

        clips = [Clip(job.video, reading.sampling, tuple(job.request.task.readers())) for job in readable]
        reading.read(clips, [job.progress or NoProgress() for job in readable], settle,
                     stopped=lambda number: not readable[number].wanted,
                     on_text=grown if any(job.on_text for job in readable) else None)  # fmt: skip

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
    """Requests take turns with the one model, in a thread of its own (so the server goes on
    answering): the first waiting job is read with every other waiting job the service reads
    `together` with it; at most `waiting` jobs wait, more are refused (QueueFull) at once rather
    than left to time out. `start=False`: nothing is read until `start()`."""

    def __init__(self, service: Service, waiting: int, start: bool = True):
        self.service, self.waiting = service, waiting
        self._ready = threading.Condition()
        self._line: deque[Job] = deque()
        self._reading = 0  # jobs being read now
        self._seconds = 0.0  # how long a job took lately (a moving average), for Retry-After
        self._worker = threading.Thread(target=self._work, name="malmm-model", daemon=True)
        if start:
            self.start()

    def start(self) -> None:
        self._worker.start()

    @property
    def queued(self) -> int:
        with self._ready:
            self._forget_gone()
            return len(self._line)

    @property
    def reading(self) -> int:
        with self._ready:
            return self._reading

    def submit(self, job: Job) -> None:
        """Line the job up for the model; QueueFull when `waiting` jobs already wait."""
        with self._ready:
            self._refuse_when_full()
            self._line.append(job)
            self._ready.notify()

    def check_room(self) -> None:
        """QueueFull if a job submitted now would be refused: asked before a request's video is
        fetched or written, so that a full line costs no download (`submit` asks again)."""
        with self._ready:
            self._refuse_when_full()

    def _refuse_when_full(self) -> None:
        self._forget_gone()
        idle = 1 if self._reading == 0 else 0  # the first job of an idle model is about to be read, not waiting
        if len(self._line) >= self.waiting + idle:
            ahead = len(self._line) + min(self._reading, 1)
            raise QueueFull(max(1, round(self._seconds * ahead)))

    def _forget_gone(self) -> None:
        """Jobs whose clients went away while they waited hold no place in the line."""
        if any(not job.wanted for job in self._line):
            self._line = deque(job for job in self._line if job.wanted)

    def _next(self) -> list[Job]:
        """The first waiting job and those to read with it, taken out of the line (jobs whose
        clients went away while they waited are dropped)."""
        with self._ready:
            while not self._line:
                self._ready.wait()
            first = self._line.popleft()
            try:
                key = self.service.together(first.request)
                group = [first, *(job for job in self._line if self.service.together(job.request) == key)]
            except Exception:  # a request the service cannot key is read alone (and fails there)
                group = [first]
            for job in group[1:]:
                self._line.remove(job)
            group = [job for job in group if job.answer.set_running_or_notify_cancel()]
            self._reading = len(group)
            return group

    def _work(self) -> None:
        while True:
            group = self._next()
            started = time.monotonic()
            try:
                if group:
                    self.service.answer(group)
            except BaseException as error:  # handed to the requests, which say it
                for job in group:
                    if not job.answer.done():
                        job.answer.set_exception(error)
            finally:
                for job in group:  # a service that forgot one must not leave its client waiting
                    if not job.answer.done():
                        job.answer.set_exception(RuntimeError("the model left the request unanswered"))
                with self._ready:
                    self._reading = 0
                    if group:
                        self._seconds = 0.7 * self._seconds + 0.3 * (time.monotonic() - started) / len(group)
