"""train: fine-tune the memory model on labelled videos (the job is jobs/training/job.py)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import typer
import typer.core

from malmm_cli.commands.options import (
    DeviceOption,
    DtypeOption,
    ModelOption,
    NoCacheOption,
    OutputDirAlias,
    QuantizeOption,
    QuantizeVisionOption,
    QuietOption,
    choice_of,
    metavar_of,
    one_output,
    parse_count,
    parse_fraction,
    parse_positive,
    parse_seconds,
)
from malmm_cli.commands.terminal import EXIT_FAILED, EXIT_OK, refusals, stopped_by
from malmm_cli.jobs.model import RunOptions
from malmm_cli.jobs.training.job import TrainingFailed, TrainingStopped, TrainRequest, run_training
from malmm_cli.jobs.training.settings import TASK_PRESETS
from models.presets import DEFAULT_MODEL, OPTIMIZERS, TEMPORAL_KINDS

TRAIN_TASKS = tuple(TASK_PRESETS)


def train(
    data: Annotated[Path, typer.Argument(metavar="DATA", hidden=True, show_default=False)],
    task: Annotated[
        str,
        typer.Option(
            "--task",
            "-t",
            metavar=metavar_of(TRAIN_TASKS),
            parser=choice_of(*TRAIN_TASKS),
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
            "--val-split", metavar="F", parser=parse_fraction, help="Hold out this fraction of DATA for validation."
        ),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            "--epochs",
            metavar="N",
            parser=parse_count,
            help="Passes over DATA (MA-LMM: caption 10, ask 5, classify 20; dense 10, ground 5).",
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr",
            metavar="X",
            parser=parse_positive,
            help="Peak learning rate (MA-LMM: caption 1e-5, ask and classify 1e-4; TimeChat: dense and ground 3e-5).",
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", metavar="B", parser=parse_count, help="Clips per step.")
    ] = 4,
    grad_accum: Annotated[
        int,
        typer.Option(
            "--grad-accum", metavar="K", parser=parse_count, help="Steps of gradients summed before each update."
        ),
    ] = 1,
    frames: Annotated[
        int | None,
        typer.Option(
            "--frames",
            "-n",
            metavar="N",
            parser=parse_count,
            help="Frames per clip (MA-LMM: caption 80, ask 20, classify 100; dense and ground 80).",
        ),
    ] = None,
    memory_bank_length: Annotated[
        int | None,
        typer.Option(
            "--memory-bank-length",
            "-b",
            metavar="L",
            parser=parse_count,
            help="Memory bank length (caption 40, ask 10, classify 20; dense 40, ground 20).",
        ),
    ] = None,
    warmup_steps: Annotated[
        int,
        typer.Option(
            "--warmup-steps", metavar="N", parser=parse_count, help="Linear warm-up steps (at most a tenth of the run)."
        ),
    ] = 1000,
    samplings: Annotated[
        int,
        typer.Option(
            "--samplings",
            metavar="K",
            parser=parse_count,
            help="Random frame draws per clip, each encoded once and cached.",
        ),
    ] = 4,
    optimizer: Annotated[
        str,
        typer.Option(
            "--optimizer",
            metavar=metavar_of(OPTIMIZERS),
            parser=choice_of(*OPTIMIZERS),
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
            parser=parse_count,
            help="Train the Q-Former through rank-R LoRA adapters on its attention (peft; rank 8: 4 M instead of 189 M "
            "trained parameters), for small GPUs. Checkpoints hold the merged weights.",
        ),
    ] = None,
    lora_llm: Annotated[
        int | None,
        typer.Option(
            "--lora-llm",
            metavar="R",
            parser=parse_count,
            help="Also train rank-R LoRA adapters on the LLM's attention projections (peft; QLoRA on a 4-/8-bit "
            "LLM; rank 8: 8.4 M parameters for vicuna-7b). Checkpoints hold the adapters; readers add them.",
        ),
    ] = None,
    temporal: Annotated[
        str,
        typer.Option(
            "--temporal",
            metavar=metavar_of(TEMPORAL_KINDS),
            parser=choice_of(*TEMPORAL_KINDS),
            help="Add a causal Mamba after the Q-Former over each query's per-frame outputs, gated to start "
            "as a no-op, and train it (alone, on cached Q-Former outputs, unless --temporal-with-qformer). "
            "Readers pick it up from the run's checkpoint.",
        ),
    ] = "none",
    temporal_layers: Annotated[
        int, typer.Option("--temporal-layers", metavar="N", parser=parse_count, help="Mamba layers of --temporal.")
    ] = 1,
    temporal_with_qformer: Annotated[
        bool,
        typer.Option(
            "--temporal-with-qformer", help="Train --temporal together with the Q-Former and what MA-LMM trains."
        ),
    ] = False,
    time_aware: Annotated[
        bool,
        typer.Option(
            "--time-aware",
            help="Give each frame's Q-Former instruction its time, as TimeChat does (\"This frame is sampled at "
            "12.0 second.\", from the clip's start); the run's checkpoint reads frames so from then on. "
            "Meant for --task dense and ground. See docs/time-aware.md.",
        ),
    ] = False,
    window: Annotated[
        float | None,
        typer.Option(
            "--window",
            "-w",
            metavar="DURATION",
            parser=parse_seconds,
            help="find: the window of `malmm find` trained on (default 4s: --frames 4 at find's 1 frame/s).",
        ),
    ] = None,
    negatives: Annotated[
        int | None,
        typer.Option(
            "--negatives",
            metavar="K",
            parser=parse_count,
            help="find: windows outside the labelled span read with each one inside it, per step (default 3).",
        ),
    ] = None,
    score: Annotated[
        str | None,
        typer.Option(
            "--score",
            metavar="[likelihood|yes]",
            parser=choice_of("likelihood", "yes"),
            help="find: the rule trained, as `malmm find --score` reads (default likelihood; docs/training.md).",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", metavar="S", help="Seed of the data order, frame draws and dropout.")
    ] = 0,
    save_every: Annotated[
        int,
        typer.Option(
            "--save-every",
            metavar="N",
            parser=parse_count,
            help="Steps between resumable states (also each epoch and on Ctrl-C).",
        ),
    ] = 200,
    resume: Annotated[bool, typer.Option("--resume", help="Go on from the state saved in RUN.")] = False,
    videos: Annotated[
        Path | None,
        typer.Option(
            "--videos", metavar="DIR", help="Where an annotation file's videos are (MA-LMM, YouCook2, grounding)."
        ),
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
            help="Of an annotation file that holds several splits (COIN.json, YouCook2's), the one to train on "
            "(default: train; --val reads val).",
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
    files work too (with --videos). --task find reads rows of video, query, start and end (where
    the query happens), or a grounding benchmark's file; --task ground reads the same and learns to
    answer "START - END seconds". --task dense reads rows of video, optional start/end and events
    (a list of start, end and text), or YouCook2's or ActivityNet Captions' annotation file, and
    learns "START - END seconds, sentence." for each event. Progress is saved in RUN; Ctrl-C saves
    and stops, --resume goes on. Use the result with `malmm caption|ask|predict|find --checkpoint RUN`.
    """
    from malmm_cli.commands.progress import Reporter, TrainingProgress

    reporter = Reporter(quiet=quiet)
    options = RunOptions(model=model, checkpoint=checkpoint, device=device, dtype=dtype, quantize=quantize,
                         quantize_vision=quantize_vision, no_cache=no_cache, quiet=quiet)  # fmt: skip
    try:
        with refusals(reporter):
            request = TrainRequest(
                data=data, task=task, output=one_output(output, output_dir), val=val, val_split=val_split,
                videos=videos, label_field=label_field, split=split, resume=resume, epochs=epochs, lr=lr,
                frames=frames, memory_bank_length=memory_bank_length, batch_size=batch_size, grad_accum=grad_accum,
                warmup_steps=warmup_steps, samplings=samplings, seed=seed, save_every=save_every,
                optimizer=optimizer, augment=augment, lora_rank=lora, llm_lora_rank=lora_llm, temporal=temporal,
                temporal_layers=temporal_layers, temporal_with_qformer=temporal_with_qformer, time_aware=time_aware,
                window=window, negatives=negatives, find_score=score,
            )  # fmt: skip
            ran = run_training(request, options, reporter, partial(TrainingProgress, reporter))
    except TrainingStopped as stopped:
        word, status = stopped_by(stopped.interrupt)
        reporter.warn(f"{word.lower()}: {stopped}")
        raise typer.Exit(status) from None
    except TrainingFailed as failure:
        reporter.error(str(failure))
        raise typer.Exit(EXIT_FAILED) from failure
    raise typer.Exit(EXIT_FAILED if ran.failed else EXIT_OK)
