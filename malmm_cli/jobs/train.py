"""`malmm train`: fine-tune the memory path on labelled clips, and lose nothing to a crash or Ctrl-C.

Where an example goes: its clip is sampled as MA-LMM samples training clips (one random time in
each of `frames` equal segments; `samplings` such draws per clip, used in turn by the epochs),
read by `VideoStream` with the frozen ViT, stopping before its LayerNorm (which is trained), and
replayed from the feature cache once computed, so that later epochs cost the Q-Former and the
LLM only. With `augment` every epoch draws new times and a new crop and flip for the clip
(augment.py), so the ViT runs on every step. `models.training.read_clip` steps the memory through
the clip (gradients at the last step only) and `answer_loss` scores the target. Validation clips
are sampled evenly.

A run folder holds:
- model.safetensors: the trained tensors of the best epoch (by the validation metric, else the
  validation loss, else the last epoch): what `--checkpoint RUN` loads;
- training.json: the settings, the base model and every epoch's figures;
- resume/: everything needed to go on exactly where the run stopped (trained tensors, optimiser,
  schedule, loss scaler, random state, position in the data), written every `save_every`
  optimiser steps, after each epoch and on Ctrl-C. On a CPU a resumed run ends with bitwise the
  same weights as one that was never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from malmm_cli.jobs.dataset import DatasetError, Example, read_examples
from malmm_cli.jobs.records import changed_values, file_identity
from malmm_cli.media.augment import ClipAugment
from malmm_cli.media.plans import VideoError
from malmm_cli.media.sampling import Sampling
from malmm_cli.output.writers import write_json
from malmm_cli.reading.feature_cache import FeatureCache
from malmm_cli.reading.stream import VideoStream
from malmm_cli.wording import counted
from models import Malmm
from models.checkpoint import CheckpointError, describe_temporal, respect_umask, save_trained
from models.lora import add_lora
from models.memory_plan import TrainingShape
from models.presets import CAPTION, CLASSIFICATION, OPTIMIZERS, QUESTION, TEMPORAL_KINDS, TRAINED_WEIGHTS
from models.temporal import temporal_settings
from models.training import (
    MAX_PROMPT_TOKENS,
    MAX_TARGET_TOKENS,
    answer_loss,
    make_optimizer,
    parameter_groups,
    query_outputs,
    read_clip,
    temporal_read,
    trainable_parameters,
    warmup_cosine,
)

# The preset each training task learns (its instruction and prompt, frames, memory bank length).
TASK_PRESETS = {"caption": CAPTION, "ask": QUESTION, "classify": CLASSIFICATION}
# MA-LMM's recipes per task: learning rate, frames, memory bank length, epochs.
TASK_DEFAULTS = {
    task: {"lr": lr, "frames": TASK_PRESETS[task].frames,
           "memory_bank_length": TASK_PRESETS[task].memory_bank_length, "epochs": epochs}
    for task, lr, epochs in (("caption", 1e-5, 10), ("ask", 1e-4, 5), ("classify", 1e-4, 20))
}  # fmt: skip
RUN_INFO = "training.json"
RESUME = "resume"
_CAPTION_PUNCTUATION = re.compile(r"[.!\"()*#:;~]")


class TrainingError(Exception):
    """A run that cannot start or go on, with what to do about it."""


class NothingReadable(TrainingError):
    """No training clip could be read: there is nothing to train on."""


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
    temporal: str = "none"  # "mamba": add and train a temporal module after the Q-Former (models/temporal.py)
    temporal_layers: int = 1
    temporal_with_qformer: bool = False  # train the module with MA-LMM's parts, not alone

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.temporal not in TEMPORAL_KINDS:
            raise ValueError(f"temporal must be one of {', '.join(TEMPORAL_KINDS)}, got {self.temporal!r}")

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


def prompt_for(task: str, example: Example) -> str:
    """The instruction (Q-Former) and prompt (LLM) of an example, as MA-LMM's presets word them."""
    return TASK_PRESETS[task].prompt(example.question)  # only the ask instruction has a {question}


def target_for(task: str, example: Example) -> str:
    """The text to learn; captions are cleaned as MA-LMM cleans them (lower case, `.!"()*#:;~` removed)."""
    text = example.target(task)
    if task == "caption":
        text = " ".join(_CAPTION_PUNCTUATION.sub(" ", text.lower()).split())
    return text


class ClipFeatures:
    """ViT features (before its LayerNorm) of examples' clips, through the feature cache.

    A clip with fewer decodable frames than `frames` repeats its nearest ones, as MA-LMM's loader
    repeats frames of short clips. A clip that cannot be read at all is reported once and then
    left out of every epoch.
    """

    def __init__(
        self,
        malmm: Malmm,
        frames: int,
        cache: FeatureCache | None,
        warn: Callable[[str], None],
        augment: bool = False,
    ):
        """augment: random draws are also cropped and flipped (`ClipAugment`), and so encoded by
        the ViT every time instead of cached; even samplings (validation) stay plain and cached."""
        self.malmm = malmm
        self.frames = frames
        self.cache = cache
        self.warn = warn
        self.augment = augment
        self.unreadable: set[str] = set()

    def get(self, example: Example, draw: int | None, seed: int) -> torch.Tensor | None:
        """[frames, N, C], or None for an unreadable clip. draw: which random sampling (None: even)."""
        if example.id in self.unreadable:
            return None
        where = f"{example.video}|{example.start}|{example.end}"
        jitter = None if draw is None else zlib.crc32(f"{seed}|{draw}|{where}".encode())
        sampling = Sampling(frames=self.frames, start=example.start, end=example.end, jitter=jitter)
        augmented = self.augment and draw is not None
        transform = ClipAugment(zlib.crc32(f"{seed}|augment|{draw}|{where}".encode())) if augmented else None
        cache = None if augmented else self.cache
        try:
            with VideoStream(self.malmm, example.video, sampling, cache=cache, normalize=False,
                             transform=transform) as stream:  # fmt: skip
                features = [feature[0] for _, feature in stream]
        except (VideoError, OSError) as error:
            features, reason = [], str(error) or type(error).__name__
        else:
            reason = "no frame could be decoded"
        if not features:
            self.unreadable.add(example.id)
            use = "validation" if draw is None else "training"  # validation clips are sampled evenly
            self.warn(f"{example.id} ({example.video}): {reason}; left out of {use}")
            return None
        nearest = [min(len(features) - 1, i * len(features) // self.frames) for i in range(self.frames)]
        return torch.stack([features[i] for i in nearest])

    def readable(
        self, examples: list[Example], draw: int | None, seed: int
    ) -> tuple[list[Example], list[torch.Tensor]]:
        """The examples whose clips can be read, with their features (see `get`)."""
        pairs = [(example, self.get(example, draw, seed)) for example in examples]
        pairs = [(example, features) for example, features in pairs if features is not None]
        return [example for example, _ in pairs], [features for _, features in pairs]


@dataclass
class Position:
    """Where a run stands: optimiser steps taken and the next micro-batch of the epoch."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


def epoch_order(examples: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of an epoch: a function of (seed, epoch) only, so a resumed
    run sees the same order without storing it."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(examples, generator=generator).tolist()


class Trainer:
    """One run: the model, its optimiser, and the folder it saves to."""

    def __init__(
        self,
        malmm: Malmm,
        train: list[Example],
        val: list[Example],
        settings: TrainSettings,
        output: Path,
        *,
        base_model: str,
        cache: FeatureCache | None,
        labels: list[str] | None = None,
        warn: Callable[[str], None] = print,
        checkpointing: bool | None = None,
        data: TrainData | None = None,
    ):
        """checkpointing: recompute the LLM's activations in the backward pass instead of keeping
        them (default: on a GPU); it changes memory and time, not the result. data: what the
        examples were read from, which `resume` compares."""
        self.malmm, self.train_set, self.val_set = malmm, train, val
        self.data = data
        self.settings, self.output, self.base_model = settings, output, base_model
        self.labels = labels
        self.warn = warn
        self.features = ClipFeatures(malmm, settings.frames, cache, warn, settings.augment)
        model = malmm.model
        torch.manual_seed(settings.seed)  # the adapters' initialisation too
        if settings.lora_rank:
            add_lora(model, settings.lora_rank)
        if settings.temporal != "none":
            add_temporal_module(model, settings)
        self.trained = trainable_parameters(model, temporal_only=settings.temporal_only)
        # With the Q-Former frozen its per-frame outputs never change: computed once per clip
        # and draw, kept here (float16, NQ x D x 2 bytes a frame), the module trained on them.
        self.query_outputs: dict[tuple[str, int | None], torch.Tensor] = {}
        if checkpointing if checkpointing is not None else malmm.device.type == "cuda":
            model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(settings.seed)  # again: dropout's stream starts alike with or without adapters
        self.optimizer = make_optimizer(settings.optimizer, parameter_groups(self.trained, settings.weight_decay),
                                        settings.lr)  # fmt: skip
        total = settings.steps_per_epoch(len(train)) * settings.epochs
        self.total_steps = total
        self.scheduler = warmup_cosine(self.optimizer, total, min(settings.warmup_steps, max(total // 10, 1)))
        llm_dtype = model.get_input_embeddings().weight.dtype
        # float16 gradients through a float16 LLM underflow without loss scaling (bfloat16 needs none)
        self.scaler = torch.amp.GradScaler(malmm.device.type, enabled=llm_dtype == torch.float16)
        self.position = Position()
        self.epoch_figures = _new_epoch()  # of the epoch under way
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None

    # --- one step -------------------------------------------------------------------------------

    def _read(
        self, examples: list[Example], features: list[torch.Tensor], draw: int | None = None
    ) -> tuple[list[str], torch.Tensor]:
        """(prompts, the last step's query output [B, NQ, D]) of clips read into fresh memories.
        draw: which sampling the features are (None: the even one), the key of cached outputs."""
        prompts = [prompt_for(self.settings.task, e) for e in examples]
        state = self.malmm.new_memory(prompts, self.settings.memory_bank_length, total_frames=self.settings.frames,
                                      strategy=self.settings.memory)  # fmt: skip
        model = self.malmm.model
        if not self.settings.temporal_only or (self.settings.augment and draw is not None):
            return prompts, read_clip(model, state, torch.stack(features).to(self.malmm.device))
        keys = [(e.id, draw) for e in examples]
        if any(key not in self.query_outputs for key in keys):
            with torch.no_grad():
                outputs = query_outputs(model, state, torch.stack(features).to(self.malmm.device))
            for key, output in zip(keys, outputs, strict=True):
                self.query_outputs[key] = output.to("cpu", torch.float16)
        outputs = torch.stack([self.query_outputs[key] for key in keys]).to(self.malmm.device, torch.float32)
        return prompts, temporal_read(model, state, outputs)

    def _loss(self, examples: list[Example], prompts: list[str], output: torch.Tensor) -> torch.Tensor:
        targets = [target_for(self.settings.task, e) for e in examples]
        return answer_loss(self.malmm.model, self.malmm.tokenizer, output, prompts, targets)

    def batch_loss(
        self, examples: list[Example], features: list[torch.Tensor], draw: int | None = None
    ) -> torch.Tensor:
        return self._loss(examples, *self._read(examples, features, draw))

    def _micro_batches(self, epoch: int) -> list[list[int]]:
        order = epoch_order(len(self.train_set), self.settings.seed, epoch)
        size = self.settings.batch_size
        return [order[i : i + size] for i in range(0, len(order), size)]

    def _train_mode(self, training: bool) -> None:
        model = self.malmm.model
        # dropout as MA-LMM trains; the ViT always evaluates, and so does a frozen Q-Former
        model.qformer.train(training and not self.settings.temporal_only)
        model.language_model.train(training)
        if model.temporal is not None:
            model.temporal.train(training)

    # --- the run --------------------------------------------------------------------------------

    def run(self, progress: Any) -> dict[str, Any]:
        """Train to the end (or from where `resume` left), saving as it goes. Returns the summary."""
        self.output.mkdir(parents=True, exist_ok=True)
        self._train_mode(True)
        self.boundary = self._snapshot()
        try:
            while self.position.epoch < self.settings.epochs:
                self._train_epoch(progress)
                if not self.epoch_figures["examples"]:
                    raise NothingReadable(f"none of the {len(self.train_set)} training clips could be read (see "
                                          "the warnings above): fix or replace them, then start again")  # fmt: skip
                record = {"epoch": self.position.epoch + 1, **self._epoch_figures(), **self.validate()}
                self.history.append(record)
                self.position = Position(self.position.epoch + 1, 0, self.position.step)
                self.epoch_figures = _new_epoch()
                self._keep_best(record)
                self.boundary = self._snapshot()
                self.save_resume(self.boundary)
                progress.epoch(record)
        except KeyboardInterrupt:
            self.save_resume(self.boundary)
            raise
        finally:
            self._train_mode(False)
        return self.summary()

    def _train_epoch(self, progress: Any) -> None:
        """The optimiser steps left in the current epoch."""
        batches = self._micro_batches(self.position.epoch)
        figures = self.epoch_figures
        started = time.monotonic() - figures["seconds"]
        while self.position.batch < len(batches):
            group = batches[self.position.batch : self.position.batch + self.settings.grad_accum]
            loss, count = self._optimizer_step(group, self.position.epoch)
            self.position.batch += len(group)
            self.position.step += 1
            figures["examples"] += count
            figures["seconds"] = time.monotonic() - started
            if loss is not None:
                figures["loss_sum"] += loss
                figures["losses"] += 1
            self.boundary = self._snapshot()
            progress.step(self.position, loss, self.scheduler.get_last_lr()[0], count)
            if self.position.step % self.settings.save_every == 0:
                self.save_resume(self.boundary)

    def _epoch_figures(self) -> dict[str, Any]:
        figures = self.epoch_figures
        loss = figures["loss_sum"] / figures["losses"] if figures["losses"] else None
        return {"train_loss": loss, "examples": figures["examples"], "seconds": round(figures["seconds"], 2)}

    def _optimizer_step(self, group: list[list[int]], epoch: int) -> tuple[float | None, int]:
        """Accumulate gradients over the micro-batches of `group`, then one optimiser step."""
        settings = self.settings
        draw = epoch if settings.augment else epoch % settings.samplings  # cached draws are reused in turn
        total, count = 0.0, 0
        for indices in group:
            examples, features = self.features.readable([self.train_set[i] for i in indices], draw, settings.seed)
            if not examples:
                continue
            loss = self.batch_loss(examples, features, draw)
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss became {loss.item()} at step {self.position.step + 1}: lower --lr")
            self.scaler.scale(loss / len(group)).backward()
            total += loss.item() * len(examples)
            count += len(examples)
        if count:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():  # the schedule counts every step, taken or not (no readable clip,
            # or skipped by the loss scaler), so that it follows the position; PyTorch warns of the first
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()
        return (total / count if count else None), count

    # --- validation and the best checkpoint -----------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Validation loss, and accuracy for classify (labels ranked) and ask (exact answers)."""
        if not self.val_set:
            return {}
        self._train_mode(False)
        losses, correct, counted = [], 0, 0
        try:
            for start in range(0, len(self.val_set), self.settings.batch_size):
                batch = self.val_set[start : start + self.settings.batch_size]
                examples, features = self.features.readable(batch, None, self.settings.seed)
                if not examples:
                    continue
                prompts, output = self._read(examples, features)  # once for the loss and the accuracy
                losses.append((self._loss(examples, prompts, output).item(), len(examples)))
                right = self._correct(examples, prompts, output)
                if right is not None:
                    correct += right
                    counted += len(examples)
        finally:
            self._train_mode(True)
        if not losses:
            return {}
        scored = sum(n for _, n in losses)
        record: dict[str, Any] = {"val_loss": sum(v * n for v, n in losses) / scored, "val_examples": scored}
        if counted:
            record["val_accuracy"] = correct / counted
        return record

    def _correct(self, examples: list[Example], prompts: list[str], output: torch.Tensor) -> int | None:
        """How many of the examples the model gets right (None: the task has no accuracy)."""
        task, malmm = self.settings.task, self.malmm
        if task == "caption" or (task == "classify" and not self.labels):
            return None
        if task == "classify":
            best = malmm.score_labels(output, prompts, self.labels).argmax(dim=1).tolist()
            return sum(self.labels[b] == e.label for b, e in zip(best, examples, strict=True))
        answers = malmm.generate(output, prompts, QUESTION.generation)
        return sum(a.strip().lower() == e.answer.strip().lower() for a, e in zip(answers, examples, strict=True))

    def _keep_best(self, record: dict[str, Any]) -> None:
        """model.safetensors holds the best epoch so far: highest accuracy, else lowest loss."""
        if "val_accuracy" in record:
            score = (record["val_accuracy"], -record["val_loss"])
        elif "val_loss" in record:
            score = (-record["val_loss"],)
        else:
            score = (record["epoch"],)  # no validation: the latest
        if self.best is None or tuple(self.best["score"]) < score:
            self.best = {"epoch": record["epoch"], "score": list(score)}
            save_trained(self.malmm.model, self.output / TRAINED_WEIGHTS, self.base_model)
        self._write_info()

    def summary(self) -> dict[str, Any]:
        return {"settings": dataclasses.asdict(self.settings), "data": self._data(), "base_model": self.base_model,
                "labels": self.labels, "best": self.best, "epochs": self.history}  # fmt: skip

    def _data(self) -> dict[str, Any] | None:
        return dataclasses.asdict(self.data) if self.data is not None else None

    def _write_info(self) -> None:
        write_json(self.output / RUN_INFO, self.summary())

    # --- resumable state ------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        """The state at an optimiser-step boundary that cannot be read back later: position and
        random state (weights, optimiser and schedule only change at the boundary)."""
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        return {"position": dataclasses.replace(self.position), "rng": rng, "history": list(self.history),
                "best": self.best, "epoch_figures": dict(self.epoch_figures)}  # fmt: skip

    def save_resume(self, boundary: dict[str, Any]) -> None:
        """Write resume/ atomically (a new folder renamed over the old one)."""
        folder = self.output / RESUME
        partial = self.output / f".{RESUME}.partial"
        partial.mkdir(parents=True, exist_ok=True)
        tensors, plain = _flatten_optimizer(self.optimizer.state_dict())
        tensors.update({f"rng.{k}": v for k, v in boundary["rng"].items()})
        tensors.update({f"trained.{n}": p.detach().cpu().contiguous() for n, p in self.trained})
        save_file(tensors, str(partial / "state.safetensors"))
        respect_umask(partial / "state.safetensors")
        write_json(partial / "state.json", {
            "position": dataclasses.asdict(boundary["position"]), "optimizer": plain,
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "history": boundary["history"], "best": boundary["best"], "epoch_figures": boundary["epoch_figures"],
            "settings": dataclasses.asdict(self.settings), "data": self._data(),
            "base_model": self.base_model, "labels": self.labels, "unreadable": sorted(self.features.unreadable),
        })  # fmt: skip
        old = self.output / f".{RESUME}.old"
        if folder.exists():
            os.replace(folder, old)
        os.replace(partial, folder)
        if old.exists():
            shutil.rmtree(old)

    def resume(self) -> None:
        """Go on from resume/: same settings, weights, optimiser, schedule, scaler, random state."""
        folder = self.output / RESUME
        try:
            plain = json.loads((folder / "state.json").read_text())
            tensors = load_file(str(folder / "state.safetensors"))
        except (OSError, ValueError) as error:
            raise TrainingError(f"cannot resume from {folder}: {error}") from error
        current = dataclasses.asdict(self.settings)
        defaults = {f.name: f.default for f in dataclasses.fields(TrainSettings) if f.name not in plain["settings"]}
        stored = {**defaults, **plain["settings"]}  # a run saved before a setting existed had its default
        if {**stored, "epochs": 0} != {**current, "epochs": 0}:
            changed = changed_values(stored, current)
            raise TrainingError(f"{self.output} was trained with other settings ({changed}); resume with the same ones")
        if current["epochs"] < stored["epochs"]:
            raise TrainingError(f"{self.output} was planned for {stored['epochs']} epochs: --resume can raise "
                                "--epochs, not lower it (its schedule is the longer run's)")  # fmt: skip
        self._check_data(plain.get("data"))
        if model_name(plain["base_model"]) != model_name(self.base_model):
            raise CheckpointError(f"{self.output} was trained on {plain['base_model']}, not {self.base_model}")
        with torch.no_grad():
            for name, parameter in self.trained:
                parameter.copy_(tensors[f"trained.{name}"])
        self.optimizer.load_state_dict(_unflatten_optimizer(tensors, plain["optimizer"]))
        self.scheduler.load_state_dict(plain["scheduler"])
        if current["epochs"] != stored["epochs"]:
            self._extend_schedule(stored["epochs"])
        self.scaler.load_state_dict(plain["scaler"])
        torch.set_rng_state(tensors["rng.cpu"])
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda")]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        self.position = Position(**plain["position"])
        self.history, self.best, self.epoch_figures = plain["history"], plain["best"], plain["epoch_figures"]
        self.features.unreadable = set(plain["unreadable"])

    def _extend_schedule(self, planned: int) -> None:
        """A run resumed with more epochs than it was planned for: its schedule becomes the one a
        run planned for the new length from the start would have (the warm-up, then the cosine
        over every step of the longer run) and goes on from the step reached. So the learning
        rate rises at the resume point, to where the longer cosine stands (about half the peak
        for a finished run doubled), instead of staying at the end of the shorter one."""
        step = self.scheduler.last_epoch
        for group, base, factor in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                       self.scheduler.lr_lambdas, strict=True):  # fmt: skip
            group["lr"] = base * factor(step)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        lr = self.scheduler.get_last_lr()[0]
        self.warn(
            f"going on to {self.settings.epochs} epochs (planned: {planned}): the learning-rate schedule is "
            f"stretched to the longer run, lr {lr:.3g} at step {step} of {self.total_steps}"
        )

    def _check_data(self, stored: dict[str, Any] | None) -> None:
        """Refuse other data, another validation set or split (a state saved before the data were
        recorded has nothing to compare: it goes on)."""
        current = self._data()
        if stored is not None:  # a state saved before a field existed had its default
            stored = {**dataclasses.asdict(TrainData(data=stored.get("data", ""))), **stored}
        if stored is None or current is None or stored == current:
            return
        changed = changed_values(stored, current)
        raise TrainingError(
            f"{self.output} was trained on other data ({changed}); resume with the same files and options, "
            "or start a new run in another folder"
        )


def add_temporal_module(model: Any, settings: TrainSettings) -> None:
    """Give the model the run's temporal module, unless it starts from a checkpoint that has that
    module already (then its weights go on training); a different one is refused."""
    wanted = temporal_settings(settings.temporal, model.config.qformer_config.hidden_size,
                               layers=settings.temporal_layers)  # fmt: skip
    present = getattr(model.config, "temporal", None)
    if present is None:
        model.set_temporal(wanted)
    elif present != wanted:
        raise TrainingError(
            f"the starting checkpoint has temporal module {describe_temporal(present)}, the run asks for "
            f"{describe_temporal(wanted)}: give the same --temporal options, or start from another checkpoint"
        )


def training_shape(settings: TrainSettings, examples: list[Example]) -> TrainingShape:
    """The shape of this run's training steps, for its memory plan: the longest prompt and target
    counted at three characters a token (an over-estimate for English), before any tokenizer loads.
    (Whether the LLM is checkpointed depends on the device: loading.plan sets it.)"""
    prompts = [len(prompt_for(settings.task, e)) for e in examples] or [0]
    texts = [len(prompt_for(settings.task, e)) + len(target_for(settings.task, e)) for e in examples] or [0]
    return TrainingShape(
        batch_size=settings.batch_size, grad_accum=settings.grad_accum, optimizer=settings.optimizer,
        lora_rank=settings.lora_rank,
        text_tokens=min(max(texts) // 3 + 2, MAX_PROMPT_TOKENS + MAX_TARGET_TOKENS),
        instruction_tokens=min(max(prompts) // 3 + 2, MAX_PROMPT_TOKENS),
    )  # fmt: skip


def _new_epoch() -> dict[str, float]:
    return {"loss_sum": 0.0, "losses": 0, "examples": 0, "seconds": 0.0}


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
    examples = _named(read_examples(data, task, videos, label_field, split, "train"), data.name)
    if val is not None:
        source = val.name if val.name != data.name else str(val)
        return examples, _named(read_examples(val, task, videos, label_field, None, "val"), source)
    if not val_split:
        return examples, []
    order = epoch_order(len(examples), seed, -1)
    held = max(1, round(len(examples) * val_split))
    if held >= len(examples):
        raise DatasetError(f"--val-split {val_split} leaves no training examples of {len(examples)}")
    chosen = set(order[:held])
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


def model_name(model: str) -> str:
    """The base model as a run records and compares it: a local folder by its absolute path (so
    `tiny`, `./tiny/` and `/home/me/tiny` are one model), a hub id as it is."""
    folder = Path(model).expanduser()
    return str(folder.resolve()) if folder.is_dir() else model


def check_videos(examples: list[Example]) -> None:
    """Before the model loads: training needs at least one of its videos to exist (the usual
    mistake: an annotation file without --videos, or paths relative to another folder)."""
    if examples and not any(example.video.is_file() for example in examples):
        raise DatasetError(
            f"none of the {len(examples)} training videos exists (the first: {examples[0].video}): paths are "
            "relative to the data file's folder, or to --videos for MA-LMM annotations"
        )


def saved_epochs(output: Path) -> int | None:
    """The epochs a saved run was planned for (None: no readable saved state), so that `--resume`
    without `--epochs` goes on to the run's own end rather than to the task's default."""
    try:
        return int(json.loads((output / RESUME / "state.json").read_text())["settings"]["epochs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_output(output: Path, resume: bool) -> None:
    """A new run needs an empty or new folder (so no earlier run is overwritten); --resume one
    that holds a saved state."""
    if output.exists() and not output.is_dir():
        raise TrainingError(f"{output} is a file: give --output a folder for the run (new, or empty)")
    if resume:
        if not (output / RESUME / "state.json").is_file():
            raise TrainingError(f"{output} holds no saved run to resume (no {RESUME}/state.json)")
        return
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise TrainingError(f"{output} is not empty: pass --resume to go on with its run, or choose a new folder")


def describe(trainer: Trainer, train: int, val: int) -> str:
    s = trainer.settings
    return (
        f"Training {s.task} on {counted(train, 'clip')} ({val} for validation): {counted(s.epochs, 'epoch')} of "
        f"{counted(s.steps_per_epoch(train), 'step')}, batch {s.batch_size} x {s.grad_accum}, lr {s.lr:g}, "
        f"{counted(s.frames, 'frame')}, memory bank {s.memory_bank_length}, {OPTIMIZERS[s.optimizer]}"
        f"{', clips cropped and flipped' if s.augment else ''}{f', LoRA rank {s.lora_rank}' if s.lora_rank else ''}"
        f"{_temporal_words(s)}; "
        f"{sum(p.numel() for _, p in trainer.trained) / 1e6:.1f} M trained parameters"
    )


def _temporal_words(settings: TrainSettings) -> str:
    if settings.temporal == "none":
        return ""
    alone = "alone, on cached Q-Former outputs" if settings.temporal_only else "with the Q-Former"
    return f", temporal {settings.temporal} ({counted(settings.temporal_layers, 'layer')}) trained {alone}"


def conclusion(summary: dict[str, Any], output: Path, settings: TrainSettings) -> str:
    best = summary["best"] or {}
    command = {"caption": "caption", "ask": "ask", "classify": "predict"}[settings.task]
    return (
        f"Done: {output / TRAINED_WEIGHTS} holds epoch {best.get('epoch')} of {settings.epochs}; "
        f"use it with `malmm {command} VIDEO --checkpoint {output} --frames {settings.frames} "
        f"--memory-bank-length {settings.memory_bank_length}`"
    )


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser state dict as safetensors tensors plus JSON (never a pickle). A parameter's
    state may nest dicts (bitsandbytes keeps its quantization state in one): tensors are named
    by their path, `optimizer.{index}.{key}/{key}...`."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()  # storages already saved: bitsandbytes shares its quantization maps

    def split(values: dict[str, Any], prefix: str) -> dict[str, Any]:
        plain: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().contiguous()
                shared = value.untyped_storage().data_ptr() in seen
                seen.add(value.untyped_storage().data_ptr())
                tensors[prefix + key] = value.clone() if shared else value
            elif isinstance(value, dict):
                plain[key] = split(value, f"{prefix}{key}/")
            else:
                plain[key] = value
        return plain

    plain_state = {str(index): split(values, f"optimizer.{index}.") for index, values in state["state"].items()}
    return tensors, {"state": plain_state, "param_groups": state["param_groups"]}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): json.loads(json.dumps(values)) for i, values in plain["state"].items()}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, path = name.split(".", 2)
            *parents, key = path.split("/")
            where = state.setdefault(int(index), {})
            for parent in parents:
                where = where.setdefault(parent, {})
            where[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}
