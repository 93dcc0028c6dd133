"""caption, ask and predict: read videos with a task's readers (see reading/pipeline.py)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import typer.core

from malmm_cli.commands.loading import check_checkpoint, check_output_dir, load_model, load_options
from malmm_cli.commands.options import (
    AddressOption,
    AskOutputDirOption,
    BankOption,
    BatchOption,
    BeamsOption,
    CheckpointOption,
    DeviceOption,
    DtypeOption,
    EngineOption,
    FormatOption,
    FpsOption,
    FramesOption,
    GpusOption,
    MaxTokensOption,
    MemoryOption,
    ModelOption,
    NoCacheOption,
    OutputDirOption,
    OverwriteOption,
    PathsArgument,
    PredictOutputDirOption,
    QuantizeOption,
    QuantizeVisionOption,
    QuietOption,
    RayWorkersOption,
    RunOptions,
    SeekOption,
    VideoBatchOption,
    WorkersOption,
    parse_count,
    parse_seconds,
    read_lines,
    shared_options,
)
from malmm_cli.commands.terminal import EXIT_FAILED, EXIT_OK, EXIT_USAGE, stopped_by
from malmm_cli.media.names import shown
from malmm_cli.wording import counted, plural
from models.presets import (
    CAPTION,
    CLASSIFICATION,
    DEFAULT_MODEL,
    QUESTION,
    Task,
)

if TYPE_CHECKING:  # the heavy modules (torch, transformers, OpenCV) load only when a command runs
    from malmm_cli.commands.progress import Reporter, VideoProgress
    from malmm_cli.media.inputs import Input
    from malmm_cli.reading.pipeline import Reader
    from malmm_cli.reading.results import VideoResult
    from models.malmm import Malmm


def _check_clip_rate(options: RunOptions, inputs: list[Input]) -> None:
    """A clip's frames are spread over it by --frames (as MA-LMM samples clips): --fps cannot read
    one, and that is known before the model loads."""
    clips = [item for item in inputs if item.clip != (None, None)]
    if options.fps is not None and clips:
        raise typer.BadParameter(
            f"{len(clips)} of {len(inputs)} inputs are clips (start/end in the manifest), which are sampled by "
            f"--frames, not --fps: give --frames N instead (first: {shown(clips[0].name)})",
            param_hint="--fps",
        )


def _check_engine_options(options: RunOptions) -> None:
    """Ray's options mean nothing to the local engine: given without --engine ray they are a usage
    error (they were ignored without a word, so a forgotten --engine ray ran everything here)."""
    given = [flag for flag, value in (("--address", options.address), ("--workers", options.workers),
                                      ("--gpus-per-worker", options.gpus_per_worker)) if value is not None]  # fmt: skip
    if options.engine == "local" and given:
        raise typer.BadParameter(
            f"{', '.join(given)} {plural(len(given), 'is')} for --engine ray: add --engine ray, or leave "
            f"{plural(len(given), 'it')} out to read here",
            param_hint=given[0],
        )


def available_cpus() -> int:
    """CPUs this process may run on (a container's or taskset's share, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _cap_decode_workers(options: RunOptions, reporter: Reporter) -> RunOptions:
    """More decoding processes than CPUs only make them take turns (64 on 2 CPUs read a clip in
    60 s instead of 0.5 s): cap them at the CPUs this process may use, and say so. The frames read
    are the same whatever the count. On Ray the workers run on the cluster's nodes: left as given."""
    cpus = available_cpus()
    if options.engine != "local" or options.decode_workers <= cpus:
        return options
    reporter.info(f"--decode-workers {options.decode_workers}: this process may use {counted(cpus, 'CPU')}, "
                  f"so frames are decoded in {counted(cpus, 'process')}")  # fmt: skip
    return dataclasses.replace(options, decode_workers=cpus)


def _check_not_stdin(paths: list[Path], command: str) -> None:
    """`-` is standard input to many tools, but these commands seek in their videos, which a pipe
    cannot do: say where a piped video is read (watch) rather than 'no such file'."""
    if any(str(path) == "-" for path in paths):
        raise typer.BadParameter(
            f"{command} reads video files, not standard input: for a stream piped in, use `malmm watch -` "
            "(MPEG-TS, e.g. ffmpeg ... -f mpegts -), or save it to a file first",
            param_hint="PATH",
        )


def _check_stdout_format(options: RunOptions, videos: int) -> bool:
    """Whether stdout gets results. A subtitle file or an HTML report holds one video: several
    videos as srt/vtt/html go to --output-dir only (a usage error without it)."""
    fmt = options.formats[0]
    if fmt not in ("srt", "vtt", "html") or videos <= 1:
        return True
    if options.output_dir is None:
        what = "the report" if fmt == "html" else "the subtitles"
        raise typer.BadParameter(
            f"{fmt} holds {what} of one video: for {videos} videos use --output-dir DIR (one .{fmt} "
            "each), or print another format first (-f jsonl)",
            param_hint="--format",
        )
    return False


def _run(
    paths: list[Path],
    options: RunOptions,
    task: Task,
    request: tuple[str, dict[str, object]],
    readers: list[Reader],
    reporter: Reporter | None = None,
) -> None:
    """Read the videos with these readers (the task's description, see pipeline.py): check
    everything that can be checked without the model (inputs, output folder, what is already
    done), load the model if anything is left, run, summarise, exit."""
    from malmm_cli.commands.progress import Reporter, summary_table
    from malmm_cli.jobs.batch import plan_resume, run_batch, write_index
    from malmm_cli.media.inputs import Outcome, expand_inputs, name_outputs
    from malmm_cli.media.video import VideoError, check_readable
    from malmm_cli.output.stdout import StdoutClosed, StdoutWriter

    reporter = reporter or Reporter(quiet=options.quiet)
    stdout: StdoutWriter | None = None
    outcomes: list[Outcome] = []
    problems: list[str] = []  # failures of the run's own files (the index), beside the videos'
    _check_not_stdin(paths, request[0])
    _check_engine_options(options)
    check_checkpoint(options)
    _check_concat(options, task)
    options = _cap_decode_workers(options, reporter)
    try:
        inputs, outcomes = expand_inputs(paths)
        _check_clip_rate(options, inputs)
        inputs, clashes = name_outputs(inputs)
        if options.output_dir is not None:
            if clashes:
                raise typer.BadParameter(
                    f"these inputs would write the same results: {shown('; '.join(clashes))} (give their folder "
                    "instead, or run them with different --output-dir)",
                    param_hint="PATH",
                )
            check_output_dir(options.output_dir)
        printing = _check_stdout_format(options, len(inputs))
        settings = options.settings(task, *request)
        resume = plan_resume(inputs, options.output_dir, settings, options.formats, options.overwrite)
        outcomes += resume.skipped + resume.failed
        pending = []
        for item in resume.pending:  # the cheap part of reading each video, before the model loads
            try:
                check_readable(item.path)
                pending.append(item)
            except VideoError as error:
                outcomes.append(Outcome(item.name, "failed", str(error)))
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
        stdout = StdoutWriter(options.formats[0], single=single, settings=settings.to_dict()) if printing else None
        read, videos_at_once, on_ray = None, 1, nullcontext()
        if pending and options.engine == "ray":  # the model loads in the cluster's actors, not here
            # on_ray: stdout (held by `stdout` already) gets results only, none of Ray's lines
            read, on_ray = _ray_reader(options, task, request[0], readers, reporter)
            videos_at_once = len(pending)
        elif pending:
            malmm = load_model(options, task, reporter, readers=len(readers), frames=options.most_frames(task))
            read, videos_at_once = _reader(malmm, options, task, request[0], readers, reporter)
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
    except KeyboardInterrupt as interrupt:
        with suppress(StdoutClosed):
            if stdout is not None:
                stdout.close()  # the finished videos' json list, or the csv header
        word, status = stopped_by(interrupt)
        reporter.console.print(f"{word}: results of finished videos are kept.")
        raise typer.Exit(status) from None
    except StdoutClosed as closed:  # no --output-dir: nothing else receives the results, so the run stops
        if closed.reader_gone:  # `| head`: the reader has what it wanted
            raise typer.Exit(EXIT_OK) from None
        reporter.error(str(closed))
        raise typer.Exit(EXIT_FAILED) from None
    bad = [o for o in outcomes if o.status in ("failed", "partial")]
    if len(outcomes) > 1 and (bad or not options.quiet):
        reporter.table(summary_table(outcomes))
    stdout_failed = stdout is not None and stdout.closed is not None and not stdout.closed.reader_gone
    raise typer.Exit(EXIT_FAILED if bad or problems or stdout_failed else EXIT_OK)


def _reader(
    malmm: Malmm, options: RunOptions, task: Task, name: str, readers: list[Reader], reporter: Reporter
) -> tuple[Callable[..., list[VideoResult | Exception]], int]:
    """The function that reads a batch of inputs with the model, and how many videos it reads at once."""
    from malmm_cli.jobs.loading import planned_bank, reading_sizes, vision_batch_size
    from malmm_cli.media.inputs import clip_sampling
    from malmm_cli.media.video import VideoError
    from malmm_cli.reading.pipeline import Memory, check_memory, read_videos

    memory = Memory(options.bank(task), options.memory)
    try:
        check_memory(malmm, memory)
    except ValueError as error:
        reporter.error(str(error))
        raise typer.Exit(EXIT_USAGE) from error
    generation = options.generation(task)
    vision_batch = vision_batch_size(malmm, options.batch_size)
    bank = planned_bank(memory.bank_length, options.most_frames(task))
    sizes = reading_sizes(
        malmm, memory_bank_length=bank, readers=len(readers), num_beams=generation.num_beams,
        max_new_tokens=generation.max_new_tokens, vision_batch=vision_batch, videos=options.video_batch,
    )  # fmt: skip
    cache = options.cache(reporter)

    def read(items: list[Input], progress: list[VideoProgress], done: Callable) -> list[VideoResult | Exception]:
        """Videos of one sampling in lockstep: clips of a manifest are grouped by their times."""
        results: list[VideoResult | Exception | None] = [None] * len(items)
        groups: dict[tuple, list[int]] = {}
        for number, item in enumerate(items):
            groups.setdefault(item.clip, []).append(number)
        for numbers in groups.values():
            try:
                sampling = clip_sampling(options.sampling(task), items[numbers[0]])
            except VideoError as error:
                for number in numbers:
                    results[number] = error
                    done(number, error)
                continue
            read_back = read_videos(
                malmm, [items[n].path for n in numbers], readers, name, sampling=sampling, memory=memory,
                settings=generation, progress=[progress[n] for n in numbers], batch_size=vision_batch, cache=cache,
                answers_per_batch=sizes.answers, on_done=lambda i, result, numbers=numbers: done(numbers[i], result),
                thumbnails="html" in options.formats,
            )  # fmt: skip
            for number, result in zip(numbers, read_back, strict=True):
                results[number] = result
        return results

    return read, sizes.videos


def _ray_reader(
    options: RunOptions, task: Task, name: str, readers: list[Reader], reporter: Reporter
) -> tuple[Callable[..., list[VideoResult | Exception]], AbstractContextManager]:
    """The function that reads a batch of inputs on a Ray cluster (malmm_cli/jobs/ray_engine.py), and
    the session to read within (it ends the connection made here)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        reporter.error("--engine ray needs Ray: pip install 'malmm[ray]'")
        raise typer.Exit(EXIT_USAGE)
    from malmm_cli.jobs.ray_engine import ClusterError, RayOptions, ReadJob, connect, ray_reader, session
    from malmm_cli.reading.pipeline import Memory

    job = ReadJob(
        load=load_options(options, task, len(readers), frames=options.most_frames(task)), readers=tuple(readers),
        task=name,
        sampling=options.sampling(task), memory=Memory(options.bank(task), options.memory),
        settings=options.generation(task), vision_batch=options.batch_size, cache=not options.no_cache,
        thumbnails="html" in options.formats,
    )  # fmt: skip
    where = RayOptions(address=options.address, workers=options.workers, gpus_per_worker=options.gpus_per_worker)
    try:
        connected_here = connect(where)  # once, before any video: a cluster that refuses is one line
    except ClusterError as error:
        reporter.error(str(error))
        raise typer.Exit(EXIT_USAGE) from None
    return ray_reader(job, where, show_progress=not options.quiet), session(connected_here)


def _check_concat(options: RunOptions, task: Task) -> None:
    """concat keeps every frame, up to the bank length: with --frames that is known now."""
    frames, bank = options.frames or task.frames, options.bank(task)
    if options.memory == "concat" and options.fps is None and frames > bank:
        raise typer.BadParameter(
            f"concat keeps every frame, at most the memory bank length ({bank}): --frames {frames} is more; "
            f"give --frames {bank} or --memory-bank-length {frames}",
            param_hint="--memory",
        )


def caption(
    ctx: typer.Context,
    paths: PathsArgument,
    segment: Annotated[
        float | None,
        typer.Option(
            "--segment",
            "-s",
            metavar="DURATION",
            parser=parse_seconds,
            help="Also caption each segment of this length (90, 90s, 1m30s, 00:01:30).",
        ),
    ] = None,
    # the options every task command shares (RunOptions)
    model: ModelOption = DEFAULT_MODEL,
    checkpoint: CheckpointOption = None,
    frames: FramesOption = None,
    fps: FpsOption = None,
    memory_bank_length: BankOption = None,
    memory: MemoryOption = "malmm",
    format: FormatOption = None,
    output_dir: OutputDirOption = None,
    overwrite: OverwriteOption = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quantize: QuantizeOption = "auto",
    quantize_vision: QuantizeVisionOption = "none",
    max_new_tokens: MaxTokensOption = None,
    num_beams: BeamsOption = None,
    batch_size: BatchOption = None,
    video_batch: VideoBatchOption = None,
    seek: SeekOption = "exact",
    decode_workers: WorkersOption = 1,
    no_cache: NoCacheOption = False,
    quiet: QuietOption = False,
    engine: EngineOption = "local",
    address: AddressOption = None,
    workers: RayWorkersOption = None,
    gpus_per_worker: GpusOption = None,
) -> None:
    """Caption each video (defaults: 80 frames, memory bank 40); with --segment, each segment too.

    PATH is a video file, several files, a folder (searched recursively for videos) or @FILE, a
    manifest (one path per line, or JSONL rows with "video" and optional "start"/"end" seconds).
    """
    options = shared_options(ctx)
    from malmm_cli.reading.pipeline import caption_readers

    _run(paths, options, CAPTION, ("caption", {"segment": segment}), caption_readers(segment))


def ask(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(metavar="PATH", hidden=True, show_default=False)],
    question: Annotated[str | None, typer.Argument(metavar="QUESTION", hidden=True, show_default=False)] = None,
    question_file: Annotated[
        Path | None,
        typer.Option("--question-file", metavar="FILE", help="Questions, one per line (blank and # lines skipped)."),
    ] = None,
    # the options every task command shares (RunOptions)
    model: ModelOption = DEFAULT_MODEL,
    checkpoint: CheckpointOption = None,
    frames: FramesOption = None,
    fps: FpsOption = None,
    memory_bank_length: BankOption = None,
    memory: MemoryOption = "malmm",
    format: FormatOption = None,
    output_dir: AskOutputDirOption = None,
    overwrite: OverwriteOption = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quantize: QuantizeOption = "auto",
    quantize_vision: QuantizeVisionOption = "none",
    max_new_tokens: MaxTokensOption = None,
    num_beams: BeamsOption = None,
    batch_size: BatchOption = None,
    video_batch: VideoBatchOption = None,
    seek: SeekOption = "exact",
    decode_workers: WorkersOption = 1,
    no_cache: NoCacheOption = False,
    quiet: QuietOption = False,
    engine: EngineOption = "local",
    address: AddressOption = None,
    workers: RayWorkersOption = None,
    gpus_per_worker: GpusOption = None,
) -> None:
    """Answer questions about a video (defaults: 20 frames, memory bank 10).

    PATH is a video file, a folder of videos or @FILE (a manifest); QUESTION the question, or give
    several with --question-file. Each question reads the video through its own memory, all in one pass.
    """
    options = shared_options(ctx)
    questions = [question.strip()] if question and question.strip() else []
    if question_file is not None:
        questions += read_lines(question_file, "questions", "--question-file")
    if not questions:
        raise typer.BadParameter("give a QUESTION or --question-file", param_hint="QUESTION")
    from malmm_cli.reading.pipeline import question_readers

    _run([path], options, QUESTION, ("ask", {"questions": questions}), question_readers(questions))


def predict(
    ctx: typer.Context,
    paths: PathsArgument,
    labels: Annotated[
        Path | None,
        typer.Option("--labels", "-l", metavar="FILE", help="Closed-set labels, one per line: rank them."),
    ] = None,
    every: Annotated[
        float | None,
        typer.Option(
            "--every",
            "-e",
            metavar="DURATION",
            parser=parse_seconds,
            help="Timeline interval (default 60s without --labels, none with them).",
        ),
    ] = None,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", metavar="K", parser=parse_count, help="How many ranked labels to report.")
    ] = 5,
    # the options every task command shares (RunOptions)
    model: ModelOption = DEFAULT_MODEL,
    checkpoint: CheckpointOption = None,
    frames: FramesOption = None,
    fps: FpsOption = None,
    memory_bank_length: BankOption = None,
    memory: MemoryOption = "malmm",
    format: FormatOption = None,
    output_dir: PredictOutputDirOption = None,
    overwrite: OverwriteOption = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quantize: QuantizeOption = "auto",
    quantize_vision: QuantizeVisionOption = "none",
    max_new_tokens: MaxTokensOption = None,
    num_beams: BeamsOption = None,
    batch_size: BatchOption = None,
    video_batch: VideoBatchOption = None,
    seek: SeekOption = "exact",
    decode_workers: WorkersOption = 1,
    no_cache: NoCacheOption = False,
    quiet: QuietOption = False,
    engine: EngineOption = "local",
    address: AddressOption = None,
    workers: RayWorkersOption = None,
    gpus_per_worker: GpusOption = None,
) -> None:
    """Action predictions (defaults: 100 frames, memory bank 20): a timeline and the next action, or
    ranked --labels.

    PATH is a video file, several files, a folder (searched recursively for videos) or @FILE, a
    manifest (one path per line, or JSONL rows with "video" and optional "start"/"end" seconds).
    """
    options = shared_options(ctx)
    from malmm_cli.commands.progress import Reporter

    reporter = Reporter(quiet=options.quiet)
    label_list = read_lines(labels, "labels", "--labels") if labels is not None else None
    if label_list is not None and len(set(label_list)) < len(label_list):
        repeated = sorted({label for label in label_list if label_list.count(label) > 1})
        reporter.warn(f"labels given more than once are ranked once: {', '.join(repeated)}")
        label_list = list(dict.fromkeys(label_list))
    every_seconds = every if every is not None else (None if label_list else 60.0)
    request = {"labels": label_list, "every": every_seconds, "top_k": top_k if label_list else None}
    from malmm_cli.reading.pipeline import predict_readers

    readers = predict_readers(label_list, every_seconds, top_k)
    _run(paths, options, CLASSIFICATION, ("predict", request), readers, reporter)
