"""Reading many videos for one task: the job behind caption, caption --dense, ask, predict and find.

`read_videos` checks all it can before the model loads (options, inputs, the output folder, what a
previous run already made), then loads it once and reads the videos, `--video-batch` at a time in
lockstep, writing each one's results the moment it ends (batch.py). Importing this module loads
no torch: a typo or a missing file is said in a fraction of a second.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from malmm_cli.jobs.errors import SetupError, UsageError
from malmm_cli.jobs.model import RunOptions, check_checkpoint, check_output_dir, load_model, load_options
from malmm_cli.media.files import read_head
from malmm_cli.media.inputs import Input, Outcome, expand_inputs, name_outputs
from malmm_cli.media.names import shown
from malmm_cli.media.plans import VideoError
from malmm_cli.output.stdout import StdoutClosed, StdoutWriter
from malmm_cli.wording import counted, plural
from models.presets import CAPTION, CLASSIFICATION, DENSE, FIND, GROUND, QUESTION, Task

if TYPE_CHECKING:  # loaded when the videos are read
    from malmm_cli.jobs.loading import ReadingSizes
    from malmm_cli.jobs.reporting import Reporter, VideoProgress
    from malmm_cli.media.sampling import Sampling
    from malmm_cli.reading.feature_cache import FeatureCache
    from malmm_cli.reading.lockstep import Clip
    from malmm_cli.reading.pipeline import Growing, Memory, Reader, VideoFiles
    from malmm_cli.reading.results import VideoResult
    from malmm_cli.reading.stream import Progress
    from models import GenerationSettings
    from models.malmm import Malmm


@dataclass(frozen=True)
class VideoTask:
    """What each video is read for: the command's name, its MA-LMM preset (frames, bank, prompt),
    what was asked (kept in the result records), and the arguments of its readers."""

    name: str
    preset: Task
    request: dict[str, object]
    reader_args: tuple = ()

    def readers(self) -> list[Reader]:
        """The readers that say what to produce (reading/pipeline.py); made once the checks have
        passed, since the reading layer loads torch."""
        from malmm_cli.reading import pipeline

        make = {"caption": pipeline.caption_readers, "ask": pipeline.question_readers,
                "predict": pipeline.predict_readers, "find": _find_readers,
                "dense": pipeline.dense_readers}[self.name]  # fmt: skip
        return make(*self.reader_args)


def caption_task(segment: float | None) -> VideoTask:
    return VideoTask("caption", CAPTION, {"segment": segment}, (segment,))


def dense_task() -> VideoTask:
    """A dense caption (`caption --dense`): DENSE's instruction, frames and bank; the answer is read
    back into time-stamped events (VideoResult.events, .problems), on the video's clock. Useful
    with a checkpoint trained with `malmm train --task dense` (docs/time-aware.md)."""
    return VideoTask("dense", DENSE, {}, ())


def ask_task(questions: list[str], timed: bool = False) -> VideoTask:
    """Answers to the questions; timed: read as `ground_task` reads them."""
    if timed:
        return ground_task(questions)
    return VideoTask("ask", QUESTION, {"questions": questions}, (questions,))


def ground_task(queries: list[str]) -> VideoTask:
    """Grounding by generation (`ask --timed`): each query asked in GROUND's wording, with GROUND's
    frames, bank and generation, and each answer read back into spans (Answer.spans, .problems),
    on the video's clock. Useful with a checkpoint trained with `malmm train --task ground`."""
    return VideoTask("ask", GROUND, {"questions": queries, "timed": True}, (queries, True))


def predict_task(labels: list[str] | None, every: float | None, top_k: int) -> VideoTask:
    """A timeline every `every` seconds and the next action, or the top_k of closed-set labels."""
    request = {"labels": labels, "every": every, "top_k": top_k if labels else None}
    return VideoTask("predict", CLASSIFICATION, request, (labels, every, top_k))


FIND_DEFAULT_FPS = 1.0  # find samples a rate by default: a window needs frames wherever it falls


def find_task(queries: list[str], window: float, score: str, threshold: float, min_gap: float, top_k: int) -> VideoTask:
    """Where each query happens, in windows of `window` seconds (docs/find.md)."""
    request = {"queries": queries, "window": window, "score": score, "threshold": threshold, "min_gap": min_gap,
               "top_k": top_k}  # fmt: skip
    return VideoTask("find", FIND, request, (queries, window, score, threshold, min_gap, top_k))


def _find_readers(
    queries: list[str], window: float, score: str, threshold: float, min_gap: float, top_k: int
) -> list[Reader]:
    from malmm_cli.reading.find import FindRule
    from malmm_cli.reading.pipeline import find_readers

    return find_readers(queries, window, FindRule(score, threshold, min_gap, top_k))


def find_sampling(options: RunOptions, window: float | None) -> tuple[RunOptions, float]:
    """find's sampling and window: --window as given, else WINDOW_FRAMES frames at the rate sampled
    (--fps, else FIND_DEFAULT_FPS). --frames spreads frames over each video, whatever its length,
    so with it the window must be given."""
    from malmm_cli.reading.find import default_window

    if options.frames is None and options.fps is None:
        options = dataclasses.replace(options, fps=FIND_DEFAULT_FPS)
    if window is None:
        if options.fps is None:
            raise UsageError(
                "--frames spreads its frames over each video, so no window follows from it: give --window too "
                "(or sample a rate with --fps)",
                option="--window",
            )
        window = default_window(options.fps)
    return options, window


@dataclass
class VideoRun:
    """How a run ended: an outcome per input, failures of the run's own files (the index of the
    reports), and whether stdout failed (a full disk; not a reader that went away)."""

    outcomes: list[Outcome] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stdout_failed: bool = False

    @property
    def bad(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.status in ("failed", "partial")]

    @property
    def failed(self) -> bool:
        return bool(self.bad or self.problems or self.stdout_failed)


def read_videos(paths: list[Path], options: RunOptions, task: VideoTask, reporter: Reporter) -> VideoRun:
    """Read the videos for this task: check everything that can be checked without the model
    (options, inputs, output folder, what is already done), load the model if anything is left,
    read, write each video's results the moment it ends.

    Raises UsageError or SetupError before anything is read; KeyboardInterrupt goes up once the
    finished videos' results are kept (stdout's document closed); StdoutClosed when stdout stopped
    taking results and no --output-dir receives them."""
    from malmm_cli.jobs.batch import plan_resume, run_batch, write_index

    preset, request = task.preset, (task.name, task.request)
    stdout: StdoutWriter | None = None
    outcomes: list[Outcome] = []
    problems: list[str] = []  # failures of the run's own files (the index), beside the videos'
    check_not_stdin(paths, task.name)
    check_engine_options(options)
    check_checkpoint(options)
    check_concat(options, preset)
    options = cap_decode_workers(options, reporter)
    try:
        inputs, outcomes = expand_inputs(paths)
        check_clip_rate(options, inputs)
        inputs, clashes = name_outputs(inputs)
        if options.output_dir is not None:
            if clashes:
                raise UsageError(
                    f"these inputs would write the same results: {shown('; '.join(clashes))} (give their folder "
                    "instead, or run them with different --output-dir)",
                    option="PATH",
                )
            check_output_dir(options.output_dir)
        printing = check_stdout_format(options, len(inputs))
        if options.output_dir is None:  # nothing to resume: every input is read, so each is checked now,
            readable, unreadable = check_inputs(inputs)  # before the settings, which need torch
            outcomes += unreadable
            settings = options.settings(preset, *request) if readable else None
            resume = plan_resume(readable, None, settings, options.formats, options.overwrite)
            pending = resume.pending
        else:  # only the inputs a previous run has not made are checked
            settings = options.settings(preset, *request)
            resume = plan_resume(inputs, options.output_dir, settings, options.formats, options.overwrite)
            outcomes += resume.skipped + resume.failed
            pending, unreadable = check_inputs(resume.pending)
            outcomes += unreadable
        for failure in outcomes:
            if failure.status == "failed":
                reporter.error(f"{failure.path}: {failure.detail}")
        if resume.redone and not options.overwrite:
            changed = sorted({reason for reasons in resume.redone.values() for reason in reasons})
            reporter.info(
                f"{len(resume.redone)} of {counted(len(inputs), 'video')} {plural(len(resume.redone), 'has')} "
                f"results in {options.output_dir} made "
                f"differently ({', '.join(changed)}): they are made again and replaced"
            )
        if resume.skipped:
            some = (
                ""
                if len(resume.skipped) == len(inputs)
                else f"{len(resume.skipped)} of {counted(len(inputs), 'video')}: "
            )
            printed = " (printed from there)" if printing else ""
            reporter.info(f"{some}results made with the same settings are in {options.output_dir}{printed}; "
                          "--overwrite makes them again")  # fmt: skip
        if not printing:
            reporter.info(f"{options.formats[0]} results go to {options.output_dir} only: one file per video")
        single = len(paths) == 1 and not paths[0].is_dir() and not str(paths[0]).startswith("@")  # @: a manifest
        record = settings.to_dict() if settings is not None else None
        stdout = StdoutWriter(options.formats[0], single=single, settings=record) if printing else None
        read, videos_at_once, on_ray = None, 1, nullcontext()
        if pending and options.engine == "ray":  # the model loads in the cluster's actors, not here
            # on_ray: stdout (held by `stdout` already) gets results only, none of Ray's lines
            read, on_ray = _ray_reader(options, preset, task.name, task.readers())
            videos_at_once = len(pending)
        elif pending:
            readers = task.readers()
            malmm = load_model(options, preset, reporter, readers=len(readers), frames=options.most_frames(preset))
            read, videos_at_once = _reader(malmm, options, preset, task.name, readers, reporter)
        if pending or (resume.skipped and stdout is not None):
            skipped = {outcome.path for outcome in resume.skipped}
            with on_ray:
                ran = run_batch(
                    [item for item in inputs if item in pending or item.name in skipped],  # in input order
                    read,
                    videos_at_once=videos_at_once,
                    reporter=reporter,
                    formats=options.formats,
                    output_dir=options.output_dir,
                    stdout=stdout,
                    settings=settings,
                    redone=resume.redone,
                    skipped=resume,
                )
            outcomes += [outcome for outcome in ran if outcome.status != "skipped"]  # those are in already
        elif stdout is not None:
            stdout.close()
        if "html" in options.formats and options.output_dir is not None and not single:
            try:
                index = write_index(options.output_dir, inputs, outcomes, request[0])
                reporter.info(f"Index of the reports: {index}")
            except OSError as error:  # a full disk: the videos' own reports are written, the summary follows
                problems.append(f"cannot write the index of the reports: {error.strerror or error}")
                reporter.error(f"{options.output_dir}: {problems[-1]}")
    except KeyboardInterrupt:
        with suppress(StdoutClosed):
            if stdout is not None:
                stdout.close()  # the finished videos' json list, or the csv header
        raise
    stdout_failed = stdout is not None and stdout.closed is not None and not stdout.closed.reader_gone
    return VideoRun(outcomes, problems, stdout_failed)


@dataclass(frozen=True)
class ModelReading:
    """The loaded model set up to read one task's videos in lockstep (reading/lockstep.py): its
    sampling, memory and generation, the vision batch and feature cache of its streams, and how
    many videos and read-outs fit at once. The video commands and `malmm serve` read through it."""

    malmm: Malmm
    name: str
    sampling: Sampling
    memory: Memory
    generation: GenerationSettings
    files: VideoFiles
    sizes: ReadingSizes

    def read(
        self,
        clips: list[Clip],
        progress: list[Progress],
        done: Callable[[int, VideoResult | Exception], None],
        stopped: Callable[[int], bool] | None = None,
        on_text: Callable[[Growing], None] | None = None,
    ) -> list[VideoResult | Exception]:
        """Read the clips, `sizes.videos` at a time; done(i, result) the moment the i-th ends (and
        the rest of reading/lockstep.read_in_lockstep's hooks)."""
        from malmm_cli.reading.lockstep import read_in_lockstep

        return read_in_lockstep(self.malmm, clips, self.files, self.name, videos_at_once=self.sizes.videos,
                                memory=self.memory, settings=self.generation, progress=progress,
                                answers_per_batch=self.sizes.answers, on_done=done, stopped=stopped,
                                on_text=on_text)  # fmt: skip


def model_reading(
    malmm: Malmm, options: RunOptions, task: Task, name: str, readers: int, cache: FeatureCache | None,
    thumbnails: bool = False,
) -> ModelReading:  # fmt: skip
    """How the model reads `task` with these options (each video with as many `readers`); SetupError
    when the memory bank does not fit the model."""
    from malmm_cli.jobs.loading import reading_sizes, vision_batch_size
    from malmm_cli.reading.pipeline import Memory, VideoFiles, check_memory

    memory = Memory(options.bank(task), options.memory)
    try:
        check_memory(malmm, memory)
    except ValueError as error:
        raise SetupError(str(error)) from error
    generation = options.generation(task)
    vision_batch = vision_batch_size(malmm, options.batch_size)
    sizes = reading_sizes(
        malmm, memory_bank_length=memory.bank_length, frames=options.most_frames(task), readers=readers,
        num_beams=generation.num_beams, max_new_tokens=generation.max_new_tokens, vision_batch=vision_batch,
        videos=options.video_batch,
    )  # fmt: skip
    files = VideoFiles(malmm, vision_batch, cache, thumbnails=thumbnails)
    return ModelReading(malmm, name, options.sampling(task), memory, generation, files, sizes)


def _reader(
    malmm: Malmm, options: RunOptions, task: Task, name: str, readers: list[Reader], reporter: Reporter
) -> tuple[Callable[..., list[VideoResult | Exception]], int]:
    """The function that reads a batch of inputs with the model, and how many videos it reads at once."""
    from malmm_cli.reading.lockstep import input_clip

    reading = model_reading(malmm, options, task, name, len(readers), options.cache(reporter),
                            thumbnails="html" in options.formats)  # fmt: skip

    def read(items: list[Input], progress: list[VideoProgress], done: Callable) -> list[VideoResult | Exception]:
        """Inputs of one sampling in lockstep (reading/lockstep.py): clips of a manifest, of the same times."""
        return reading.read([input_clip(item, reading.sampling, readers) for item in items], progress, done)

    return read, reading.sizes.videos


def _ray_reader(
    options: RunOptions, task: Task, name: str, readers: list[Reader]
) -> tuple[Callable[..., list[VideoResult | Exception]], AbstractContextManager]:
    """The function that reads a batch of inputs on a Ray cluster (malmm_cli/jobs/ray_engine.py), and
    the session to read within (it ends the connection made here)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise SetupError("--engine ray needs Ray: pip install 'malmm[ray]'")
    from malmm_cli.jobs.ray_engine import ClusterError, RayOptions, ReadJob, connect, ray_reader, session
    from malmm_cli.reading.pipeline import Memory

    job = ReadJob(
        load=load_options(options, task, len(readers), frames=options.most_frames(task)), readers=tuple(readers),
        task=name,
        sampling=options.sampling(task), memory=Memory(options.bank(task), options.memory),
        settings=options.generation(task), vision_batch=options.batch_size, cache=not options.no_cache,
        thumbnails="html" in options.formats, video_batch=options.video_batch,
    )  # fmt: skip
    where = RayOptions(address=options.address, workers=options.workers, gpus_per_worker=options.gpus_per_worker)
    try:
        connected_here = connect(where)  # once, before any video: a cluster that refuses is one line
    except ClusterError as error:
        raise SetupError(str(error)) from None
    return ray_reader(job, where, show_progress=not options.quiet), session(connected_here)


def check_inputs(inputs: list[Input]) -> tuple[list[Input], list[Outcome]]:
    """The cheap part of reading each video, before the model loads: the inputs that can be read,
    and the failure of each one that cannot (missing, not a video)."""
    readable, failed = [], []
    for item in inputs:
        try:
            read_head(item.path)  # a missing or empty file is said without loading a decoder
            from malmm_cli.media.probe import check_readable  # PyAV and OpenCV, once a file is there

            check_readable(item.path)
            readable.append(item)
        except VideoError as error:
            failed.append(Outcome(item.name, "failed", str(error)))
    return readable, failed


def check_not_stdin(paths: list[Path], command: str) -> None:
    """`-` is standard input to many tools, but these commands seek in their videos, which a pipe
    cannot do: say where a piped video is read (watch) rather than 'no such file'."""
    if any(str(path) == "-" for path in paths):
        raise UsageError(
            f"{command} reads video files, not standard input: for a stream piped in, use `malmm watch -` "
            "(MPEG-TS, e.g. ffmpeg ... -f mpegts -), or save it to a file first",
            option="PATH",
        )


def check_engine_options(options: RunOptions) -> None:
    """Ray's options mean nothing to the local engine: given without --engine ray they are a usage
    error (they were ignored without a word, so a forgotten --engine ray ran everything here)."""
    given = [flag for flag, value in (("--address", options.address), ("--workers", options.workers),
                                      ("--gpus-per-worker", options.gpus_per_worker)) if value is not None]  # fmt: skip
    if options.engine == "local" and given:
        raise UsageError(
            f"{', '.join(given)} {plural(len(given), 'is')} for --engine ray: add --engine ray, or leave "
            f"{plural(len(given), 'it')} out to read here",
            option=given[0],
        )


def check_concat(options: RunOptions, task: Task) -> None:
    """concat keeps every frame, up to the bank length: with --frames that is known now."""
    frames, bank = options.frames or task.frames, options.bank(task)
    if options.memory == "concat" and options.fps is None and frames > bank:
        raise UsageError(
            f"concat keeps every frame, at most the memory bank length ({bank}): --frames {frames} is more; "
            f"give --frames {bank} or --memory-bank-length {frames}",
            option="--memory",
        )


def check_clip_rate(options: RunOptions, inputs: list[Input]) -> None:
    """A clip's frames are spread over it by --frames (as MA-LMM samples clips): --fps cannot read
    one, and that is known before the model loads."""
    clips = [item for item in inputs if item.clip != (None, None)]
    if options.fps is not None and clips:
        raise UsageError(
            f"{len(clips)} of {len(inputs)} inputs are clips (start/end in the manifest), which are sampled by "
            f"--frames, not --fps: give --frames N instead (first: {shown(clips[0].name)})",
            option="--fps",
        )


def check_stdout_format(options: RunOptions, videos: int) -> bool:
    """Whether stdout gets results. A subtitle file or an HTML report holds one video: several
    videos as srt/vtt/html go to --output-dir only (a usage error without it)."""
    fmt = options.formats[0]
    if fmt not in ("srt", "vtt", "html") or videos <= 1:
        return True
    if options.output_dir is None:
        what = "the report" if fmt == "html" else "the subtitles"
        raise UsageError(
            f"{fmt} holds {what} of one video: for {videos} videos use --output-dir DIR (one .{fmt} "
            "each), or print another format first (-f jsonl)",
            option="--format",
        )
    return False


def available_cpus() -> int:
    """CPUs this process may run on (a container's or taskset's share, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def cap_decode_workers(options: RunOptions, reporter: Reporter) -> RunOptions:
    """More decoding processes than CPUs only make them take turns (64 on 2 CPUs read a clip in
    60 s instead of 0.5 s): cap them at the CPUs this process may use, and say so. The frames read
    are the same whatever the count. On Ray the workers run on the cluster's nodes: left as given."""
    cpus = available_cpus()
    if options.engine != "local" or options.decode_workers <= cpus:
        return options
    reporter.info(f"--decode-workers {options.decode_workers}: this process may use {counted(cpus, 'CPU')}, "
                  f"so frames are decoded in {counted(cpus, 'process')}")  # fmt: skip
    return dataclasses.replace(options, decode_workers=cpus)
