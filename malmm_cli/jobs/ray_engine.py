"""The same commands on a Ray cluster: `ray_reader` reads a batch of videos in Ray Data actors.

Only where videos are read changes. The command line finds the inputs, skips those already done
and writes every result, record and summary itself, exactly as the local engine does (batch.py),
so a job can move between a laptop and a cluster. What goes to the cluster is a dataset of paths
(one row per video, not `ray.data.read_videos`' row per frame, which could not carry a memory),
mapped by a pool of `VideoWorker` actors: each loads the model once and reads each Ray batch of
videos as the local engine reads a batch (lockstep.py: those of equal sampling in lockstep),
returning each one's result or the reason it failed. An actor that dies while reading is
restarted and its batch tried once more; the videos of a batch that kills its actor twice are
read again one per task, so that a video that kills its actor twice is reported failed and the
others go on.

Paths must be visible to every node (shared storage). Needs the `ray` extra: pip install 'malmm[ray]'.

stdout carries results only: Ray's driver prints the raylet's messages (a worker that died, a task
retried) to `sys.stdout` whatever `log_to_driver` says (that setting covers the workers' own
output), so while Ray works here `sys.stdout` is stderr; the results' writer keeps the real one.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from malmm_cli.jobs.batch import failure_reason
from malmm_cli.jobs.loading import MAX_VIDEO_BATCH, LoadOptions
from malmm_cli.jobs.reporting import VideoProgress
from malmm_cli.media.inputs import Input
from malmm_cli.media.plans import VideoError
from malmm_cli.media.sampling import Sampling
from malmm_cli.reading.feature_cache import FeatureCache
from malmm_cli.reading.lockstep import input_clip
from malmm_cli.reading.pipeline import Memory, Reader
from malmm_cli.reading.results import VideoResult
from models import GenerationSettings

DIED_TWICE = "the Ray worker reading it died twice (out of memory on its node, or killed)"
TOKEN_HINT = "give this machine the cluster's token: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"


class ClusterError(Exception):
    """The Ray cluster cannot be joined; str(error) is one line saying why."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide: the cluster (None: start one on this machine), actors, GPUs each."""

    address: str | None = None
    workers: int | None = None  # default: one per GPU of the cluster (one on a cluster without GPUs)
    gpus_per_worker: float | None = None  # default: 1 where the cluster has GPUs, else 0


@dataclass(frozen=True)
class ReadJob:
    """What every actor needs to read videos as this command does (plain data, sent to each)."""

    load: LoadOptions
    readers: tuple[Reader, ...]
    task: str
    sampling: Sampling
    memory: Memory
    settings: GenerationSettings
    vision_batch: int | None = None
    cache: bool = True
    thumbnails: bool = False  # pictures for the HTML report (VideoResult.preview)
    video_batch: int | None = None  # videos read in lockstep at most (None: what the worker's memory holds)


class VideoWorker:
    """A Ray Data actor: the model, loaded once, reading each batch of videos it is given as the
    local engine does (lockstep.py), sized by its own free memory (loading.reading_sizes).

    A model that cannot be loaded there is not a crash of the actor: each of its videos fails with
    that reason, so the command says what is wrong instead of Ray retrying in vain.
    """

    def __init__(self, job: ReadJob):
        from malmm_cli.jobs.loading import load, locate, reading_sizes, vision_batch_size
        from malmm_cli.reading.pipeline import VideoFiles

        self.job = job
        self.setup_error: str | None = None
        try:
            self.malmm, _, _ = load(job.load, locate(job.load.model))
        except Exception as error:  # SetupError, CheckpointError, a missing model on this node
            self.setup_error = f"cannot load {job.load.model} on a Ray worker: {error}"
            return
        vision_batch = vision_batch_size(self.malmm, job.vision_batch)
        self.files = VideoFiles(self.malmm, vision_batch, FeatureCache() if job.cache else None, job.thumbnails)
        self.sizes = reading_sizes(
            self.malmm, memory_bank_length=job.memory.bank_length, frames=job.load.frames,
            readers=len(job.readers), num_beams=job.settings.num_beams, max_new_tokens=job.settings.max_new_tokens,
            vision_batch=vision_batch, videos=job.video_batch,
        )  # fmt: skip

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from malmm_cli.reading.lockstep import read_in_lockstep

        job = self.job
        results: list[VideoResult | Exception | None] = [None] * len(batch["index"])
        if self.setup_error is None:
            clips = [input_clip(Input(Path(path), Path(), _time(start), _time(end)), job.sampling, job.readers)
                     for path, start, end in zip(batch["path"], batch["start"], batch["end"], strict=True)]  # fmt: skip
            try:
                read_in_lockstep(self.malmm, clips, self.files, job.task, videos_at_once=self.sizes.videos,
                                 memory=job.memory, settings=job.settings, answers_per_batch=self.sizes.answers,
                                 on_done=results.__setitem__)  # fmt: skip
            except Exception as failure:  # not one video's (the batch's answers): those unfinished fail with it
                results = [failure if result is None else result for result in results]
        errors = ["" if isinstance(r, VideoResult) else self.setup_error or failure_reason(r) for r in results]
        read = [result if isinstance(result, VideoResult) else None for result in results]
        return {"index": batch["index"], "result": _objects(read), "error": _objects(errors)}


def _time(value: float) -> float | None:
    """A clip time as it comes back from a dataset row (NaN: none)."""
    return None if value is None or math.isnan(value) else float(value)


def _objects(values: list[Any]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def connect(options: RayOptions) -> bool:
    """Join the cluster at `address`, or start a local one (once per process). True when this call
    made the connection (`session` then ends it). ClusterError if it cannot be joined: a wrong
    address, or a token its authentication refuses (Ray itself tries for about 20 s), so the
    command says so once, before any video."""
    import ray

    if ray.is_initialized():
        return False
    try:
        with ray_prints_to_stderr():
            ray.init(address=options.address, include_dashboard=False, log_to_driver=False)
    except Exception as error:  # ConnectionError (the cause says why), ValueError, RuntimeError...
        where = f"at {options.address}" if options.address else "(RAY_ADDRESS, or a local one)"
        raise ClusterError(f"cannot join the Ray cluster {where}: {_join_failure(error)}") from None
    return True


def _join_failure(error: Exception) -> str:
    """Why ray.init failed, in one line: the cause it wraps (the first sentence of it)."""
    import ray.exceptions

    chain, cause = [], error
    while cause is not None and cause not in chain:  # ConnectionError <- RuntimeError <- AuthenticationError
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    refused = (ray.exceptions.AuthenticationError, "AuthenticationError", "InvalidAuthToken")  # the last two: as text
    if any(isinstance(cause, refused[0]) or any(word in str(cause) for word in refused[1:]) for cause in chain):
        return f"its token authentication refused this machine's token ({TOKEN_HINT})"
    deepest = chain[1] if len(chain) > 1 else chain[0]  # what ray.init's "Failed to connect" wraps
    text = str(deepest).strip()
    return text.splitlines()[0].split(". ")[0] if text else type(deepest).__name__


@contextlib.contextmanager
def session(connected_here: bool) -> Iterator[None]:
    """A command's run on Ray: Ray's prints go to stderr throughout (a worker's death is told
    while results are still being written). A connection this command made (`connect` returned
    True) ends with it, its listener joined: nothing more of Ray's is printed after; one the
    caller made is left alone."""
    import ray

    try:
        with ray_prints_to_stderr():
            yield
    finally:
        if connected_here and ray.is_initialized():
            with ray_prints_to_stderr():
                ray.shutdown()


@contextlib.contextmanager
def ray_prints_to_stderr() -> Iterator[None]:
    """While Ray works, what it prints to sys.stdout (the raylet's messages) goes to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def pool_size(options: RayOptions) -> tuple[int, float]:
    """(actors, GPUs per actor) for the cluster as it is."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0)
    per_worker = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if gpus else 0.0)
    workers = options.workers or (max(1, int(gpus // per_worker)) if per_worker else 1)
    return workers, per_worker


def ray_batch_size(videos: int, workers: int, video_batch: int | None = None) -> int:
    """Videos per Ray batch (an actor reads a batch at a time, in lockstep): as many as
    `video_batch` (default MAX_VIDEO_BATCH), and no more than keeps every actor busy."""
    return max(1, min(video_batch or MAX_VIDEO_BATCH, math.ceil(videos / max(1, workers))))


def ray_reader(
    job: ReadJob, options: RayOptions, show_progress: bool = True
) -> Callable[[list[Input], list[VideoProgress], Callable], list[VideoResult | Exception]]:
    """A `read(items, progress, done)` for batch.run_batch that reads the items on the cluster,
    calling `done(i, result)` as each batch of videos comes back (in the order they finish)."""

    def read(items: list[Input], progress: list[VideoProgress], done: Callable) -> list[VideoResult | Exception]:
        connect(options)
        with ray_prints_to_stderr():  # `done` writes results to the writer's own stdout
            return _read(items, progress, done)

    def _read(items: list[Input], progress: list[VideoProgress], done: Callable) -> list[VideoResult | Exception]:
        import ray.data
        from ray.util.annotations import RayDeprecationWarning

        context = ray.data.DataContext.get_current()
        context.max_errored_blocks = -1  # a video whose actor died twice fails alone, not the job
        context.enable_progress_bars = show_progress
        workers, gpus = pool_size(options)
        results: list[VideoResult | Exception | None] = [None] * len(items)

        def read_back(numbers: list[int], batch_size: int) -> None:
            rows = ray.data.from_items([
                {"index": number, "path": str(items[number].path), "start": _nan(items[number].start),
                 "end": _nan(items[number].end)}
                for number in numbers
            ])  # fmt: skip
            # Actors are recreated as often as they die, each batch is tried twice at most (Ray Data's
            # default retries a task for ever: a video that kills its actor would never end the job).
            # These two go through map_batches' remote arguments, deprecated in Ray 2.64 (pyproject pins
            # below). One batch in flight per actor: batches queued behind one that kills the actor would
            # lose their retry with it.
            pool = ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1)
            with warnings.catch_warnings():  # the deprecation said above, known and pinned: not the user's to see
                warnings.simplefilter("ignore", RayDeprecationWarning)
                mapped = rows.map_batches(
                    VideoWorker, fn_constructor_kwargs={"job": job}, batch_size=batch_size, num_gpus=gpus,
                    compute=pool, max_restarts=-1, max_task_retries=1,
                )  # fmt: skip
            for row in mapped.iter_rows():
                number = int(row["index"])
                result = row["result"] if not row["error"] else VideoError(row["error"])
                if isinstance(result, VideoResult):
                    progress[number].frames = result.frames
                results[number] = result
                done(number, result)

        batch_size = ray_batch_size(len(items), workers, job.video_batch)
        read_back(list(range(len(items))), batch_size)
        lost = [number for number, result in enumerate(results) if result is None]
        if lost and batch_size > 1:  # a batch killed its actor twice: its videos alone, only the killer fails
            read_back(lost, 1)
        for number, result in enumerate(results):
            if result is None:
                results[number] = VideoError(DIED_TWICE)
                done(number, results[number])
        return results

    return read
