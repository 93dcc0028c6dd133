"""caption (and caption --dense), ask (and ask --timed), predict and find: read videos for a task
(the job is jobs/videos.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
    FindOutputDirOption,
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
    SeekOption,
    VideoBatchOption,
    WorkersOption,
    choice_of,
    parse_count,
    parse_seconds,
    shared_options,
)
from malmm_cli.commands.progress import Reporter, summary_table
from malmm_cli.commands.terminal import EXIT_FAILED, EXIT_OK, refusals, stopped_by
from malmm_cli.jobs.model import RunOptions, read_lines
from malmm_cli.jobs.videos import (
    VideoTask,
    ask_task,
    caption_task,
    dense_task,
    find_sampling,
    find_task,
    predict_task,
    read_videos,
)
from malmm_cli.output.stdout import StdoutClosed
from models.presets import DEFAULT_MODEL


def run(paths: list[Path], options: RunOptions, task: VideoTask, reporter: Reporter | None = None) -> None:
    """Run the job; summarise; exit with its status (0 all done, 1 some failed, 2 refused)."""
    reporter = reporter or Reporter(quiet=options.quiet)
    try:
        with refusals(reporter):
            ran = read_videos(paths, options, task, reporter)
    except KeyboardInterrupt as interrupt:
        word, status = stopped_by(interrupt)
        reporter.console.print(f"{word}: results of finished videos are kept.")
        raise typer.Exit(status) from None
    except StdoutClosed as closed:  # no --output-dir: nothing else receives the results, so the run stopped
        if closed.reader_gone:  # `| head`: the reader has what it wanted
            raise typer.Exit(EXIT_OK) from None
        reporter.error(str(closed))
        raise typer.Exit(EXIT_FAILED) from None
    if len(ran.outcomes) > 1 and (ran.bad or not options.quiet):
        reporter.table(summary_table(ran.outcomes))
    raise typer.Exit(EXIT_FAILED if ran.failed else EXIT_OK)


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
    dense: Annotated[
        bool,
        typer.Option(
            "--dense",
            help="Dense captions: events with their times, as a checkpoint trained with --task dense "
            "writes them (docs/time-aware.md).",
        ),
    ] = False,
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
    """Caption each video (defaults: 80 frames, memory bank 40); with --segment, each segment too;
    with --dense, its events with their times (results named <video>.dense.<format>).

    PATH is a video file, several files, a folder (searched recursively for videos) or @FILE, a
    manifest (one path per line, or JSONL rows with "video" and optional "start"/"end" seconds).
    """
    if dense and segment is not None:
        raise typer.BadParameter("--dense finds its own events over the whole video: leave --segment out",
                                 param_hint="--segment")  # fmt: skip
    run(paths, shared_options(ctx), dense_task() if dense else caption_task(segment))


def ask(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(metavar="PATH", hidden=True, show_default=False)],
    question: Annotated[str | None, typer.Argument(metavar="QUESTION", hidden=True, show_default=False)] = None,
    question_file: Annotated[
        Path | None,
        typer.Option("--question-file", metavar="FILE", help="Questions, one per line (blank and # lines skipped)."),
    ] = None,
    timed: Annotated[
        bool,
        typer.Option(
            "--timed",
            help='QUESTION names a moment ("the screen turns red"): ask when it happens, as --task ground '
            "trains, and show the answer's times as cues (docs/time-aware.md).",
        ),
    ] = False,
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
    With --timed (defaults: 80 frames, memory bank 20), each is asked when it happens, and the answer's
    spans become timed cues.
    """
    options = shared_options(ctx)
    questions = [question.strip()] if question and question.strip() else []
    if question_file is not None:
        with refusals():
            questions += read_lines(question_file, "questions", "--question-file")
    if not questions:
        raise typer.BadParameter("give a QUESTION or --question-file", param_hint="QUESTION")
    run([path], options, ask_task(questions, timed))


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
    reporter = Reporter(quiet=options.quiet)
    with refusals():
        label_list = read_lines(labels, "labels", "--labels") if labels is not None else None
    if label_list is not None and len(set(label_list)) < len(label_list):
        repeated = sorted({label for label in label_list if label_list.count(label) > 1})
        reporter.warn(f"labels given more than once are ranked once: {', '.join(repeated)}")
        label_list = list(dict.fromkeys(label_list))
    every_seconds = every if every is not None else (None if label_list else 60.0)
    run(paths, options, predict_task(label_list, every_seconds, top_k), reporter)


def parse_score_threshold(text: str) -> float:
    """A score between 0 and 1 (both rules score in [0, 1])."""
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"must be a number between 0 and 1, not {text}") from None
    if not 0 <= value <= 1:
        raise typer.BadParameter(f"must be between 0 and 1, not {text}")
    return value


def find(
    ctx: typer.Context,
    arguments: Annotated[list[str], typer.Argument(metavar="PATH... QUERY", hidden=True, show_default=False)],
    query_file: Annotated[
        Path | None,
        typer.Option("--query-file", metavar="FILE", help="Queries, one per line (blank and # lines skipped)."),
    ] = None,
    window: Annotated[
        float | None,
        typer.Option(
            "--window",
            "-w",
            metavar="DURATION",
            parser=parse_seconds,
            help="Window length (default: 4 frames at the sampled rate, 4s at the default 1 frame/s).",
        ),
    ] = None,
    score: Annotated[
        str,
        typer.Option(
            "--score",
            metavar="[likelihood|yes]",
            parser=choice_of("likelihood", "yes"),
            help="How a window is scored (docs/find.md).",
        ),
    ] = "likelihood",
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold",
            metavar="SCORE",
            parser=parse_score_threshold,
            help="Windows scoring at least this (0 to 1) make moments.",
        ),
    ] = 0.5,
    min_gap: Annotated[
        float | None,
        typer.Option(
            "--min-gap", metavar="DURATION", parser=parse_seconds, help="Join moments this close (default: one window)."
        ),
    ] = None,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", metavar="K", parser=parse_count, help="How many moments to report.")
    ] = 5,
    # the options every task command shares (RunOptions)
    model: ModelOption = DEFAULT_MODEL,
    checkpoint: CheckpointOption = None,
    frames: FramesOption = None,
    fps: FpsOption = None,
    memory_bank_length: BankOption = None,
    memory: MemoryOption = "malmm",
    format: FormatOption = None,
    output_dir: FindOutputDirOption = None,
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
    """Find where each query happens in the videos (default: 1 frame/s in 4s windows, memory bank 10).

    PATH is a video file, several files, a folder or @FILE (a manifest); QUERY what to find (the last
    argument), or give several with --query-file: all queries share one read of each video. Each
    window is read by a memory of its own and scored; windows above --threshold make moments.
    """
    options = shared_options(ctx)
    paths, queries = [Path(a) for a in arguments], []
    if query_file is not None:
        with refusals():
            queries = read_lines(query_file, "queries", "--query-file")
    elif len(arguments) > 1 and arguments[-1].strip():
        paths, queries = paths[:-1], [arguments[-1].strip()]
    if not queries or not paths:
        raise typer.BadParameter("give PATH... and a QUERY (the last argument), or --query-file", param_hint="QUERY")
    with refusals():
        options, window = find_sampling(options, window)
    gap = window if min_gap is None else min_gap
    run(paths, options, find_task(list(dict.fromkeys(queries)), window, score, threshold, gap, top_k))
