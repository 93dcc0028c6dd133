"""What a run learns from: the examples of its files, each one's prompt and target, the validation
split and the order of an epoch. Reading and checking the files needs no torch; the split and the
epoch order are torch's seeded permutations (so that every run, resumed or not, sees the same),
which load it when first asked."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from malmm_cli.jobs.dataset import DatasetError, Example, read_examples
from malmm_cli.jobs.training.moments import read_moments
from malmm_cli.jobs.training.settings import TASK_PRESETS
from malmm_cli.jobs.training.timed import TIMED_TASKS, read_timed

_CAPTION_PUNCTUATION = re.compile(r"[.!\"()*#:;~]")


def prompt_for(task: str, example: Example) -> str:
    """The instruction (Q-Former) and prompt (LLM) of an example, as MA-LMM's presets word them."""
    return TASK_PRESETS[task].prompt(example.question)  # only the ask instruction has a {question}


def target_for(task: str, example: Example) -> str:
    """The text to learn; captions are cleaned as MA-LMM cleans them (lower case, `.!"()*#:;~` removed)."""
    text = example.target(task)
    if task == "caption":
        text = " ".join(_CAPTION_PUNCTUATION.sub(" ", text.lower()).split())
    return text


def epoch_order(examples: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of an epoch: a function of (seed, epoch) only, so a resumed
    run sees the same order without storing it."""
    import torch

    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(examples, generator=generator).tolist()


def read_data(
    data: Path,
    task: str,
    val: Path | None,
    val_split: float | None,
    seed: int,
    videos: Path | None = None,
    label_field: str | None = None,
    split: str | None = None,
) -> tuple[list[Example], list[Example]]:
    """(training, validation) examples: validation from its own file, or a seeded fraction of DATA.
    Of an annotation file that holds several splits (COIN.json), DATA's `split` (default: train)
    and --val's `val`, as MA-LMM trains and validates: `--val COIN.json` with DATA COIN.json
    validates on the val split."""
    examples, validation = read_files(data, task, val, videos, label_field, split)
    if val is None and val_split:
        return hold_out(examples, val_split, seed)
    return examples, validation


def read_files(
    data: Path,
    task: str,
    val: Path | None,
    videos: Path | None = None,
    label_field: str | None = None,
    split: str | None = None,
) -> tuple[list[Example], list[Example]]:
    """(DATA's examples, --val's: none without it), before any --val-split: what `read_data`
    reads, without torch. find's are labelled moments (moments.py), dense's and ground's timed.py's."""
    if task in TIMED_TASKS:

        def read(path: Path, split: str | None, default: str) -> list[Example]:
            return read_timed(path, task, videos, label_field, split, default)

    elif task == "find":
        if label_field is not None or split is not None:
            raise DatasetError("--label-field and --split choose among MA-LMM annotations: find reads moments")

        def read(path: Path, split: str | None, default: str) -> list[Example]:
            return list(read_moments(path, videos))
    else:

        def read(path: Path, split: str | None, default: str) -> list[Example]:
            return read_examples(path, task, videos, label_field, split, default)

    examples = _named(read(data, split, "train"), data.name)
    if val is None:
        return examples, []
    source = val.name if val.name != data.name else str(val)
    return examples, _named(read(val, None, "val"), source)


def held_out(examples: int, val_split: float) -> int:
    """How many of DATA's examples --val-split holds out for validation; refused when that leaves
    none to train on."""
    held = max(1, round(examples * val_split))
    if held >= examples:
        raise DatasetError(f"--val-split {val_split} leaves no training examples of {examples}")
    return held


def hold_out(examples: list[Example], val_split: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(training, validation): a seeded `val_split` of the examples held out, in file order."""
    order = epoch_order(len(examples), seed, -1)
    chosen = set(order[: held_out(len(examples), val_split)])
    return ([e for i, e in enumerate(examples) if i not in chosen], [e for i, e in enumerate(examples) if i in chosen])


def _named(examples: list[Example], source: str) -> list[Example]:
    """The examples with ids that name their file (`clips.jsonl line 3`): a clip left out as
    unreadable, or a cached query output, is keyed by id, so a training and a validation example
    must never share one. Two examples of one id in a file are refused for the same reason."""
    seen: set[str] = set()
    for example in examples:
        if example.id in seen:
            raise DatasetError(f"{source}: two examples have the id {example.id!r}: give each its own")
        seen.add(example.id)
    return [dataclasses.replace(example, id=f"{source} {example.id}") for example in examples]


def check_videos(examples: list[Example], training: int | None = None) -> None:
    """Before the model loads: training needs at least one of its videos to exist (the usual
    mistake: an annotation file without --videos, or paths relative to another folder).
    training: how many of the examples are trained on, where some are still to be held out for
    validation (all of them otherwise)."""
    if examples and not any(example.video.is_file() for example in examples):
        raise DatasetError(
            f"none of the {len(examples) if training is None else training} training videos exists (the first: "
            f"{examples[0].video}): paths are relative to the data file's folder, or to --videos for MA-LMM "
            "annotations"
        )
