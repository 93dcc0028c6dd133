"""eval: score the model on labelled videos, as MA-LMM's paper scores it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import typer.core

from malmm_cli.commands.options import (
    BankOption,
    CheckpointOption,
    DeviceOption,
    DtypeOption,
    FpsOption,
    FramesOption,
    MemoryOption,
    ModelOption,
    NoCacheOption,
    OutputDirAlias,
    QuantizeOption,
    QuantizeVisionOption,
    QuietOption,
    choice_of,
    one_output,
    parse_count,
    parse_seconds,
)
from malmm_cli.commands.progress import EvalProgress, Reporter
from malmm_cli.commands.read import parse_score_threshold
from malmm_cli.commands.terminal import EXIT_FAILED, refusals, stopped_by
from malmm_cli.jobs.benchmarks import BENCHMARKS, PAPER_NOTES
from malmm_cli.jobs.eval_run import EvalRequest, evaluate_data
from malmm_cli.jobs.grounding import GROUNDING_BENCHMARKS
from malmm_cli.jobs.model import RunOptions
from malmm_cli.jobs.timed_eval import BY, DENSE_BENCHMARKS
from malmm_cli.wording import counted, plural
from models.presets import DEFAULT_MODEL

if TYPE_CHECKING:  # the heavy modules (torch, transformers, OpenCV) load only when a command runs
    from rich.table import Table


def evaluate(
    data: Annotated[Path, typer.Argument(metavar="DATA", hidden=True, show_default=False)],
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            "-d",
            metavar="NAME",
            parser=choice_of(*BENCHMARKS, *GROUNDING_BENCHMARKS, *DENSE_BENCHMARKS),
            help="An MA-LMM benchmark, for its annotation file: " + ", ".join(BENCHMARKS) + "; or a grounding "
            "benchmark, scored with malmm find: " + ", ".join(GROUNDING_BENCHMARKS) + "; or dense captioning "
            "with a checkpoint trained for it (--task dense): " + ", ".join(DENSE_BENCHMARKS) + ".",
        ),
    ] = None,
    videos: Annotated[
        Path | None,
        typer.Option(
            "--videos",
            metavar="DIR",
            help="Where the videos of an annotation file are (MA-LMM's, a grounding or a dense captioning "
            "benchmark's), found by name; default: the file's folder.",
        ),
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
        int | None, typer.Option("--limit", metavar="N", parser=parse_count, help="The first N examples only.")
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
    window: Annotated[
        float | None,
        typer.Option(
            "--window",
            metavar="DURATION",
            parser=parse_seconds,
            help="Grounding benchmarks: find's window (default: 4 frames at the sampled rate, 4s at 1 frame/s).",
        ),
    ] = None,
    score: Annotated[
        str,
        typer.Option(
            "--score",
            metavar="[likelihood|yes]",
            parser=choice_of("likelihood", "yes"),
            help="Grounding benchmarks: how find scores a window (docs/find.md).",
        ),
    ] = "likelihood",
    threshold: Annotated[
        float,
        typer.Option(
            "--threshold",
            metavar="SCORE",
            parser=parse_score_threshold,
            help="Grounding benchmarks: windows scoring at least this (0 to 1) make moments.",
        ),
    ] = 0.5,
    min_gap: Annotated[
        float | None,
        typer.Option(
            "--min-gap",
            metavar="DURATION",
            parser=parse_seconds,
            help="Grounding benchmarks: join moments this close (default: one window).",
        ),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            metavar="[find|generate]",
            parser=choice_of(*BY),
            help="Grounding benchmarks: find's ranking of windows (the default), or the model generating the "
            "span (a checkpoint trained with --task ground). Dense captioning always generates.",
        ),
    ] = None,
    output_dir: Annotated[Path | None, OutputDirAlias] = None,
    model: ModelOption = DEFAULT_MODEL,
    checkpoint: CheckpointOption = None,
    frames: FramesOption = None,
    fps: FpsOption = None,
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
    an MA-LMM annotation file with --dataset, or a grounding benchmark's file (Charades-STA .txt,
    QVHighlights .jsonl, ActivityNet Captions .json with --dataset), each query found with
    `malmm find` (R@n at IoU m, mIoU; QVHighlights' mAP, HIT@1, HL-mAP), or with --by generate
    asked of a checkpoint trained with --task ground. With --dataset youcook2-dense or
    anet-captions-dense, a dense captioning annotation file, each video's timed sentences scored
    as TimeChat scores them (SODA_c, CIDEr, METEOR, F1). Prints the metrics as JSON on stdout,
    and a table beside the papers' figures on stderr.
    """
    reporter = Reporter(quiet=quiet)
    request = EvalRequest(data=data, dataset=dataset, videos=videos, output=one_output(output, output_dir),
                          limit=limit, label_field=label_field, split=split, window=window, score=score,
                          threshold=threshold, min_gap=min_gap, by=by)  # fmt: skip
    options = RunOptions(model=model, checkpoint=checkpoint, frames=frames, fps=fps,
                         memory_bank_length=memory_bank_length,
                         memory=memory, device=device, dtype=dtype, quantize=quantize, quantize_vision=quantize_vision,
                         no_cache=no_cache, quiet=quiet)  # fmt: skip
    try:
        with refusals(reporter):
            metrics = evaluate_data(request, options, reporter,
                                    progress=lambda total, done: EvalProgress(reporter, total, done))  # fmt: skip
    except KeyboardInterrupt as interrupt:
        word, status = stopped_by(interrupt)
        reporter.warn(f"{word.lower()}: the predictions so far are in {request.folder}; the same command goes on")
        raise typer.Exit(status) from None
    if not quiet:
        reporter.table(_metrics_table(metrics))
    typer.echo(json.dumps(metrics, indent=2))
    if metrics.get("unparsed"):
        reporter.warn(f"{counted(metrics['unparsed'], 'answer')} gave no time span: scored as no events (dense) or "
                      f"a miss (grounding); the answers are in {request.folder / 'predictions.jsonl'}")  # fmt: skip
    if metrics["unreadable"]:
        unread = metrics["unreadable"]
        reporter.warn(f"{counted(unread, 'example')} could not be read and {plural(unread, 'is')} left out of the "
                      "metrics (see above): fix their videos and run the same command, which reads only those "
                      "again")  # fmt: skip
        raise typer.Exit(EXIT_FAILED)


def _metrics_table(metrics: dict) -> Table:
    """The metrics beside MA-LMM's figures for the same dataset (captions x 100, as the paper);
    a grounding benchmark's beside the figure of reference the issue cites (TimeChat's)."""
    from rich.table import Table

    if "reference_model" in metrics:
        return _grounding_table(metrics)

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


def _grounding_table(metrics: dict) -> Table:
    """A grounding benchmark's metrics (percent) beside a published system's, where there is one."""
    from rich.table import Table

    unit = "video" if metrics.get("method") == "malmm dense" else "query"
    title = f"{metrics['dataset']}: {counted(metrics['examples'], unit)}"
    table = Table(title=title, title_justify="left")
    reference = metrics["reference_model"] or "reference"
    for column in ("metric", metrics.get("method", "malmm find"), reference):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, value in metrics["metrics"].items():
        given = metrics["reference"].get(name)
        label = f"{name} (needs Java)" if value is None else name
        table.add_row(label, "-" if value is None else f"{value:.1f}", "-" if given is None else f"{given:.1f}")
    table.caption = "the reference figures are the system's own, reported zero-shot, not measured here"
    return table
