"""A run's optimiser loop: steps, validation, the best epoch's checkpoint and the resumable state.

`models.training.read_clip` steps the memory through each clip's features (features.py; gradients
at the last step only) and `answer_loss` scores the target. The folder it writes is folder.py's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from malmm_cli.jobs.dataset import Example
from malmm_cli.jobs.errors import SetupError
from malmm_cli.jobs.records import changed_values
from malmm_cli.jobs.training.data import epoch_order, prompt_for, target_for
from malmm_cli.jobs.training.features import ClipFeatures
from malmm_cli.jobs.training.find_objective import FindObjective
from malmm_cli.jobs.training.folder import RESUME, RUN_INFO, STATE, TrainingError
from malmm_cli.jobs.training.optimizer_state import flatten_optimizer, unflatten_optimizer
from malmm_cli.jobs.training.settings import TASK_PRESETS, TrainData, TrainSettings, model_name
from malmm_cli.jobs.training.timed import TIMED_TASKS, VALIDATION_FIGURES, target_chars, timed_score
from malmm_cli.output.writers import write_json
from malmm_cli.reading.feature_cache import FeatureCache
from malmm_cli.reading.find import yes_prompt
from models import Malmm
from models.checkpoint import CheckpointError, describe_temporal, respect_umask, save_trained
from models.lora import LoraError, add_llm_lora, add_lora, describe_llm_lora, llm_lora_settings
from models.memory_plan import TrainingShape
from models.presets import QUESTION, TRAINED_WEIGHTS
from models.temporal import temporal_settings
from models.time_aware import TIMECHAT_WORDING
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


class NothingReadable(TrainingError):
    """No training clip could be read: there is nothing to train on."""


class Progress(Protocol):
    """What a run reports as it goes: the steps an earlier run already took (`start`, once), each
    optimiser step, and each finished epoch's figures (training.json's record)."""

    def start(self, step: int) -> None: ...

    def step(self, position: Position, loss: float | None, lr: float, examples: int) -> None: ...

    def epoch(self, record: dict[str, Any]) -> None: ...


@dataclass
class Position:
    """Where a run stands: optimiser steps taken and the next micro-batch of the epoch."""

    epoch: int = 0
    batch: int = 0
    step: int = 0


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
        self.find = None  # --task find: its windows, loss and validation
        if settings.task == "find":
            if malmm.model.time_aware:  # (a checkpoint trained with --time-aware; the option is refused)
                raise SetupError("--task find does not train a time-aware checkpoint yet: find's windows are read "
                                 "without their times (docs/time-aware.md)")  # fmt: skip
            self.find = FindObjective(malmm, settings, self.features, self._read_windows, warn)
        model = malmm.model
        torch.manual_seed(settings.seed)  # the adapters' initialisation too
        if settings.lora_rank:
            add_lora(model, settings.lora_rank)
        add_llm_adapter(model, settings)
        if settings.temporal != "none":
            add_temporal_module(model, settings)
        if settings.time_aware:  # a starting checkpoint trained with them keeps them (Malmm.from_pretrained)
            model.set_time_aware(TIMECHAT_WORDING)
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
        self,
        examples: list[Example],
        features: list[torch.Tensor],
        draw: int | None = None,
        times: list[list[float]] | None = None,
        prompts: list[str] | None = None,
    ) -> tuple[list[str], torch.Tensor]:
        """(prompts, the last step's query output [B, NQ, D]) of clips read into fresh memories.
        draw: which sampling the features are (None: the even one), the key of cached outputs.
        times: each clip's frame times from its start (`ClipFeatures.timed`), for time-aware frames.
        prompts: the instruction of each clip (default: its task's)."""
        prompts = prompts or [prompt_for(self.settings.task, e) for e in examples]
        state = self.malmm.new_memory(prompts, self.settings.memory_bank_length, total_frames=self.settings.frames,
                                      strategy=self.settings.memory)  # fmt: skip
        model = self.malmm.model
        steps = None  # each frame's time sentences [B, K], for a time-aware model
        if self.malmm.time_aware is not None:
            if times is None:
                raise TrainingError("a time-aware model reads its clips with their frame times: none were given")
            steps = [self.malmm.time_tokens(state, [clip[t] for clip in times]) for t in range(self.settings.frames)]
        if not self.settings.temporal_only or (self.settings.augment and draw is not None):
            return prompts, read_clip(model, state, torch.stack(features).to(self.malmm.device), steps)
        keys = [(e.id, draw) for e in examples]
        if any(key not in self.query_outputs for key in keys):
            with torch.no_grad():
                outputs = query_outputs(model, state, torch.stack(features).to(self.malmm.device), steps)
            for key, output in zip(keys, outputs, strict=True):
                self.query_outputs[key] = output.to("cpu", torch.float16)
        outputs = torch.stack([self.query_outputs[key] for key in keys]).to(self.malmm.device, torch.float32)
        return prompts, temporal_read(model, state, outputs)

    def _read_windows(
        self, clips: list[Example], features: list[torch.Tensor], prompts: list[str], draw: int | None
    ) -> torch.Tensor:
        """find's windows read as clips, each with its own instruction."""
        return self._read(clips, features, draw, prompts)[1]

    def _loss(self, examples: list[Example], prompts: list[str], output: torch.Tensor) -> torch.Tensor:
        targets = [target_for(self.settings.task, e) for e in examples]
        return answer_loss(self.malmm.model, self.malmm.tokenizer, output, prompts, targets)

    def batch_loss(
        self,
        examples: list[Example],
        features: list[torch.Tensor],
        draw: int | None = None,
        times: list[list[float]] | None = None,
    ) -> torch.Tensor:
        return self._loss(examples, *self._read(examples, features, draw, times))

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

    def run(self, progress: Progress) -> dict[str, Any]:
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

    def _train_epoch(self, progress: Progress) -> None:
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
            batch = [self.train_set[i] for i in indices]
            if self.find is not None:
                examples, find_loss = self.find.loss(batch, epoch, draw)
            else:
                examples, features, times = self.features.readable(batch, draw, settings.seed)
            if not examples:
                continue
            loss = find_loss if self.find is not None else self.batch_loss(examples, features, draw, times)
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
        """Validation loss, and accuracy for classify (labels ranked), ask (exact answers) and find (the
        best-scored window of a moment is one of its positives), or dense's and ground's figure
        (timed.py: generated, parsed and scored against the true times)."""
        if not self.val_set:
            return {}
        self._train_mode(False)
        losses, correct, counted = [], 0, 0
        try:
            for start in range(0, len(self.val_set), self.settings.batch_size):
                batch = self.val_set[start : start + self.settings.batch_size]
                if self.find is not None:
                    examples, loss, right = self.find.validate(batch)
                    if examples:
                        losses.append((loss.item(), len(examples)))
                        correct, counted = correct + right, counted + len(examples)
                    continue
                examples, features, times = self.features.readable(batch, None, self.settings.seed)
                if not examples:
                    continue
                prompts, output = self._read(examples, features, None, times)  # once for the loss and the accuracy
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
            record[VALIDATION_FIGURES.get(self.settings.task, "val_accuracy")] = correct / counted
        return record

    def _correct(self, examples: list[Example], prompts: list[str], output: torch.Tensor) -> float | None:
        """How many of the examples the model gets right (None: the task has no accuracy); for dense
        and ground the sum of their scores (timed.py), greedy decoding keeping validation cheap."""
        task, malmm = self.settings.task, self.malmm
        if task == "caption" or (task == "classify" and not self.labels):
            return None
        if task in TIMED_TASKS:
            answers = malmm.generate(output, prompts, TASK_PRESETS[task].generation.with_overrides(num_beams=1))
            return sum(timed_score(task, a, e) for a, e in zip(answers, examples, strict=True))
        if task == "classify":
            best = malmm.score_labels(output, prompts, self.labels).argmax(dim=1).tolist()
            return sum(self.labels[b] == e.label for b, e in zip(best, examples, strict=True))
        answers = malmm.generate(output, prompts, QUESTION.generation)
        return sum(a.strip().lower() == e.answer.strip().lower() for a, e in zip(answers, examples, strict=True))

    def _keep_best(self, record: dict[str, Any]) -> None:
        """model.safetensors holds the best epoch so far: highest accuracy (or the task's figure),
        else lowest loss."""
        figure = next((key for key in ("val_accuracy", *VALIDATION_FIGURES.values()) if key in record), None)
        if figure is not None:
            score = (record[figure], -record["val_loss"])
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
        tensors, plain = flatten_optimizer(self.optimizer.state_dict())
        tensors.update({f"rng.{k}": v for k, v in boundary["rng"].items()})
        tensors.update({f"trained.{n}": p.detach().cpu().contiguous() for n, p in self.trained})
        save_file(tensors, str(partial / "state.safetensors"))
        respect_umask(partial / "state.safetensors")
        write_json(partial / STATE, {
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
            plain = json.loads((folder / STATE).read_text())
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
        self.optimizer.load_state_dict(unflatten_optimizer(tensors, plain["optimizer"]))
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


def add_llm_adapter(model: Any, settings: TrainSettings) -> None:
    """Give the LLM the run's adapter (`--lora-llm`), unless it starts from a checkpoint that has
    that adapter already (then its weights go on training). A different one is refused, and so is
    a run without `--lora-llm` from a checkpoint with one: it would save the adapter untrained."""
    present = getattr(model.config, "llm_lora", None)
    if not settings.llm_lora_rank:
        if present:
            raise TrainingError(
                f"the starting checkpoint has an LLM adapter of {describe_llm_lora(present)}: give --lora-llm "
                f"{present['rank']} to go on training it, or start from a checkpoint without one"
            )
        return
    try:
        wanted = llm_lora_settings(settings.llm_lora_rank, model)
    except LoraError as error:
        raise TrainingError(str(error)) from error
    if present is None:
        add_llm_lora(model, wanted)
    elif present != wanted:
        raise TrainingError(
            f"the starting checkpoint has an LLM adapter of {describe_llm_lora(present)}, the run asks for "
            f"{describe_llm_lora(wanted)}: give --lora-llm {present['rank']}, or start from another checkpoint"
        )


def training_shape(settings: TrainSettings, examples: list[Example]) -> TrainingShape:
    """The shape of this run's training steps, for its memory plan: the longest prompt and target
    counted at three characters a token (an over-estimate for English), before any tokenizer loads.
    (Whether the LLM is checkpointed depends on the device: loading.plan sets it.)"""
    prompts = [len(training_prompt(settings, e)) for e in examples] or [0]
    texts = [len(training_prompt(settings, e)) + target_chars(settings.task, target_for(settings.task, e))
             for e in examples] or [0]  # fmt: skip
    return TrainingShape(
        batch_size=settings.batch_size, grad_accum=settings.grad_accum, optimizer=settings.optimizer,
        lora_rank=settings.lora_rank, llm_lora_rank=settings.llm_lora_rank,
        clips_per_example=1 + settings.negatives if settings.task == "find" else 1,
        text_tokens=min(max(texts) // 3 + 2, MAX_PROMPT_TOKENS + MAX_TARGET_TOKENS),
        instruction_tokens=min(max(prompts) // 3 + 2, MAX_PROMPT_TOKENS), time_aware=settings.time_aware,
    )  # fmt: skip


def training_prompt(settings: TrainSettings, example: Example) -> str:
    """The instruction an example is read with: find's yes rule asks its own question per query."""
    if settings.task == "find" and settings.find_score == "yes":
        return yes_prompt(example.target("find"))
    return prompt_for(settings.task, example)


def _new_epoch() -> dict[str, float]:
    return {"loss_sum": 0.0, "losses": 0, "examples": 0, "seconds": 0.0}
