"""The same commands on a Ray cluster: `ray_reader` reads a batch of videos in Ray Data actors.

Only where videos are read changes. The command line finds the inputs, skips those already done
and writes every result, record and summary itself, exactly as the local engine does (batch.py),
so a job can move between a laptop and a cluster. What goes to the cluster is a dataset of paths
(one row per video, not `ray.data.read_videos`' row per frame, which could not carry a memory),
mapped by a pool of `VideoWorker` actors: each loads the model once and reads its videos with
the one reading loop (pipeline.read_video), returning the result or the reason it failed. An
actor that dies while reading is restarted and its video tried once more; a video that kills
its actor twice is reported failed, the others go on.

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
from malmm_cli.jobs.loading import LoadOptions
from malmm_cli.jobs.reporting import VideoProgress
from malmm_cli.media.inputs import Input, clip_sampling
from malmm_cli.media.plans import VideoError
from malmm_cli.media.sampling import Sampling
from malmm_cli.reading.feature_cache import FeatureCache
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


class VideoWorker:
    """A Ray Data actor: the model, loaded once, reading one video per call.

    A model that cannot be loaded there is not a crash of the actor: each of its videos fails with
    that reason, so the command says what is wrong instead of Ray retrying in vain.
    """

    def __init__(self, job: ReadJob):
        from malmm_cli.jobs.loading import load, locate, vision_batch_size

        self.job = job
        self.setup_error: str | None = None
        try:
            self.malmm, _, _ = load(job.load, locate(job.load.model))
        except Exception as error:  # SetupError, CheckpointError, a missing model on this node
            self.setup_error = f"cannot load {job.load.model} on a Ray worker: {error}"
            return
        self.vision_batch = vision_batch_size(self.malmm, job.vision_batch)
        self.cache = FeatureCache() if job.cache else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from malmm_cli.reading.pipeline import read_video

        results, errors = [], []
        for path, start, end in zip(batch["path"], batch["start"], batch["end"], strict=True):
            result, error = None, self.setup_error or ""
            if not error:
                try:
                    job = self.job
                    sampling = clip_sampling(job.sampling, Input(Path(path), Path(), _time(start), _time(end)))
                    result = read_video(self.malmm, path, job.readers, job.task, sampling=sampling,
                                        memory=job.memory, settings=job.settings, batch_size=self.vision_batch,
                                        cache=self.cache, thumbnails=job.thumbnails)  # fmt: skip
                except Exception as failure:  # one video's failure is its own
                    error = failure_reason(failure)
            results.append(result)
            errors.append(error)
        return {"index": batch["index"], "result": _objects(results), "error": _objects(errors)}


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


def ray_reader(
    job: ReadJob, options: RayOptions, show_progress: bool = True
) -> Callable[[list[Input], list[VideoProgress], Callable], list[VideoResult | Exception]]:
    """A `read(items, progress, done)` for batch.run_batch that reads the items on the cluster,
    calling `done(i, result)` as each video comes back (in the order they finish)."""

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
        rows = ray.data.from_items([
            {"index": number, "path": str(item.path), "start": _nan(item.start), "end": _nan(item.end)}
            for number, item in enumerate(items)
        ])  # fmt: skip
        # Actors are recreated as often as they die, each video is tried twice at most (Ray Data's
        # default retries a task for ever: a video that kills its actor would never end the job).
        # These two go through map_batches' remote arguments, deprecated in Ray 2.64 (pyproject pins below).
        # One video in flight per actor: videos queued behind one that kills the actor would lose
        # their retry with it.
        pool = ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1)
        with warnings.catch_warnings():  # the deprecation said above, known and pinned: not the user's to see
            warnings.simplefilter("ignore", RayDeprecationWarning)
            read_back = rows.map_batches(
                VideoWorker, fn_constructor_kwargs={"job": job}, batch_size=1, num_gpus=gpus, compute=pool,
                max_restarts=-1, max_task_retries=1,
            )  # fmt: skip
        results: list[VideoResult | Exception | None] = [None] * len(items)
        for row in read_back.iter_rows():
            number = int(row["index"])
            result = row["result"] if not row["error"] else VideoError(row["error"])
            if isinstance(result, VideoResult):
                progress[number].frames = result.frames
            results[number] = result
            done(number, result)
        for number, result in enumerate(results):
            if result is None:
                results[number] = VideoError(DIED_TWICE)
                done(number, results[number])
        return results

    return read
