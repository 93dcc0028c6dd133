"""The options the commands share: parsers that answer a bad value with a plain sentence, the
option declarations, and RunOptions, which gathers a task command's shared options."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import typer.core

from malmm_cli.commands.terminal import refusals
from malmm_cli.jobs.model import RunOptions
from malmm_cli.media.timefmt import parse_duration
from malmm_cli.output.writers import FORMATS
from models.presets import (
    MEMORY_STRATEGIES,
)

if TYPE_CHECKING:  # the heavy modules (torch, transformers, OpenCV) load only when a command runs
    pass


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


QUANTIZE_CHOICES = ("auto", "none", "8bit", "4bit")
DTYPES = ("auto", "float16", "bfloat16", "float32")


# Option values are parsed here, so that a bad value gets a plain sentence rather than a type name.
def parse_whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a whole number") from None
    if value < least:
        raise typer.BadParameter(f"must be {least} or more, not {value}")
    return value


def parse_count(text: str) -> int:
    return parse_whole(text, 1)


def parse_attempts(text: str) -> int:
    return parse_whole(text, 0)


def parse_positive(text: str, what: str = "a positive number") -> float:
    try:
        value = float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise typer.BadParameter(f"must be {what}, not {text}")
    return value


def parse_gpus(text: str) -> float:
    """GPUs per Ray worker: 0 (a CPU cluster) or more, fractions allowed."""
    try:
        if float(text) == 0:
            return 0.0
    except ValueError:
        pass  # said below
    return parse_positive(text, "0 or a positive number of GPUs")


def parse_rate(text: str) -> float:
    return parse_positive(text, "a positive number of frames per second")


def parse_seconds(text: str | float) -> float:
    if isinstance(text, float):  # a default, already in seconds
        return text
    try:
        return parse_duration(text)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None


def choice_of(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise typer.BadParameter(f"{text!r} is not one of: {', '.join(choices)}")
        return text

    return parse


def metavar_of(choices: tuple[str, ...]) -> str:
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
    typer.Option("--frames", "-n", metavar="N", parser=parse_count, help="Frames sampled uniformly over each video."),
]
FpsOption = Annotated[
    float | None,
    typer.Option(
        "--fps", metavar="FPS", parser=parse_rate, help="Sample this many frames per second instead of --frames."
    ),
]
BankOption = Annotated[
    int | None,
    typer.Option(
        "--memory-bank-length", "-b", metavar="L", parser=parse_count, help="Memory bank length (frames remembered)."
    ),
]
FormatOption = Annotated[
    list[str] | None,
    typer.Option(
        "--format", "-f", metavar=metavar_of(FORMATS), parser=choice_of(*FORMATS),
        help="Output format; repeat for several. stdout gets the first, --output-dir all.",
    ),
]  # fmt: skip


def output_dir_option(example: str) -> typer.models.OptionInfo:
    """--output-dir, with an example name of the command's own results (ask's help showed a caption's)."""
    return typer.Option(
        "--output-dir", "-o", metavar="DIR", help=f"Write results here, named after each input and task ({example})."
    )


OutputDirOption = Annotated[Path | None, output_dir_option("clip.mp4 -> clip.caption.srt")]
AskOutputDirOption = Annotated[Path | None, output_dir_option("clip.mp4 -> clip.ask.txt")]
PredictOutputDirOption = Annotated[Path | None, output_dir_option("clip.mp4 -> clip.predict.json")]
FindOutputDirOption = Annotated[Path | None, output_dir_option("clip.mp4 -> clip.find.json")]
OverwriteOption = Annotated[
    bool, typer.Option("--overwrite", help="Redo inputs even when their results were made with the same settings.")
]
DeviceOption = Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda, cuda:N or mps.")]
DtypeOption = Annotated[
    str,
    typer.Option(
        "--dtype", metavar=metavar_of(DTYPES), parser=choice_of(*DTYPES),
        help="Of the vision encoder and LLM: auto is float16 on GPU (bfloat16 for T5), float32 on CPU.",
    ),
]  # fmt: skip
QuantizeOption = Annotated[
    str,
    typer.Option(
        "--quantize", metavar=metavar_of(QUANTIZE_CHOICES), parser=choice_of(*QUANTIZE_CHOICES),
        help="LLM weights: auto picks none, 8bit or 4bit to fit the free memory.",
    ),
]  # fmt: skip
QuantizeVisionOption = Annotated[
    str,
    typer.Option(
        "--quantize-vision", metavar="[none|8bit]", parser=choice_of("none", "8bit"),
        help="Also shrink the 1B-parameter vision encoder to 8-bit.",
    ),
]  # fmt: skip
MaxTokensOption = Annotated[
    int | None,
    typer.Option("--max-new-tokens", metavar="N", parser=parse_count, help="Longest answer, in tokens (task default)."),
]
BeamsOption = Annotated[
    int | None, typer.Option("--num-beams", metavar="N", parser=parse_count, help="Beam search width (default 5).")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or info lines on stderr.")]
BatchOption = Annotated[
    int | None,
    typer.Option(
        "--batch-size", metavar="N", parser=parse_count,
        help="Frames the vision encoder reads at once (default: fit free memory).",
    ),
]  # fmt: skip
SeekOption = Annotated[
    str,
    typer.Option(
        "--seek", metavar="[exact|keyframe]", parser=choice_of("exact", "keyframe"),
        help="exact: the frame at each time; keyframe: nearest keyframes, much faster (H.264).",
    ),
]  # fmt: skip
WorkersOption = Annotated[
    int,
    typer.Option(
        "--decode-workers",
        metavar="N",
        parser=parse_count,
        help="Decode exact frames in N processes (at most the CPUs available).",
    ),
]
MemoryOption = Annotated[
    str,
    typer.Option(
        "--memory", metavar=metavar_of(MEMORY_STRATEGIES), parser=choice_of(*MEMORY_STRATEGIES),
        help="How the past is kept: malmm merges similar frames (default); fifo drops the oldest; avgpool, "
        "concat and none read each frame alone and give the LLM their mean, all of them, or the last.",
    ),
]  # fmt: skip
VideoBatchOption = Annotated[
    int | None,
    typer.Option(
        "--video-batch", metavar="N", parser=parse_count,
        help="Videos of a folder read at once, in lockstep (default: what fits, at most 8).",
    ),
]  # fmt: skip
NoCacheOption = Annotated[
    bool, typer.Option("--no-cache", help="Neither read nor write the vision feature cache (see `malmm cache`).")
]
EngineOption = Annotated[
    str,
    typer.Option(
        "--engine", metavar="[local|ray]", parser=choice_of("local", "ray"),
        help="Where videos are read: this process, or a Ray cluster (pip install 'malmm[ray]').",
    ),
]  # fmt: skip
AddressOption = Annotated[
    str | None,
    typer.Option("--address", metavar="ADDR", help="Ray cluster to join (default: a local one; RAY_ADDRESS too)."),
]
RayWorkersOption = Annotated[
    int | None,
    typer.Option(
        "--workers", metavar="N", parser=parse_count, help="Ray actors holding the model (default: one per GPU)."
    ),
]
GpusOption = Annotated[
    float | None,
    typer.Option("--gpus-per-worker", metavar="G", parser=parse_gpus,
                 help="GPUs each Ray actor takes (default: 1 where the cluster has GPUs)."),
]  # fmt: skip
# Arguments are described in each command's help text: Typer would print their Python types.
PathsArgument = Annotated[list[Path], typer.Argument(metavar="PATH", hidden=True, show_default=False)]


def shared_options(ctx: typer.Context) -> RunOptions:
    """The shared options of a task command (each declares them all) as one RunOptions."""
    with refusals():
        return RunOptions(**{f.name: ctx.params[f.name] for f in dataclasses.fields(RunOptions)})


# train and eval write one folder, named by -o/--output as watch's one file is; caption, ask and
# predict write a file per input into -o/--output-dir. Folders take either long name: --output-dir
# is accepted, unlisted, by train and eval too.
OutputDirAlias = typer.Option("--output-dir", metavar="DIR", hidden=True)


def one_output(output: Path | None, alias: Path | None) -> Path | None:
    """The folder given as -o/--output or as its unlisted alias --output-dir, not both."""
    if output is not None and alias is not None and output != alias:
        raise typer.BadParameter("give -o/--output or --output-dir, not both", param_hint="--output")
    return output or alias


def parse_fraction(text: str) -> float:
    value = parse_positive(text)
    if value >= 1:
        raise typer.BadParameter(f"must be between 0 and 1, not {text}")
    return value
