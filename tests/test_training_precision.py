"""Training through a float16 LLM (`malmm train --dtype float16`), on the CPU: the loss is scaled
before the backward pass (float16 gradients through the LLM would underflow otherwise), the
optimiser sees the true gradients, a step whose gradients overflow is skipped and the scale backs
off, and the scale is saved and resumed with the run. A float32 or bfloat16 LLM needs no scaling.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from malmm_cli.jobs.training.data import read_data
from malmm_cli.jobs.training.folder import RESUME, RUN_INFO
from malmm_cli.jobs.training.settings import TrainSettings
from malmm_cli.jobs.training.trainer import Position, Trainer
from models import Malmm
from models.presets import TRAINED_WEIGHTS
from tests.media import SCENE_COLOURS, make_scene

INITIAL_SCALE = 2.0**16  # torch.amp.GradScaler's default
# The tiny model's first step overflows float16 at the initial scale (the scaler would back off
# over a few skipped steps, as it does for real models): tests that need a step taken start lower.
FITTING_SCALE = 2.0**10


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> list:
    folder = tmp_path_factory.mktemp("clips")
    colours = list(SCENE_COLOURS)
    rows = []
    for i in range(2):
        make_scene(folder / f"{i}.mp4", colours[i], seed=i)
        rows.append({"video": f"{i}.mp4", "label": colours[i]})
    (folder / "labels.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    train, _ = read_data(folder / "labels.jsonl", "classify", None, None, 0)
    return train


class Steps:
    """A progress display that records, after every optimiser step, the scale and the trained weights."""

    def __init__(self, trainer: Trainer, after_step: Any = None) -> None:
        self.trainer, self.after_step = trainer, after_step
        self.seen: list[dict[str, Any]] = []

    def step(self, position: Position, loss: float | None, lr: float, count: int) -> None:
        weights = {name: p.detach().clone() for name, p in self.trainer.trained}
        self.seen.append({"scale": self.trainer.scaler.get_scale(), "weights": weights, "lr": lr, "loss": loss})
        if self.after_step is not None:
            self.after_step(len(self.seen))

    def epoch(self, record: dict[str, Any]) -> None:
        pass


def trainer_for(model_dir: Path, examples: list, output: Path, dtype: torch.dtype, batch_size: int = 2) -> Trainer:
    """No warm-up: the first step trains at the full rate (1e-3, then the cosine's 5e-4 for a second)."""
    malmm = Malmm.from_pretrained(model_dir, dtype=dtype)
    settings = TrainSettings(task="classify", frames=3, memory_bank_length=2, epochs=1, lr=1e-3,
                                      batch_size=batch_size, warmup_steps=0, samplings=1)  # fmt: skip
    return Trainer(malmm, examples, [], settings, output, base_model=str(model_dir), cache=None,
                            labels=sorted({e.label for e in examples}), warn=print)  # fmt: skip


def optimizer_steps(trainer: Trainer) -> list[dict[str, torch.Tensor]]:
    """Filled with the gradients the optimiser steps with, each time it really steps."""
    steps: list[dict[str, torch.Tensor]] = []

    def before_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        steps.append({name: p.grad.clone() for name, p in trainer.trained if p.grad is not None})

    trainer.optimizer.register_step_pre_hook(before_step)
    return steps


def start_scale(trainer: Trainer, scale: float) -> None:
    """The trainer's loss scaler, as it makes it but starting at `scale`."""
    enabled = trainer.scaler.is_enabled()
    trainer.scaler = torch.amp.GradScaler(trainer.malmm.device.type, init_scale=scale, enabled=enabled)


def test_only_a_float16_llm_scales_the_loss(tiny_llama_dir: Path, examples: list, tmp_path: Path) -> None:
    enabled = {dtype: trainer_for(tiny_llama_dir, examples, tmp_path / str(dtype), dtype).scaler.is_enabled()
               for dtype in (torch.float16, torch.bfloat16, torch.float32)}  # fmt: skip
    assert enabled == {torch.float16: True, torch.bfloat16: False, torch.float32: False}


def test_float16_step_scales_the_loss_and_steps_with_true_gradients(
    tiny_llama_dir: Path, examples: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One step through a float16 LLM and through a float32 one, from the same weights and
    random state: the backward pass of the float16 one starts from the scaled loss, and both
    optimisers see the same gradients (within float16's precision) and take a finite step."""
    runs = {}
    for dtype in (torch.float16, torch.float32):
        trainer = trainer_for(tiny_llama_dir, examples, tmp_path / str(dtype), dtype)
        start_scale(trainer, FITTING_SCALE)
        loss_gradients: list[float] = []
        batch_loss = trainer.batch_loss

        def spied_loss(*args: Any, into: list[float] = loss_gradients, original: Any = batch_loss) -> torch.Tensor:
            loss = original(*args)
            loss.register_hook(lambda gradient: into.append(gradient.item()))
            return loss

        monkeypatch.setattr(trainer, "batch_loss", spied_loss)
        seen_by_optimizer = optimizer_steps(trainer)
        before = {name: p.detach().clone() for name, p in trainer.trained}
        steps = Steps(trainer)
        trainer.run(steps)
        (after,) = steps.seen
        runs[dtype] = (loss_gradients, seen_by_optimizer, before, after)

    half_loss, (half_gradients,), half_before, half_after = runs[torch.float16]
    full_loss, (full_gradients,), _, full_after = runs[torch.float32]
    assert half_loss == [FITTING_SCALE] and full_loss == [1.0]  # d(scaled loss)/d(loss): the scale
    assert half_after["scale"] == FITTING_SCALE  # no overflow: the scale stays
    assert half_after["loss"] == pytest.approx(full_after["loss"], rel=2e-3)  # the same step, in float16
    assert half_gradients.keys() == full_gradients.keys() and len(half_gradients) > 10
    half, full = (
        torch.cat([g.flatten() for g in gradients.values()]) for gradients in (half_gradients, full_gradients)
    )
    assert half.norm().item() == pytest.approx(full.norm().item(), rel=2e-2)  # unscaled, none lost
    assert torch.nn.functional.cosine_similarity(half, full, dim=0) > 0.999
    reached = [name for name, gradient in half_gradients.items() if gradient.norm() > 1e-6 * half.norm()]
    assert len(reached) > 10
    assert all(not torch.equal(half_after["weights"][name], half_before[name]) for name in reached)  # stepped
    assert all(torch.isfinite(weight).all() for weight in half_after["weights"].values())


def test_an_overflowing_step_is_skipped_and_the_scale_resumed(
    tiny_llama_dir: Path, examples: list, tmp_path: Path
) -> None:
    """At a scale of 2^40 the float16 gradients overflow: the step leaves the weights and the
    optimiser alone, halves the scale and still counts in the schedule; the next step (at a
    scale that fits) trains. The run's resumable state holds the scale, and --resume restores it."""
    output = tmp_path / "run"
    trainer = trainer_for(tiny_llama_dir, examples, output, torch.float16, batch_size=1)
    start_scale(trainer, 2.0**40)
    stepped = optimizer_steps(trainer)
    before = {name: p.detach().clone() for name, p in trainer.trained}
    lrs = [trainer.scheduler.get_last_lr()[0]]

    def after_step(step: int) -> None:
        lrs.append(trainer.scheduler.get_last_lr()[0])
        if step == 1:
            assert trainer.optimizer.state_dict()["state"] == {}  # AdamW never stepped
            trainer.scaler.update(new_scale=FITTING_SCALE)

    steps = Steps(trainer, after_step)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.run(steps)
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]  # PyTorch's, on a skipped first step
    skipped, taken = steps.seen
    assert skipped["scale"] == 2.0**39
    assert all(torch.equal(skipped["weights"][name], weight) for name, weight in before.items())
    assert taken["scale"] == FITTING_SCALE
    (gradients,) = stepped  # the optimiser stepped once: at the second step
    reached = [name for name, gradient in gradients.items() if gradient.abs().max() > 0]
    assert len(reached) > 10 and all(not torch.equal(taken["weights"][name], before[name]) for name in reached)
    assert all(torch.isfinite(weight).all() for weight in taken["weights"].values())
    assert lrs == pytest.approx([1e-3, 5e-4, 0.0])  # the schedule counted the skipped step

    state = json.loads((output / RESUME / "state.json").read_text())
    assert state["scaler"]["scale"] == FITTING_SCALE
    resumed = trainer_for(tiny_llama_dir, examples, output, torch.float16, batch_size=1)
    resumed.resume()
    assert resumed.scaler.get_scale() == FITTING_SCALE  # not the initial scale again


def test_cli_trains_through_a_float16_llm(run, tiny_llama_dir: Path, examples: list, tmp_path: Path) -> None:
    """`malmm train --dtype float16` on the CPU: the run uses and saves a loss scale, and its weights are finite."""
    data = examples[0].video.parent / "labels.jsonl"
    output = tmp_path / "run"
    result = run("train", data, "--task", "classify", "--output", output, "--model", tiny_llama_dir, "--device", "cpu",
                 "--dtype", "float16", "--frames", "3", "--memory-bank-length", "2", "--batch-size", "1",
                 "--epochs", "2", "-q", model=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    scale = json.loads((output / RESUME / "state.json").read_text())["scaler"]["scale"]
    assert scale <= INITIAL_SCALE and math.log2(scale).is_integer()  # halved at each overflow, if any
    weights = load_file(str(output / TRAINED_WEIGHTS))
    assert weights and all(torch.isfinite(tensor).all() for tensor in weights.values())
    losses = [epoch["train_loss"] for epoch in json.loads((output / RUN_INFO).read_text())["epochs"]]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
