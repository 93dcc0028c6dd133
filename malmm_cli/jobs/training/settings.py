"""A training run's recipe and what it reads: both stored in the run folder, so that `--resume` can
refuse to go on with other ones. Plain data: no torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from malmm_cli.jobs import dataset
from malmm_cli.jobs.records import file_identity
from malmm_cli.reading.find import SCORES, WINDOW_FRAMES
from models.presets import DENSE, FIND, GROUND, OPTIMIZERS, TEMPORAL_KINDS

# The tasks a run can learn: those of the data files, find's labelled moments (moments.py), and
# answers that carry times (timed.py).
TASK_PRESETS = {**dataset.TASK_PRESETS, "find": FIND, "dense": DENSE, "ground": GROUND}
FIND_WINDOW = 4.0  # find's default window: WINDOW_FRAMES frames at its default 1 frame/s

# MA-LMM's recipes per task: learning rate, frames, memory bank length, epochs; find's: frames a
# window (find reads WINDOW_FRAMES), find's memory bank, and its window. dense and ground: TimeChat's
# fine-tuning rate (3e-5, for YouCook2 and Charades-STA alike), with the epochs of MA-LMM's nearest
# task (a caption's 10, a short answer's 5): TimeChat's 3 start from a checkpoint that already
# reads times, malmm's from InstructBLIP's, which never did.
TASK_DEFAULTS = {
    task: {"lr": lr, "frames": TASK_PRESETS[task].frames,
           "memory_bank_length": TASK_PRESETS[task].memory_bank_length, "epochs": epochs}
    for task, lr, epochs in (("caption", 1e-5, 10), ("ask", 1e-4, 5), ("classify", 1e-4, 20),
                             ("dense", 3e-5, 10), ("ground", 3e-5, 5))
} | {"find": {"lr": 1e-4, "frames": WINDOW_FRAMES, "memory_bank_length": FIND.memory_bank_length, "epochs": 10,
              "window": FIND_WINDOW}}  # fmt: skip


@dataclass(frozen=True)
class TrainSettings:
    """How a run trains (stored in training.json; a resumed run must keep them)."""

    task: str
    frames: int
    memory_bank_length: int
    epochs: int
    lr: float
    batch_size: int = 4
    grad_accum: int = 1
    weight_decay: float = 0.05
    warmup_steps: int = 1000
    samplings: int = 4  # random frame draws per clip, each computed by the ViT once
    seed: int = 0
    save_every: int = 200  # optimiser steps between resumable states
    memory: str = "malmm"
    optimizer: str = "adamw"  # or "adamw8bit" (bitsandbytes)
    augment: bool = False  # crop and flip each clip anew every epoch (the ViT runs every step)
    lora_rank: int = 0  # train the Q-Former through LoRA adapters of this rank (models/lora.py); 0: whole
    llm_lora_rank: int = 0  # train LoRA adapters of this rank on the LLM's attention (models/lora.py); 0: none
    temporal: str = "none"  # "mamba": add and train a temporal module after the Q-Former (models/temporal.py)
    temporal_layers: int = 1
    temporal_with_qformer: bool = False  # train the module with MA-LMM's parts, not alone
    time_aware: bool = False  # each frame's Q-Former instruction carries its time (models/time_aware.py)
    # find: the window (seconds; `frames` frames each), negative windows per moment and step, and
    # the rule trained (the one `malmm find --score` then reads with)
    window: float = 0.0
    negatives: int = 3
    find_score: str = "likelihood"

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.temporal not in TEMPORAL_KINDS:
            raise ValueError(f"temporal must be one of {', '.join(TEMPORAL_KINDS)}, got {self.temporal!r}")
        if self.find_score not in SCORES:
            raise ValueError(f"find_score must be one of {', '.join(SCORES)}, got {self.find_score!r}")
        if self.task == "find" and not self.window > 0:
            raise ValueError(f"find trains on windows of some seconds, got {self.window!r}")

    @property
    def temporal_only(self) -> bool:
        """Whether the temporal module is trained alone (everything else frozen)."""
        return self.temporal != "none" and not self.temporal_with_qformer

    def steps_per_epoch(self, examples: int) -> int:
        return math.ceil(math.ceil(examples / self.batch_size) / self.grad_accum)


@dataclass(frozen=True)
class TrainData:
    """What a run reads and how it splits it (stored beside its settings): a resumed run must read
    the same, or its position in the data, its schedule and its best epoch would mean other things.
    The data files are named by content, so an edited file is refused whatever its path."""

    data: str
    val: str | None = None
    val_split: float | None = None
    videos: str | None = None
    label_field: str | None = None
    split: str | None = None  # --split, of an annotation file that holds several (None: train)

    @classmethod
    def of(
        cls,
        data: Path,
        val: Path | None,
        val_split: float | None,
        videos: Path | None,
        label_field: str | None,
        split: str | None = None,
    ) -> TrainData:
        return cls(data=file_identity(data), val=file_identity(val) if val is not None else None,
                   val_split=val_split, videos=str(videos.resolve()) if videos is not None else None,
                   label_field=label_field, split=split)  # fmt: skip


def model_name(model: str) -> str:
    """The base model as a run records and compares it: a local folder by its absolute path (so
    `tiny`, `./tiny/` and `/home/me/tiny` are one model), a hub id as it is."""
    folder = Path(model).expanduser()
    return str(folder.resolve()) if folder.is_dir() else model
