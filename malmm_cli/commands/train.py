"""train: fine-tune the memory model on labelled videos."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
)
from malmm_cli.commands.terminal import EXIT_FAILED, EXIT_USAGE, refusals, stopped_by
from malmm_cli.jobs.dataset import TASK_TARGETS
from malmm_cli.jobs.model import RunOptions, check_checkpoint, load_model
from malmm_cli.wording import counted, plural
from models.presets import DEFAULT_MODEL, OPTIMIZERS, TEMPORAL_KINDS

if TYPE_CHECKING:  # the heavy modules (torch, transformers, OpenCV) load only when a command runs
    pass


TRAIN_TASKS = tuple(TASK_TARGETS)


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
            help="Passes over DATA (MA-LMM: caption 10, ask 5, classify 20).",
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            "--lr",
            metavar="X",
            parser=parse_positive,
            help="Peak learning rate (MA-LMM: caption 1e-5, ask and classify 1e-4).",
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
            help="Frames per clip (MA-LMM: caption 80, ask 20, classify 100).",
        ),
    ] = None,
    memory_bank_length: Annotated[
        int | None,
        typer.Option(
            "--memory-bank-length",
            "-b",
            metavar="L",
            parser=parse_count,
            help="Memory bank length (caption 40, ask 10, classify 20).",
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
    from malmm_cli.commands.progress import Reporter, TrainingProgress
    from malmm_cli.jobs import train as training
    from malmm_cli.jobs.dataset import DatasetError
    from models.checkpoint import CheckpointError

    reporter = Reporter(quiet=quiet)
    output = one_output(output, output_dir)
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
    with refusals(reporter):
        check_checkpoint(options)
    shape = training.training_shape(settings, examples + held_out)
    with refusals(reporter):
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
        word, status = stopped_by(interrupt)
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
