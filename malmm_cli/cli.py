"""The `malmm` command: a thin Typer layer over pipeline.py.

Exit status: 0 every input succeeded (or was already done), 1 some input failed or was only
partly readable, 2 usage error (bad option, a model/checkpoint that cannot be loaded, or a Ray
cluster that cannot be joined), 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import typer.core

from malmm_cli import __version__
from malmm_cli.dataset import TASK_TARGETS
from malmm_cli.events import EVENT_FORMATS
from malmm_cli.names import shown
from malmm_cli.timefmt import parse_duration
from malmm_cli.wording import counted, plural
from models.presets import (
    CAPTION,
    CLASSIFICATION,
    DEFAULT_MODEL,
    MEMORY_STRATEGIES,
    QUESTION,
    TRAINED_WEIGHTS,
    GenerationSettings,
    Task,
)

if TYPE_CHECKING:  # the heavy modules (torch, transformers, OpenCV) load only when a command runs
    from rich.console import Console
    from rich.table import Table

    from malmm_cli.batch import Input
    from malmm_cli.feature_cache import FeatureCache
    from malmm_cli.loading import LoadOptions
    from malmm_cli.pipeline import Reader, Sampling
    from malmm_cli.progress import Reporter, VideoProgress
    from malmm_cli.records import Settings
    from malmm_cli.results import VideoResult
    from models.malmm import Malmm
    from models.memory_plan import TrainingShape

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a service manager stopping malmm), raised by `main()`'s handler: it takes
    Ctrl-C's way out (finished results kept, stdout's document closed), with its own word and status."""


def _stopped(interrupt: KeyboardInterrupt) -> tuple[str, int]:
    """How a run stopped by a signal is named to the user, and its exit status."""
    if isinstance(interrupt, Terminated):
        return "Terminated", EXIT_TERMINATED
    return "Interrupted", EXIT_INTERRUPTED


class PlainUsage(typer.core.TyperCommand):
    """A usage line as POSIX writes it (`malmm caption [OPTIONS] PATH...`): Typer braces required
    arguments (`{PATH}...`), which reads like a set or a template to fill in."""

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if not isinstance(param, typer.core.TyperArgument):
                pieces += param.get_usage_pieces(ctx)
                continue
            name = param.metavar or param.name.upper()
            name = name if param.required else f"[{name}]"
            pieces.append(f"{name}..." if param.nargs != 1 else name)
        return pieces


app = typer.Typer(
    name="malmm",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


FORMATS = ("txt", "json", "jsonl", "srt", "vtt", "csv", "html")
QUANTIZE_CHOICES = ("auto", "none", "8bit", "4bit")
DTYPES = ("auto", "float16", "bfloat16", "float32")


# Option values are parsed here, so that a bad value gets a plain sentence rather than a type name.
def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a whole number") from None
    if value < least:
        raise typer.BadParameter(f"must be {least} or more, not {value}")
    return value


def _count(text: str) -> int:
    return _whole(text, 1)


def _attempts(text: str) -> int:
    return _whole(text, 0)


def _positive(text: str, what: str = "a positive number") -> float:
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise typer.BadParameter(f"must be {what}, not {text}")
    return value


def _gpus(text: str) -> float:
    """GPUs per Ray worker: 0 (a CPU cluster) or more, fractions allowed."""
    try:
        if float(text) == 0:
            return 0.0
    except ValueError:
        pass  # said below
    return _positive(text, "0 or a positive number of GPUs")


def _rate(text: str) -> float:
    return _positive(text, "a positive number of frames per second")


def _seconds(text: str | float) -> float:
    if isinstance(text, float):  # a default, already in seconds
        return text
    try:
        return parse_duration(text)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise typer.BadParameter(f"{text!r} is not one of: {', '.join(choices)}")
        return text

    return parse


def _metavar(choices: tuple[str, ...]) -> str:
    return f"[{'|'.join(choices)}]"


# Options every task command shares. Frames and bank length default to the task's MA-LMM setting.
ModelOption = Annotated[
    str,
    typer.Option(
        "--model", "-m", metavar="MODEL", help="Hugging Face hub id or local folder of an InstructBLIP model."
    ),
]
CheckpointOption = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        "-c",
        metavar="FILE",
        help="MA-LMM fine-tuned checkpoint (LAVIS .pth), or a `malmm train` run folder, loaded on top of --model.",
    ),
]
FramesOption = Annotated[
    int | None,
    typer.Option("--frames", "-n", metavar="N", parser=_count, help="Frames sampled uniformly over each video."),
]
FpsOption = Annotated[
    float | None,
    typer.Option("--fps", metavar="FPS", parser=_rate, help="Sample this many frames per second instead of --frames."),
]
BankOption = Annotated[
    int | None,
    typer.Option(
        "--memory-bank-length", "-b", metavar="L", parser=_count, help="Memory bank length (frames remembered)."
    ),
]
FormatOption = Annotated[
    list[str] | None,
    typer.Option(
        "--format", "-f", metavar=_metavar(FORMATS), parser=_choice(*FORMATS),
        help="Output format; repeat for several. stdout gets the first, --output-dir all.",
    ),
]  # fmt: skip


def _output_dir_option(example: str) -> typer.models.OptionInfo:
    """--output-dir, with an example name of the command's own results (ask's help showed a caption's)."""
    return typer.Option(
        "--output-dir", "-o", metavar="DIR", help=f"Write results here, named after each input and task ({example})."
    )


OutputDirOption = Annotated[Path | None, _output_dir_option("clip.mp4 -> clip.caption.srt")]
AskOutputDirOption = Annotated[Path | None, _output_dir_option("clip.mp4 -> clip.ask.txt")]
PredictOutputDirOption = Annotated[Path | None, _output_dir_option("clip.mp4 -> clip.predict.json")]
OverwriteOption = Annotated[
    bool, typer.Option("--overwrite", help="Redo inputs even when their results were made with the same settings.")
]
DeviceOption = Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOption = Annotated[
    str,
    typer.Option(
        "--dtype", metavar=_metavar(DTYPES), parser=_choice(*DTYPES),
        help="Of the vision encoder and LLM: auto is float16 on GPU (bfloat16 for T5), float32 on CPU.",
    ),
]  # fmt: skip
QuantizeOption = Annotated[
    str,
    typer.Option(
        "--quantize", metavar=_metavar(QUANTIZE_CHOICES), parser=_choice(*QUANTIZE_CHOICES),
        help="LLM weights: auto picks none, 8bit or 4bit to fit the free memory.",
    ),
]  # fmt: skip
QuantizeVisionOption = Annotated[
    str,
    typer.Option(
        "--quantize-vision", metavar="[none|8bit]", parser=_choice("none", "8bit"),
        help="Also shrink the 1B-parameter vision encoder to 8-bit.",
    ),
]  # fmt: skip
MaxTokensOption = Annotated[
    int | None,
    typer.Option("--max-new-tokens", metavar="N", parser=_count, help="Longest answer, in tokens (task default)."),
]
BeamsOption = Annotated[
    int | None, typer.Option("--num-beams", metavar="N", parser=_count, help="Beam search width (default 5).")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or info lines on stderr.")]
BatchOption = Annotated[
    int | None,
    typer.Option(
        "--batch-size", metavar="N", parser=_count,
        help="Frames the vision encoder reads at once (default: fit free memory).",
    ),
]  # fmt: skip
SeekOption = Annotated[
    str,
    typer.Option(
        "--seek", metavar="[exact|keyframe]", parser=_choice("exact", "keyframe"),
        help="exact: the frame at each time; keyframe: nearest keyframes, much faster (H.264).",
    ),
]  # fmt: skip
WorkersOption = Annotated[
    int,
    typer.Option(
        "--decode-workers",
        metavar="N",
        parser=_count,
        help="Decode exact frames in N processes (at most the CPUs available).",
    ),
]
MemoryOption = Annotated[
    str,
    typer.Option(
        "--memory", metavar=_metavar(MEMORY_STRATEGIES), parser=_choice(*MEMORY_STRATEGIES),
        help="How the past is kept: malmm merges similar frames (default); fifo drops the oldest; avgpool, "
        "concat and none read each frame alone and give the LLM their mean, all of them, or the last.",
    ),
]  # fmt: skip
VideoBatchOption = Annotated[
    int | None,
    typer.Option(
        "--video-batch", metavar="N", parser=_count,
        help="Videos of a folder read at once, in lockstep (default: what fits, at most 8).",
    ),
]  # fmt: skip
NoCacheOption = Annotated[
    bool, typer.Option("--no-cache", help="Neither read nor write the vision feature cache (see `malmm cache`).")
]
EngineOption = Annotated[
    str,
    typer.Option(
        "--engine", metavar="[local|ray]", parser=_choice("local", "ray"),
        help="Where videos are read: this process, or a Ray cluster (pip install 'malmm[ray]').",
    ),
]  # fmt: skip
AddressOption = Annotated[
    str | None,
    typer.Option("--address", metavar="ADDR", help="Ray cluster to join (default: a local one; RAY_ADDRESS too)."),
]
RayWorkersOption = Annotated[
    int | None,
    typer.Option("--workers", metavar="N", parser=_count, help="Ray actors holding the model (default: one per GPU)."),
]
GpusOption = Annotated[
    float | None,
    typer.Option("--gpus-per-worker", metavar="G", parser=_gpus,
                 help="GPUs each Ray actor takes (default: 1 where the cluster has GPUs)."),
]  # fmt: skip
# Arguments are described in each command's help text: Typer would print their Python types.
PathsArgument = Annotated[list[Path], typer.Argument(metavar="PATH", hidden=True, show_default=False)]


@dataclass
class RunOptions:
    """The options every task command shares: each command declares them (Typer reads a command's
    options from its signature) and `_shared` gathers them here."""

    model: ModelOption = DEFAULT_MODEL
    checkpoint: CheckpointOption = None
    frames: FramesOption = None
    fps: FpsOption = None
    memory_bank_length: BankOption = None
    memory: MemoryOption = "malmm"
    format: FormatOption = None
    output_dir: OutputDirOption = None
    overwrite: OverwriteOption = False
    device: DeviceOption = "auto"
    dtype: DtypeOption = "auto"
    quantize: QuantizeOption = "auto"
    quantize_vision: QuantizeVisionOption = "none"
    max_new_tokens: MaxTokensOption = None
    num_beams: BeamsOption = None
    batch_size: BatchOption = None
    video_batch: VideoBatchOption = None
    seek: SeekOption = "exact"
    decode_workers: WorkersOption = 1
    no_cache: NoCacheOption = False
    quiet: QuietOption = False
    engine: EngineOption = "local"
    address: AddressOption = None
    workers: RayWorkersOption = None
    gpus_per_worker: GpusOption = None

    def __post_init__(self) -> None:
        if self.frames is not None and self.fps is not None:
            raise typer.BadParameter("give --frames or --fps, not both", param_hint="--frames/--fps")
        if len(set(self.formats)) != len(self.formats):
            raise typer.BadParameter("a format is given twice", param_hint="--format")
        if self.checkpoint is not None and self.checkpoint.is_dir():  # a `malmm train` run: its weights
            self.checkpoint = self.checkpoint / TRAINED_WEIGHTS

    @property
    def formats(self) -> list[str]:
        return list(self.format or ["txt"])

    def cache(self, reporter: Reporter) -> FeatureCache | None:
        from malmm_cli.feature_cache import FeatureCache

        return None if self.no_cache else FeatureCache(on_problem=reporter.warn)

    def sampling(self, task: Task) -> Sampling:
        from malmm_cli.pipeline import Sampling

        rate = {"fps": self.fps} if self.fps is not None else {"frames": self.frames or task.frames}
        return Sampling(**rate, seek=self.seek, decode_workers=self.decode_workers)

    def bank(self, task: Task) -> int:
        return self.memory_bank_length or task.memory_bank_length

    def most_frames(self, task: Task) -> int | None:
        """The most frames a video reads: --frames (clips too), else None: with --fps it follows
        each video's length, so the memory is planned for the whole bank."""
        return None if self.fps is not None else self.frames or task.frames

    def generation(self, task: Task) -> GenerationSettings:
        return task.generation.with_overrides(max_new_tokens=self.max_new_tokens, num_beams=self.num_beams)

    def settings(self, task: Task, name: str, request: dict[str, object]) -> Settings:
        """What the results of this run depend on, for the records beside them."""
        from malmm_cli.feature_cache import default_cache_dir
        from malmm_cli.loading import SetupError, resolve_device
        from malmm_cli.records import Settings, checkpoint_identity, model_identity

        try:
            device = resolve_device(self.device).split(":")[0]
        except SetupError as error:
            raise typer.BadParameter(str(error), param_hint="--device") from error
        memo = None if self.no_cache or not default_cache_dir().is_dir() else default_cache_dir()
        return Settings(
            task=name, request=request, model=model_identity(self.model),
            checkpoint=checkpoint_identity(self.checkpoint, memo), sampling=self.sampling(task).describe(),
            memory_bank_length=self.bank(task),
            precision={"device": device, "dtype": self.dtype, "quantize": self.quantize,
                       "quantize_vision": self.quantize_vision},
            generation=dataclasses.asdict(self.generation(task)), memory=self.memory,
        )  # fmt: skip


def _shared(ctx: typer.Context) -> RunOptions:
    """The shared options of a task command (each declares them all) as one RunOptions."""
    return RunOptions(**{f.name: ctx.params[f.name] for f in dataclasses.fields(RunOptions)})


def _read_lines(path: Path, what: str, option: str) -> list[str]:
    """Non-empty stripped lines of a text file (questions, labels)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise typer.BadParameter(f"cannot read {shown(path)}: {error.strerror or error}", param_hint=option) from error
    try:
        lines = [line.strip() for line in data.decode("utf-8-sig").splitlines()]
    except UnicodeDecodeError as error:  # Python's words ('utf-8' codec, position 1234) help nobody find it
        number = data[: error.start].count(b"\n") + 1
        raise typer.BadParameter(
            f"{shown(path)} is not UTF-8 text (line {number}): save it as UTF-8 and run again", param_hint=option
        ) from error
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise typer.BadParameter(f"{shown(path)} has no {what} (one per line)", param_hint=option)
    return lines


def load_model(
    options: RunOptions,
    task: Task,
    reporter: Reporter,
    readers: int = 1,
    training: TrainingShape | None = None,
    frames: int | None = None,
) -> Malmm:
    """Load the model once for all inputs; a model that cannot be run as asked is a usage error.
    training: plan the memory of training steps of this shape instead of reading videos. frames:
    the most any video reads (None: not known, a stream), which bounds the memory bank planned."""
    from transformers.utils import logging as transformers_logging

    from malmm_cli.loading import SetupError, load, locate
    from models.checkpoint import CheckpointError

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    load_options = _load_options(options, task, readers, training, frames)
    try:
        folder = locate(options.model, reporter.downloading)
        with reporter.status(f"Loading {options.model}"):
            malmm, mode, plan = load(load_options, folder)
    except (SetupError, CheckpointError) as error:
        reporter.error(str(error))
        raise typer.Exit(EXIT_USAGE) from error
    except (OSError, ValueError) as error:
        reporter.error(f"cannot load model {options.model}: {str(error).strip().splitlines()[0]}")
        raise typer.Exit(EXIT_USAGE) from error
    reporter.info(f"Loaded {options.model} on {malmm.device} (quantize {mode}; {plan.describe()})")
    for note in malmm.notes:
        reporter.info(note)
    if malmm.checkpoint_report is not None:
        report = malmm.checkpoint_report
        (reporter.info if report.clean else reporter.warn)(report.message())
    return malmm


def _load_options(
    options: RunOptions, task: Task, readers: int = 1, training: TrainingShape | None = None, frames: int | None = None
) -> LoadOptions:
    """What loading the model needs to know, from the command's options."""
    from malmm_cli.loading import LoadOptions

    generation = options.generation(task)
    return LoadOptions(
        model=options.model, checkpoint=options.checkpoint, device=options.device, dtype=options.dtype,
        quantize=options.quantize, quantize_vision=options.quantize_vision == "8bit",
        memory_bank_length=options.bank(task), readers=readers, num_beams=generation.num_beams,
        max_new_tokens=generation.max_new_tokens, vision_batch=options.batch_size or 8, training=training,
        frames=frames,
    )  # fmt: skip


def _check_checkpoint(options: RunOptions) -> None:
    """A --checkpoint that is not there is a usage error before anything loads. A run folder is
    given as RUN/model.safetensors by now (RunOptions): one without it names the folder, and a run
    that holds only resume/ has not finished an epoch."""
    path = options.checkpoint
    if path is None or path.is_file():
        return
    if path.name == TRAINED_WEIGHTS and path.parent.is_dir():
        unfinished = (path.parent / "resume").is_dir()
        why = ": its run has not finished an epoch yet (go on with `malmm train ... --resume`)" if unfinished else ""
        raise typer.BadParameter(
            f"{shown(path.parent)} is a folder without {TRAINED_WEIGHTS}{why}", param_hint="--checkpoint"
        )
    raise typer.BadParameter(f"{shown(path)}: no such file or folder", param_hint="--checkpoint")


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


def _check_output_dir(folder: Path, option: str = "--output-dir") -> None:
    """The output folder exists or can be made, and a file can be written in it: a usage error
    now rather than every video failing after the model has loaded."""
    if folder.exists() and not folder.is_dir():
        raise typer.BadParameter(f"{shown(folder)} exists and is not a folder", param_hint=option)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".malmm-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        reason = f"cannot write in {shown(folder)}: {error.strerror or error}"
        raise typer.BadParameter(reason, param_hint=option) from None


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
    from malmm_cli.batch import (
        StdoutClosed,
        StdoutWriter,
        expand_inputs,
        name_outputs,
        plan_resume,
        run_batch,
        write_index,
    )
    from malmm_cli.progress import Outcome, Reporter, summary_table
    from malmm_cli.video import VideoError, check_readable

    reporter = reporter or Reporter(quiet=options.quiet)
    stdout: StdoutWriter | None = None
    outcomes: list[Outcome] = []
    problems: list[str] = []  # failures of the run's own files (the index), beside the videos'
    _check_not_stdin(paths, request[0])
    _check_engine_options(options)
    _check_checkpoint(options)
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
            _check_output_dir(options.output_dir)
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
        stdout = StdoutWriter(options.formats[0], single=single, settings=settings) if printing else None
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
        word, status = _stopped(interrupt)
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
    from malmm_cli.batch import input_clip
    from malmm_cli.loading import planned_bank, reading_sizes, vision_batch_size
    from malmm_cli.lockstep import read_in_lockstep
    from malmm_cli.pipeline import Memory, VideoFiles, check_memory

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
    files = VideoFiles(malmm, vision_batch, options.cache(reporter), thumbnails="html" in options.formats)

    def read(items: list[Input], progress: list[VideoProgress], done: Callable) -> list[VideoResult | Exception]:
        """Inputs of one sampling in lockstep (lockstep.py): clips of a manifest, of the same times."""
        clips = [input_clip(item, options.sampling(task), readers) for item in items]
        return read_in_lockstep(malmm, clips, files, name, videos_at_once=sizes.videos, memory=memory,
                                settings=generation, progress=progress, answers_per_batch=sizes.answers,
                                on_done=done)  # fmt: skip

    return read, sizes.videos


def _ray_reader(
    options: RunOptions, task: Task, name: str, readers: list[Reader], reporter: Reporter
) -> tuple[Callable[..., list[VideoResult | Exception]], AbstractContextManager]:
    """The function that reads a batch of inputs on a Ray cluster (malmm_cli/ray_engine.py), and
    the session to read within (it ends the connection made here)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        reporter.error("--engine ray needs Ray: pip install 'malmm[ray]'")
        raise typer.Exit(EXIT_USAGE)
    from malmm_cli.pipeline import Memory
    from malmm_cli.ray_engine import ClusterError, RayOptions, ReadJob, connect, ray_reader, session

    job = ReadJob(
        load=_load_options(options, task, len(readers), frames=options.most_frames(task)), readers=tuple(readers),
        task=name,
        sampling=options.sampling(task), memory=Memory(options.bank(task), options.memory),
        settings=options.generation(task), vision_batch=options.batch_size, cache=not options.no_cache,
        thumbnails="html" in options.formats, video_batch=options.video_batch,
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


@app.command(cls=PlainUsage, short_help="Caption videos, whole and by segment.")
def caption(
    ctx: typer.Context,
    paths: PathsArgument,
    segment: Annotated[
        float | None,
        typer.Option(
            "--segment",
            "-s",
            metavar="DURATION",
            parser=_seconds,
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
    options = _shared(ctx)
    from malmm_cli.pipeline import caption_readers

    _run(paths, options, CAPTION, ("caption", {"segment": segment}), caption_readers(segment))


@app.command(cls=PlainUsage, short_help="Answer questions about videos.")
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
    options = _shared(ctx)
    questions = [question.strip()] if question and question.strip() else []
    if question_file is not None:
        questions += _read_lines(question_file, "questions", "--question-file")
    if not questions:
        raise typer.BadParameter("give a QUESTION or --question-file", param_hint="QUESTION")
    from malmm_cli.pipeline import question_readers

    _run([path], options, QUESTION, ("ask", {"questions": questions}), question_readers(questions))


@app.command(cls=PlainUsage, short_help="Predict actions: a timeline, the next action, or ranked labels.")
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
            parser=_seconds,
            help="Timeline interval (default 60s without --labels, none with them).",
        ),
    ] = None,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", metavar="K", parser=_count, help="How many ranked labels to report.")
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
    options = _shared(ctx)
    from malmm_cli.progress import Reporter

    reporter = Reporter(quiet=options.quiet)
    label_list = _read_lines(labels, "labels", "--labels") if labels is not None else None
    if label_list is not None and len(set(label_list)) < len(label_list):
        repeated = sorted({label for label in label_list if label_list.count(label) > 1})
        reporter.warn(f"labels given more than once are ranked once: {', '.join(repeated)}")
        label_list = list(dict.fromkeys(label_list))
    every_seconds = every if every is not None else (None if label_list else 60.0)
    request = {"labels": label_list, "every": every_seconds, "top_k": top_k if label_list else None}
    from malmm_cli.pipeline import predict_readers

    readers = predict_readers(label_list, every_seconds, top_k)
    _run(paths, options, CLASSIFICATION, ("predict", request), readers, reporter)


@app.command(
    cls=PlainUsage, short_help="Caption a live stream as it happens: a camera, RTSP, UDP, a growing file, stdin."
)
def watch(
    source: Annotated[str, typer.Argument(metavar="SOURCE", hidden=True, show_default=False)],
    every: Annotated[
        float,
        typer.Option(
            "--every",
            metavar="DURATION",
            parser=_seconds,
            help="A caption of each interval of this length.",
        ),
    ] = "10s",  # type: ignore[assignment]  # parsed like a given value: help shows 10s, not 10.0
    question: Annotated[
        str | None, typer.Option("--question", metavar="Q", help="Also answer Q about each interval.")
    ] = None,
    reset_every: Annotated[
        float | None,
        typer.Option(
            "--reset-every",
            metavar="DURATION",
            parser=_seconds,
            help="Start the memory afresh every DURATION (a multiple of --every); by default it runs on.",
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option("--duration", metavar="DURATION", parser=_seconds, help="Stop after this much of the stream."),
    ] = None,
    fps: Annotated[
        float, typer.Option("--fps", metavar="FPS", parser=_rate, help="Frames read per second of stream.")
    ] = 1.0,
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            metavar=_metavar(EVENT_FORMATS),
            parser=_choice(*EVENT_FORMATS),
            help="Events as jsonl (the default when stdout is not a terminal), txt, srt or vtt.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="FILE", help="Also append every event to FILE, durably."),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            metavar="DURATION",
            parser=_seconds,
            help="How long the source may take to open or stay silent before it counts as lost.",
        ),
    ] = "10s",  # type: ignore[assignment]  # parsed like a given value (--every)
    reconnect: Annotated[
        int,
        typer.Option(
            "--reconnect",
            metavar="N",
            parser=_attempts,
            help="Reconnect attempts in a row when a network stream or camera is lost (back-off 1, 2, 4... s).",
        ),
    ] = 5,
    model: ModelOption = DEFAULT_MODEL,
    checkpoint: CheckpointOption = None,
    memory_bank_length: BankOption = None,
    memory: MemoryOption = "malmm",
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quantize: QuantizeOption = "auto",
    quantize_vision: QuantizeVisionOption = "none",
    max_new_tokens: MaxTokensOption = None,
    num_beams: BeamsOption = None,
    batch_size: BatchOption = None,
    quiet: QuietOption = False,
) -> None:
    """Caption a live stream as it plays, every --every of stream time, from the memory of what it
    has seen (never reading back), in memory that stays the same size for hours.

    SOURCE: an RTSP/RTSPS, HTTP(S) (MJPEG, HLS), udp:// or tcp:// URL; a camera (0, /dev/video0);
    a file still being written (MPEG-TS or fragmented MP4, followed like tail -f); or - for
    MPEG-TS on standard input. Events go to stdout as they happen, flushed one by one. When the
    model is slower than the stream, frames are dropped to keep up (each event says how many).
    A lost network stream or camera is reconnected to, keeping the memory and the stream clock.
    Exit status: 0 the stream ended (or --duration), 1 it failed or was lost, 2 usage error,
    130 Ctrl-C (the interval in progress is written first).
    """
    import signal

    from malmm_cli.events import EventWriter, WatchEvent
    from malmm_cli.live import STDIN_ADVICE, LiveStream, SourceError, check_source, check_stdin, parse_source
    from malmm_cli.loading import vision_batch_size
    from malmm_cli.pipeline import Memory, check_memory
    from malmm_cli.progress import LiveStatus, Reporter
    from malmm_cli.video import VideoError
    from malmm_cli.watch import check_watch
    from malmm_cli.watch import watch as watch_stream

    reporter = Reporter(quiet=quiet)
    options = RunOptions(
        model=model, checkpoint=checkpoint, memory_bank_length=memory_bank_length, memory=memory, device=device,
        dtype=dtype, quantize=quantize, quantize_vision=quantize_vision, max_new_tokens=max_new_tokens,
        num_beams=num_beams, batch_size=batch_size, quiet=quiet,
    )  # fmt: skip
    try:
        parsed = parse_source(source)
    except SourceError as error:
        raise typer.BadParameter(str(error), param_hint="SOURCE") from None
    try:
        check_watch(every, fps, reset_every, Memory(options.bank(CAPTION), memory))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--reset-every/--memory") from None
    _check_checkpoint(options)
    try:
        if parsed.kind == "stdin":
            check_stdin()  # a terminal, or an MP4 a pipe cannot give, is said before the model loads
        check_source(parsed, timeout)  # a wrong address is said now, not after the model loads
    except SourceError as error:
        reporter.error(f"{parsed.display}: {error}")
        raise typer.Exit(EXIT_FAILED) from None
    fmt = format or ("txt" if sys.stdout.isatty() else "jsonl")
    try:
        writer = EventWriter(fmt, stdout=True, path=output)
    except OSError as error:
        reason = f"cannot write {shown(output)}: {error.strerror or error}"
        raise typer.BadParameter(reason, param_hint="--output") from None
    except ValueError as error:
        raise typer.BadParameter(shown(str(error)), param_hint="--output") from None
    stopped, closed, problems, streams = [], [], [], []
    name = parsed.display  # no password in messages

    def stop_on_ctrl_c(stream: LiveStream) -> None:
        def handler(signum: int, frame: object) -> None:
            stopped.append(Terminated() if signum == signal.SIGTERM else KeyboardInterrupt())
            stream.stop()
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C quits at once
            reporter.info("Stopping: the interval in progress is written (Ctrl-C again to quit now)")

        streams.append(stream)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)  # a service manager stopping watch: the same way out
        status.describe = stream.status

    def write(event: WatchEvent) -> None:
        try:
            writer.write(event)
        except BrokenPipeError:  # the reader of stdout went away (`| head -3`): stop, quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            closed.append(True)
            streams[0].stop()
        except OSError as error:  # --output cannot be written (disk full...): stop, and say so
            problems.append(f"cannot write {output}: {error.strerror or error}")
            streams[0].stop()

    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    status = LiveStatus(reporter, lambda: f"opening {name}")
    try:
        malmm = load_model(options, CAPTION, reporter, readers=2 if question else 1)
        bank = Memory(options.bank(CAPTION), memory)
        check_memory(malmm, bank)
        reporter.info(f"Watching {name}: a caption every {every:g} s of stream, {fps:g} frames/s read")
        with status:
            summary = watch_stream(
                malmm, parsed, every=every, fps=fps, question=question, reset_every=reset_every, memory=bank,
                settings=options.generation(CAPTION), on_event=write, duration=duration, timeout=timeout,
                reconnect=reconnect, batch_size=vision_batch_size(malmm, batch_size), notify=reporter.warn,
                on_start=stop_on_ctrl_c,
            )  # fmt: skip
    except KeyboardInterrupt as interrupt:
        word, status = _stopped(interrupt)
        reporter.console.print(f"{word}.")
        raise typer.Exit(status) from None
    except (VideoError, ValueError) as error:
        if stopped:  # Ctrl-C before the first frame
            word, status = _stopped(stopped[0])
            reporter.console.print(f"{word} before a frame was read.")
            raise typer.Exit(status) from None
        hint = f" (standard input is read in order, as {STDIN_ADVICE})" if parsed.kind == "stdin" else ""
        reporter.error(f"{name}: {error}{hint}")
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        writer.close()
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    counts = f"{counted(summary.read, 'frame')} read, {summary.dropped} dropped to keep up"
    if stopped:  # Ctrl-C, also when it closed the pipe stdout went to
        word, status = _stopped(stopped[0])
        reporter.console.print(f"{word}: {counts}.")
        raise typer.Exit(status)
    if problems or summary.failed:
        reporter.error(f"{name}: {problems[0] if problems else summary.ended} ({counts})")
        raise typer.Exit(EXIT_FAILED)
    if not closed:
        reporter.info(
            f"{name}: {'--duration reached' if summary.ended == 'duration' else 'the stream ended'} ({counts})"
        )
    raise typer.Exit(EXIT_OK)


# train and eval write one folder, named by -o/--output as watch's one file is; caption, ask and
# predict write a file per input into -o/--output-dir. Folders take either long name: --output-dir
# is accepted, unlisted, by train and eval too.
OutputDirAlias = typer.Option("--output-dir", metavar="DIR", hidden=True)


def _one_output(output: Path | None, alias: Path | None) -> Path | None:
    """The folder given as -o/--output or as its unlisted alias --output-dir, not both."""
    if output is not None and alias is not None and output != alias:
        raise typer.BadParameter("give -o/--output or --output-dir, not both", param_hint="--output")
    return output or alias


def _fraction(text: str) -> float:
    value = _positive(text)
    if value >= 1:
        raise typer.BadParameter(f"must be between 0 and 1, not {text}")
    return value


TRAIN_TASKS = tuple(TASK_TARGETS)
OPTIMIZERS = ("adamw", "adamw8bit")  # models.memory_plan.OPTIMIZER_BYTES (not imported: it loads torch)
# malmm_cli.evaluate.BENCHMARKS (not imported: it loads torch); a test checks they agree.
BENCHMARK_NAMES = ("msrvtt-qa", "msvd-qa", "activitynet-qa", "msrvtt-caption", "msvd-caption", "youcook2",
                   *(f"lvu-{task}" for task in ("director", "genre", "relationship", "scene", "way_speaking",
                                                "writer", "year")), "breakfast", "coin")  # fmt: skip


@app.command(cls=PlainUsage, short_help="Fine-tune the memory model on your own labelled videos.")
def train(
    data: Annotated[Path, typer.Argument(metavar="DATA", hidden=True, show_default=False)],
    task: Annotated[
        str,
        typer.Option(
            "--task",
            "-t",
            metavar=_metavar(TRAIN_TASKS),
            parser=_choice(*TRAIN_TASKS),
            help="What the model learns to produce from DATA.",
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="RUN", help="Run folder: model.safetensors, training.json, resume/."),
    ] = None,
    val: Annotated[
        Path | None, typer.Option("--val", metavar="FILE", help="Validation examples (same format).")
    ] = None,
    val_split: Annotated[
        float | None,
        typer.Option(
            "--val-split", metavar="F", parser=_fraction, help="Hold out this fraction of DATA for validation."
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs", metavar="N", parser=_count, help="Passes over DATA (MA-LMM: caption 10, ask 5, classify 20)."
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr",
            metavar="X",
            parser=_positive,
            help="Peak learning rate (MA-LMM: caption 1e-5, ask and classify 1e-4).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="B", parser=_count, help="Clips per step.")] = 4,
    grad_accum: Annotated[
        int,
        typer.Option("--grad-accum", metavar="K", parser=_count, help="Steps of gradients summed before each update."),
    ] = 1,
    frames: Annotated[
        int | None,
        typer.Option(
            "--frames",
            "-n",
            metavar="N",
            parser=_count,
            help="Frames per clip (MA-LMM: caption 80, ask 20, classify 100).",
        ),
    ] = None,
    memory_bank_length: Annotated[
        int | None,
        typer.Option(
            "--memory-bank-length",
            "-b",
            metavar="L",
            parser=_count,
            help="Memory bank length (caption 40, ask 10, classify 20).",
        ),
    ] = None,
    warmup_steps: Annotated[
        int,
        typer.Option(
            "--warmup-steps", metavar="N", parser=_count, help="Linear warm-up steps (at most a tenth of the run)."
        ),
    ] = 1000,
    samplings: Annotated[
        int,
        typer.Option(
            "--samplings", metavar="K", parser=_count, help="Random frame draws per clip, each encoded once and cached."
        ),
    ] = 4,
    optimizer: Annotated[
        str,
        typer.Option(
            "--optimizer",
            metavar=_metavar(OPTIMIZERS),
            parser=_choice(*OPTIMIZERS),
            help="AdamW, or bitsandbytes' 8-bit AdamW (a quarter of its memory).",
        ),
    ] = "adamw",
    augment: Annotated[
        bool,
        typer.Option(
            "--augment",
            help="Crop (50-100% of the area) and flip each clip anew every epoch, as MA-LMM trains; "
            "the ViT then runs on every step instead of reading cached features.",
        ),
    ] = False,
    lora: Annotated[
        int | None,
        typer.Option(
            "--lora",
            metavar="R",
            parser=_count,
            help="Train the Q-Former through rank-R LoRA adapters on its attention (peft; rank 8: 4 M instead of 189 M "
            "trained parameters), for small GPUs. Checkpoints hold the merged weights.",
        ),
    ] = None,
    temporal: Annotated[
        str,
        typer.Option(
            "--temporal",
            metavar=_metavar(("none", "mamba")),
            parser=_choice("none", "mamba"),
            help="Add a causal Mamba after the Q-Former over each query's per-frame outputs, gated to start "
            "as a no-op, and train it (alone, on cached Q-Former outputs, unless --temporal-with-qformer). "
            "Readers pick it up from the run's checkpoint.",
        ),
    ] = "none",
    temporal_layers: Annotated[
        int, typer.Option("--temporal-layers", metavar="N", parser=_count, help="Mamba layers of --temporal.")
    ] = 1,
    temporal_with_qformer: Annotated[
        bool,
        typer.Option(
            "--temporal-with-qformer", help="Train --temporal together with the Q-Former and what MA-LMM trains."
        ),
    ] = False,
    seed: Annotated[
        int, typer.Option("--seed", metavar="S", help="Seed of the data order, frame draws and dropout.")
    ] = 0,
    save_every: Annotated[
        int,
        typer.Option(
            "--save-every",
            metavar="N",
            parser=_count,
            help="Steps between resumable states (also each epoch and on Ctrl-C).",
        ),
    ] = 200,
    resume: Annotated[bool, typer.Option("--resume", help="Go on from the state saved in RUN.")] = False,
    videos: Annotated[
        Path | None, typer.Option("--videos", metavar="DIR", help="Where an MA-LMM annotation file's videos are.")
    ] = None,
    label_field: Annotated[
        str | None,
        typer.Option(
            "--label-field", metavar="FIELD", help="Annotation field of classify labels (LVU: director, genre...)."
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            "--split",
            metavar="NAME",
            help="Of an annotation file that holds several splits (COIN.json), the one to train on (default: "
            "train; --val reads val).",
        ),
    ] = None,
    output_dir: Annotated[Path | None, OutputDirAlias] = None,
    model: ModelOption = DEFAULT_MODEL,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", "-c", metavar="START", help="Start from these weights (MA-LMM .pth or a run)."),
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quantize: QuantizeOption = "auto",
    quantize_vision: QuantizeVisionOption = "none",
    no_cache: NoCacheOption = False,
    quiet: QuietOption = False,
) -> None:
    """Fine-tune the Q-Former, its memory and the projection on labelled clips (ViT and LLM frozen).

    DATA is a JSONL or CSV file, one example per row: video (a path relative to the file), optional
    start/end in seconds, and caption, or question and answer, or label. MA-LMM's annotation JSON
    files work too (with --videos). Progress is saved in RUN; Ctrl-C saves and stops, --resume
    goes on. Use the result with `malmm caption|ask|predict --checkpoint RUN`.
    """
    from malmm_cli import train as training
    from malmm_cli.dataset import DatasetError
    from malmm_cli.progress import Reporter, TrainingProgress
    from models.checkpoint import CheckpointError

    reporter = Reporter(quiet=quiet)
    output = _one_output(output, output_dir)
    if output is None:
        raise typer.BadParameter("give the run folder: -o RUN (new, or one to --resume)", param_hint="--output")
    if val is not None and val_split is not None:
        raise typer.BadParameter("give --val or --val-split, not both", param_hint="--val/--val-split")
    try:
        examples, held_out = training.read_data(data, task, val, val_split, seed, videos, label_field, split)
        training.check_videos(examples)
        data_read = training.TrainData.of(data, val, val_split, videos, label_field, split)
        training.check_output(output, resume)
    except (DatasetError, training.TrainingError) as error:
        reporter.error(str(error))
        raise typer.Exit(EXIT_USAGE) from error
    defaults = training.TASK_DEFAULTS[task]
    if resume and epochs is None:  # the run's own length; a larger --epochs extends it
        epochs = training.saved_epochs(output)
    settings = training.TrainSettings(
        task=task, frames=frames or defaults["frames"], epochs=epochs or defaults["epochs"], lr=lr or defaults["lr"],
        memory_bank_length=memory_bank_length or defaults["memory_bank_length"], batch_size=batch_size,
        grad_accum=grad_accum, warmup_steps=warmup_steps, samplings=samplings, seed=seed, save_every=save_every,
        optimizer=optimizer, augment=augment, lora_rank=lora or 0, temporal=temporal, temporal_layers=temporal_layers,
        temporal_with_qformer=temporal_with_qformer,
    )  # fmt: skip
    options = RunOptions(model=model, checkpoint=checkpoint, memory_bank_length=settings.memory_bank_length,
                         device=device, dtype=dtype, quantize=quantize, quantize_vision=quantize_vision,
                         no_cache=no_cache, quiet=quiet)  # fmt: skip
    _check_checkpoint(options)
    shape = training.training_shape(settings, examples + held_out)
    malmm = load_model(options, training.TASK_PRESETS[task], reporter, training=shape)
    labels = sorted({e.label for e in examples}) if task == "classify" else None
    try:
        trainer = training.Trainer(malmm, examples, held_out, settings, output, base_model=training.model_name(model),
                                   cache=options.cache(reporter), labels=labels, warn=reporter.warn,
                                   data=data_read)  # fmt: skip
        if resume:
            trainer.resume()
    except (training.TrainingError, CheckpointError) as error:
        reporter.error(str(error))
        raise typer.Exit(EXIT_USAGE) from error
    reporter.info(training.describe(trainer, len(examples), len(held_out)))
    try:
        with TrainingProgress(reporter, trainer.total_steps, settings.epochs) as progress:
            progress.start(trainer.position.step)
            summary = trainer.run(progress)
    except KeyboardInterrupt as interrupt:
        word, status = _stopped(interrupt)
        reporter.warn(f"{word.lower()}: the run is saved in {output}; the same command with --resume goes on")
        raise typer.Exit(status) from None
    except training.NothingReadable as error:
        reporter.error(str(error))
        raise typer.Exit(EXIT_FAILED) from error
    except training.TrainingError as error:
        reporter.error(f"{error} (the last saved state is in {output})")
        raise typer.Exit(EXIT_FAILED) from error
    reporter.info(training.conclusion(summary, output, settings))
    if trainer.features.unreadable:  # the checkpoint is saved, trained on the rest: status 1, as eval ends
        named = [e for e in examples + held_out if e.id in trainer.features.unreadable]  # in file order
        listed = ", ".join(f"{example.id} ({example.video})" for example in named[:10])
        more = f" and {len(named) - 10} more" if len(named) > 10 else ""
        reporter.error(f"{counted(len(named), 'example')} could not be read and {plural(len(named), 'was')} left "
                       f"out: {listed}{more}; the checkpoint in {output} is trained on the rest: fix them and train "
                       "again")  # fmt: skip
        raise typer.Exit(EXIT_FAILED)


@app.command("eval", cls=PlainUsage, short_help="Score the model on labelled videos, as MA-LMM's paper scores it.")
def evaluate(
    data: Annotated[Path, typer.Argument(metavar="DATA", hidden=True, show_default=False)],
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            "-d",
            metavar="NAME",
            parser=_choice(*BENCHMARK_NAMES),
            help="An MA-LMM benchmark, for its annotation file: " + ", ".join(BENCHMARK_NAMES) + ".",
        ),
    ] = None,
    videos: Annotated[
        Path | None, typer.Option("--videos", metavar="DIR", help="Where an MA-LMM annotation file's videos are.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="DIR",
            help="predictions.jsonl, metrics.json, eval.json (default: ./malmm-eval-DATA); a stopped "
            "run goes on there.",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", metavar="N", parser=_count, help="The first N examples only.")
    ] = None,
    label_field: Annotated[
        str | None,
        typer.Option("--label-field", metavar="FIELD", help="Annotation field of the labels (LVU: director...)."),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(
            "--split",
            metavar="NAME",
            help="Of an annotation file that holds several splits (COIN.json), the one to score (default: val).",
        ),
    ] = None,
    output_dir: Annotated[Path | None, OutputDirAlias] = None,
    model: ModelOption = DEFAULT_MODEL,
    checkpoint: CheckpointOption = None,
    frames: FramesOption = None,
    memory_bank_length: BankOption = None,
    memory: MemoryOption = "malmm",
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quantize: QuantizeOption = "auto",
    quantize_vision: QuantizeVisionOption = "none",
    no_cache: NoCacheOption = False,
    quiet: QuietOption = False,
) -> None:
    """Predict every example of DATA and score the predictions as MA-LMM does (QA and
    classification top-1/top-5 from 5 beams, captions BLEU-4/METEOR/ROUGE-L/CIDEr).

    DATA is a JSONL or CSV file in `malmm train`'s format (the task follows from its columns), or
    an MA-LMM annotation file with --dataset. Prints the metrics as JSON on stdout, and a table
    beside the paper's figures on stderr.
    """
    from malmm_cli import evaluate as evaluation
    from malmm_cli.dataset import DatasetError
    from malmm_cli.loading import SetupError, resolve_device
    from malmm_cli.progress import EvalProgress, Reporter
    from malmm_cli.records import checkpoint_identity, file_identity, model_identity

    reporter = Reporter(quiet=quiet)
    output = _one_output(output, output_dir)
    try:
        benchmark, items = evaluation.load_items(data, dataset, videos, label_field, split)
    except DatasetError as error:
        reporter.error(str(error))
        raise typer.Exit(EXIT_USAGE) from error
    labels = evaluation.label_set(benchmark, items)  # of all the examples, whatever --limit
    items = items[:limit] if limit else items
    options = RunOptions(model=model, checkpoint=checkpoint, memory_bank_length=memory_bank_length, memory=memory,
                         device=device, dtype=dtype, quantize=quantize, quantize_vision=quantize_vision,
                         no_cache=no_cache, quiet=quiet)  # fmt: skip
    _check_checkpoint(options)
    try:
        device_type = resolve_device(device).split(":")[0]
    except SetupError as error:
        raise typer.BadParameter(str(error), param_hint="--device") from error
    folder = output or Path(f"malmm-eval-{data.stem}")
    _check_output_dir(folder, "--output")
    missing, videos_read = evaluation.missing_videos(items, folder)
    if missing:  # said before the model loads: the usual mistake is --videos, or the files' names
        where = "paths are relative to the data file's folder, or to --videos for MA-LMM annotations"
        if len(missing) == videos_read:
            reporter.error(f"none of the {videos_read} videos exists (the first: {missing[0]}): {where}")
            raise typer.Exit(EXIT_USAGE)
        reporter.warn(f"{len(missing)} of the {videos_read} videos do not exist (the first: {missing[0]}): their "
                      f"examples are left out of the metrics and the run ends with status 1 ({where})")  # fmt: skip
    settings = evaluation.EvalSettings(
        data=str(data.resolve()), data_content=file_identity(data), benchmark=benchmark.name,
        model=model_identity(model), checkpoint=checkpoint_identity(options.checkpoint),
        frames=frames or benchmark.frames, memory_bank_length=memory_bank_length or benchmark.memory_bank_length,
        memory=memory,
        precision={"device": device_type, "dtype": dtype, "quantize": quantize, "quantize_vision": quantize_vision},
        label_field=label_field, videos=str(videos.resolve()) if videos else None, labels=labels,
    )  # fmt: skip
    options = dataclasses.replace(options, memory_bank_length=settings.memory_bank_length)
    preset = {"caption": CAPTION, "ask": QUESTION, "classify": CLASSIFICATION}[benchmark.task]
    malmm = load_model(options, preset, reporter, readers=evaluation.readers_per_clip(benchmark, items),
                       frames=settings.frames)  # fmt: skip
    run = evaluation.Evaluation(malmm, benchmark, items, settings, folder, cache=options.cache(reporter),
                                on_unreadable=lambda video, reason: reporter.error(f"{video}: {reason}"))  # fmt: skip
    try:
        done = run.start()
    except evaluation.EvaluationError as error:
        reporter.error(str(error))
        raise typer.Exit(EXIT_USAGE) from error
    resumed = len(done & {item.id for item in items})
    reporter.info(f"Evaluating {benchmark.name} ({benchmark.task}): {counted(len(items), 'example')}"
                  + (f", {resumed} already in {folder / evaluation.PREDICTIONS}" if resumed else ""))  # fmt: skip
    try:
        with EvalProgress(reporter, len(items), resumed) as progress:
            metrics = run.run(progress.advance, done)
    except KeyboardInterrupt as interrupt:
        word, status = _stopped(interrupt)
        reporter.warn(f"{word.lower()}: the predictions so far are in {folder}; the same command goes on")
        raise typer.Exit(status) from None
    if not quiet:
        reporter.table(_metrics_table(metrics))
    typer.echo(json.dumps(metrics, indent=2))
    if metrics["unreadable"]:
        unread = metrics["unreadable"]
        reporter.warn(f"{counted(unread, 'example')} could not be read and {plural(unread, 'is')} left out of the "
                      "metrics (see above): fix their videos and run the same command, which reads only those "
                      "again")  # fmt: skip
        raise typer.Exit(EXIT_FAILED)


def _metrics_table(metrics: dict) -> Table:
    """The metrics beside MA-LMM's figures for the same dataset (captions x 100, as the paper)."""
    from rich.table import Table

    from malmm_cli.evaluate import PAPER_NOTES

    caption = "Bleu_4" in metrics["metrics"]
    table = Table(title=f"{metrics['dataset']}: {counted(metrics['examples'], 'example')}", title_justify="left")
    for column in ("metric", "malmm", "MA-LMM fine-tuned", "MA-LMM zero-shot"):
        table.add_column(column, justify="left" if column == "metric" else "right")

    def shown(value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value * 100:.1f}" if caption else f"{value:.1f}"

    for name, value in metrics["metrics"].items():
        label = name if value is not None or name != "METEOR" else "METEOR (needs Java)"
        table.add_row(label, shown(value), shown(metrics["paper"].get(name)), shown(metrics["zero_shot"].get(name)))
    note = next((text for prefix, text in PAPER_NOTES.items() if metrics["dataset"].startswith(prefix)), None)
    if note:
        table.caption = note
    return table


models_app = typer.Typer(help="Known models: list them, see which are cached, download them.", no_args_is_help=True)
app.add_typer(models_app, name="models", short_help="List and download models.")


@models_app.command("list")
def models_list() -> None:
    """The InstructBLIP models malmm knows, their sizes, and which are in the local cache."""
    from rich.table import Table

    from malmm_cli.hub import FINE_TUNED, PRESETS, cache_dir, cached_models
    from models.architectures import architecture
    from models.memory_plan import count_parameters

    cached = {m.repo: m for m in cached_models()}
    table = Table(title="Models (Hugging Face hub)", title_justify="left")
    for column in ("name", "hub id", "parameters", "download", "cached", "note"):
        table.add_column(column)
    for preset in PRESETS:
        counts = count_parameters(architecture(preset.architecture))
        params = counts.vision_linear + counts.vision_other + counts.qformer + counts.llm_linear + counts.llm_other
        found = cached.get(preset.repo)
        state = "no" if found is None else ("yes" if found.complete else "incomplete")
        table.add_row(
            preset.name, preset.repo, f"{params / 1e9:.1f} B", f"~{params * 4 / 1e9:.0f} GB", state, preset.note
        )
    others = [m for repo, m in cached.items() if all(p.repo != repo for p in PRESETS)]
    for model in others:
        table.add_row("", model.repo, "", f"{model.size_bytes / 1e9:.1f} GB", "yes", "in cache")
    console = _stdout_console()
    console.print(table)
    console.print(f"cache: {cache_dir()}  (download: malmm models download NAME)")
    tuned = Table(title="MA-LMM fine-tuned checkpoints (not on the hub: pass the file with --checkpoint)",
                  title_justify="left")  # fmt: skip
    for column in ("dataset", "use with", "frames", "memory bank"):
        tuned.add_column(column)
    for checkpoint in FINE_TUNED:
        tuned.add_row(checkpoint.dataset, f"malmm {checkpoint.command}", str(checkpoint.frames),
                      str(checkpoint.memory_bank_length))  # fmt: skip
    console.print(tuned)
    console.print("base model: instructblip-vicuna-7b; files: saved_model.tar from github.com/boheumd/MA-LMM")


@models_app.command("download", cls=PlainUsage)
def models_download(
    name: Annotated[str, typer.Argument(metavar="NAME", hidden=True, show_default=False)],
    quiet: QuietOption = False,
) -> None:
    """Download a model's config, tokenizers and safetensors weights into the Hugging Face cache.

    NAME is a name from `malmm models list`, or any hub id.
    """
    from malmm_cli.hub import ModelUnavailable, cached_snapshot, check_reachable, download, find_preset
    from malmm_cli.progress import Reporter

    reporter = Reporter(quiet=quiet)
    preset = find_preset(name)
    repo = preset.repo if preset else name
    if preset is None and name.count("/") != 1:
        reporter.error(f"unknown model {name!r}: use a name from `malmm models list` or a hub id (owner/name)")
        raise typer.Exit(EXIT_USAGE)
    cached = cached_snapshot(repo)
    if cached is not None:
        reporter.info(f"{repo} is already in the cache: {cached}")
        raise typer.Exit(EXIT_OK)
    try:
        check_reachable(repo)
        with reporter.downloading(repo) as progress_class:
            folder = download(repo, progress_class)
    except ModelUnavailable as error:
        reporter.error(str(error))
        raise typer.Exit(EXIT_FAILED) from error
    except KeyboardInterrupt as interrupt:
        word, status = _stopped(interrupt)
        reporter.console.print(f"{word}: run the same command again to resume the download.")
        raise typer.Exit(status) from None
    reporter.info(f"{repo} is ready: {folder}")


cache_app = typer.Typer(help="The vision feature cache that makes a second question about a video fast.",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(cache_app, name="cache", short_help="Inspect or empty the vision feature cache.")


@cache_app.command("info")
def cache_info() -> None:
    """Where the cache is, what it holds, and its size limit."""
    from malmm_cli.feature_cache import FeatureCache

    cache = FeatureCache(on_problem=lambda message: typer.echo(f"warning: {shown(message)}", err=True))
    entries = cache.entries()
    total = sum(entry.size for entry in entries)
    typer.echo(f"location: {shown(cache.folder)}")
    typer.echo(
        f"entries: {counted(len(entries), 'video')}, {total / 1024**3:.2f} GiB of {cache.limit / 1024**3:.0f} GiB"
    )
    partials = cache.partials()
    if partials:
        stale = [p for p in partials if cache.is_stale(p)]
        size = sum(p.size for p in partials) / 1024**3
        typer.echo(
            f"unfinished: {len(partials)} ({size:.2f} GiB): {len(partials) - len(stale)} being written, "
            f"{len(stale)} left by runs that stopped (removed by `malmm cache clear` or the next run)"
        )
    typer.echo("settings: MALMM_CACHE_DIR (location), MALMM_CACHE_SIZE (limit in GB); --no-cache to bypass")


@cache_app.command("clear")
def cache_clear() -> None:
    """Remove every cached video (and what stopped runs left); nothing else in the folder."""
    from malmm_cli.feature_cache import FeatureCache

    cache = FeatureCache(on_problem=lambda message: typer.echo(f"warning: {shown(message)}", err=True))
    freed = cache.clear()
    typer.echo(f"removed {freed / 1024**3:.2f} GiB from {shown(cache.folder)}")


@app.command(short_help="Check what this machine can run.")
def doctor() -> None:
    """Check this machine: versions, GPUs, quantization, video codecs, cached models."""
    from rich.table import Table

    from malmm_cli.doctor import run_checks

    console = _stdout_console()
    with console.status("Checking", spinner="dots") if console.is_terminal else _nothing():
        checks = run_checks()
    table = Table(title="malmm doctor", title_justify="left")
    for column in ("check", "status", "detail"):
        table.add_column(column)
    styles = {"ok": "green", "warn": "yellow", "fail": "red", "info": "dim"}
    for check in checks:
        table.add_row(check.name, f"[{styles[check.status]}]{check.status}[/]", check.detail)
    console.print(table)
    failed = [c.name for c in checks if c.status == "fail"]
    if failed:
        console.print(f"[red]missing or broken:[/] {', '.join(failed)}")
    raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _stdout_console() -> Console:
    """Tables on stdout: the terminal's width, or wide enough not to cut names in pipes and files."""
    from rich.console import Console

    console = Console(highlight=False)
    return console if console.is_terminal else Console(highlight=False, width=200)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"malmm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Understand long videos on one GPU: captions, answers and action predictions with MA-LMM.

    Results go to stdout (or --output-dir), progress and messages to stderr. Exit status: 0 all
    inputs succeeded, 1 some failed, 2 usage error, 130 interrupted.
    """


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def main() -> None:
    """The `malmm` command. An error malmm did not foresee is one line, not a traceback
    (MALMM_DEBUG=1 shows it); its exit status is 1. SIGTERM stops a run as Ctrl-C does (status 143)."""
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except Exception as error:
        if os.environ.get("MALMM_DEBUG"):
            raise
        message = f"{type(error).__name__}: {error}".strip().splitlines()[0]
        print(f"error: unexpected: {shown(message)} (MALMM_DEBUG=1 shows where)", file=sys.stderr)
        sys.exit(EXIT_FAILED)
