"""The Mamba temporal module (models/temporal.py): closed at first, the same frame by frame as over
a clip, bounded in size, and carried by checkpoints."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from models import Malmm
from models.checkpoint import CheckpointError, load_checkpoint, save_trained
from models.temporal import TemporalMamba, state_tensors, temporal_settings
from models.training import read_clip, trainable_parameters

PROMPTS = ["what does the video describe?", "what is it?"]


def features(frames: int, videos: int = 2, seed: int = 0) -> torch.Tensor:
    """ViT features of tiny-model frames, after the vision LayerNorm: [frames, V, 17, 48]."""
    return torch.randn(frames, videos, 17, 48, generator=torch.Generator().manual_seed(seed))


def opened(module: TemporalMamba, gate: float = 0.7) -> TemporalMamba:
    """The module with its gate open (a trained module's), so that it changes the output."""
    with torch.no_grad():
        module.gate.fill_(gate)
    return module


def read(model, frames: torch.Tensor, bank: int = 3, strategy: str = "malmm") -> tuple[list[torch.Tensor], object]:
    state = model.new_memory(torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
                             bank, total_frames=frames.shape[0], strategy=strategy)  # fmt: skip
    outputs = []
    with torch.no_grad():
        for t, frame in enumerate(frames):
            output, state = model.step(state, frame, t)
            outputs.append(output.clone())
    return outputs, state


@pytest.fixture
def malmm(tiny_llama_dir: Path) -> Malmm:
    return Malmm.from_pretrained(tiny_llama_dir)


def test_an_untrained_module_is_no_module_exactly(malmm: Malmm) -> None:
    clip = features(6)
    without, _ = read(malmm.model, clip)
    module = malmm.model.add_temporal("mamba", layers=2)
    assert module.gate.item() == 0.0
    with_module, state = read(malmm.model, clip)
    assert state.temporal is not None  # the module ran
    for a, b in zip(without, with_module, strict=True):
        assert torch.equal(a, b)
    opened(module)  # and it is not a no-op once its gate opens
    changed, _ = read(malmm.model, clip)
    assert not torch.allclose(changed[-1], without[-1], atol=1e-3)


@pytest.mark.parametrize("layers", [1, 2])
def test_stepping_frame_by_frame_equals_the_scan_over_the_clip(malmm: Malmm, layers: int) -> None:
    model = malmm.model
    clip = features(7)
    without, _ = read(model, clip)  # the Q-Former outputs of every frame
    opened(model.add_temporal("mamba", layers=layers))
    stepped, _ = read(model, clip)
    with torch.no_grad():
        scanned = model.temporal.scan(torch.stack(without, dim=1))  # [R, T, NQ, D]
    for t, output in enumerate(stepped):
        torch.testing.assert_close(scanned[:, t], output, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("strategy", ["malmm", "avgpool", "concat"])
def test_training_reads_the_clip_with_the_scan(malmm: Malmm, strategy: str) -> None:
    """read_clip (Q-Former outputs of every frame, then the scan over the clip, gradients
    through it, then the strategy's pooling) ends where stepping frame by frame ends."""
    model = malmm.model
    opened(model.add_temporal("mamba"))
    raw = features(5)  # read_clip takes features before the vision LayerNorm, [B, T, N, C]
    with torch.no_grad():
        stepped, _ = read(model, model.vision_model.post_layernorm(raw), bank=5, strategy=strategy)
    trained = trainable_parameters(model, temporal_only=True)
    assert trained and all(name.startswith("temporal.") for name, _ in trained)
    state = model.new_memory(torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]]), torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
                             5, total_frames=5, strategy=strategy)  # fmt: skip
    output = read_clip(model, state, raw.transpose(0, 1))
    torch.testing.assert_close(output, stepped[-1], rtol=1e-5, atol=1e-5)
    output.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in trained)
    assert model.qformer.encoder.layer[0].attention.attention.query.weight.grad is None  # frozen


def test_state_size_after_5000_frames_equals_after_2(malmm: Malmm) -> None:
    model = malmm.model
    opened(model.add_temporal("mamba"))
    state = model.new_memory(torch.tensor([[2, 5, 3]]), memory_bank_length=2, total_frames=5000)
    frame = features(1, videos=1)[0]
    sizes = {}
    with torch.no_grad():
        for t in range(5000):
            output, state = model.step(state, frame + 0.01 * (t % 7), t)
            if t + 1 in (2, 5000):
                sizes[t + 1] = ([tuple(x.shape) for x in state.tensors()], state.nbytes())
    assert sizes[2] == sizes[5000]
    # bounded, yet nothing forgotten: the two slots of every bank stand for all 5000 frames
    assert state.frames_seen == 5000 and torch.isfinite(output).all()
    temporal = state_tensors(state.temporal)  # counted in the state's size too
    assert temporal and all(any(t is held for held in state.tensors()) for t in temporal)
    for bank in (state.visual, *state.queries):
        slots, counts = bank.in_time_order()
        assert slots.shape[1] == 2 and counts.sum(1).unique().tolist() == [5000.0]


def test_a_step_fills_the_state_of_every_layer(malmm: Malmm) -> None:
    """After one frame each layer holds a convolution state [R*NQ, E, K] and an SSM state [R*NQ, E, S]:
    the mixers got the cache (given by a name this transformers version does not read, it goes to
    **kwargs and the module steps every frame as if it were the first)."""
    model = malmm.model
    opened(model.add_temporal("mamba", layers=2))
    _, state = read(model, features(1))
    sequences, width = 2 * model.config.num_query_tokens, model.temporal.settings["width"]
    shapes = sorted(tuple(t.shape) for t in state_tensors(state.temporal))
    assert shapes == sorted([(sequences, width, 4), (sequences, width, 16)] * 2)


def test_select_and_copy_carry_the_temporal_state(malmm: Malmm) -> None:
    model = malmm.model
    opened(model.add_temporal("mamba"))
    clip = features(4)
    _, state = read(model, clip[:3])
    alone = state.select([1]).copy()
    with torch.no_grad():
        both, _ = model.step(state, clip[3], 3)
        second, _ = model.step(alone, clip[3][1:], 3)
    torch.testing.assert_close(second, both[1:], rtol=1e-5, atol=1e-5)


def test_checkpoint_round_trip_and_mismatches(malmm: Malmm, tiny_llama_dir: Path, tmp_path: Path) -> None:
    model = malmm.model
    opened(model.add_temporal("mamba", layers=2), gate=0.3)
    with torch.no_grad():
        model.temporal.mixers[0].in_proj.weight.add_(0.01)
    clip = features(4)
    expected, _ = read(model, clip)
    path = tmp_path / "model.safetensors"
    save_trained(model, path, "tiny")

    loaded = Malmm.from_pretrained(tiny_llama_dir, checkpoint=path)  # picks the module up from the file
    assert loaded.model.config.temporal == model.config.temporal
    assert any(name.startswith("temporal.") for name in loaded.checkpoint_report.loaded)
    outputs, _ = read(loaded.model, clip)
    assert torch.equal(outputs[-1], expected[-1])

    plain = Malmm.from_pretrained(tiny_llama_dir)
    with pytest.raises(CheckpointError, match=r"temporal module.*the model has temporal module none"):
        load_checkpoint(plain.model, path)  # a module, into a model without one
    other = Malmm.from_pretrained(tiny_llama_dir)
    other.model.add_temporal("mamba", layers=1)
    with pytest.raises(CheckpointError, match="temporal module"):
        load_checkpoint(other.model, path)  # a module of another shape
    save_trained(plain.model, tmp_path / "plain.safetensors", "tiny")
    with pytest.raises(CheckpointError, match="temporal module"):
        load_checkpoint(other.model, tmp_path / "plain.safetensors")  # no module, into a model with one


def test_the_model_config_carries_the_module(malmm: Malmm, tmp_path: Path) -> None:
    """save_pretrained/from_pretrained keep the module (config.temporal and its weights)."""
    from models.modeling import MalmmForConditionalGeneration

    model = malmm.model
    opened(model.add_temporal("mamba", state_size=8), gate=0.25)
    model.save_pretrained(tmp_path / "saved")
    loaded = MalmmForConditionalGeneration.from_pretrained(tmp_path / "saved")
    assert loaded.config.temporal == model.config.temporal and loaded.temporal.gate.item() == 0.25
    theirs = loaded.temporal.state_dict()
    assert theirs.keys() == model.temporal.state_dict().keys()
    for name, ours in model.temporal.state_dict().items():
        assert torch.equal(ours, theirs[name]), name


def test_a_start_with_another_module_is_refused(malmm: Malmm) -> None:
    from malmm_cli.jobs.training.folder import TrainingError
    from malmm_cli.jobs.training.settings import TrainSettings
    from malmm_cli.jobs.training.trainer import add_temporal_module

    malmm.model.add_temporal("mamba", layers=2)
    settings = TrainSettings(task="classify", frames=4, memory_bank_length=2, epochs=1, lr=1e-3, temporal="mamba")
    with pytest.raises(TrainingError, match="starting checkpoint has temporal module mamba"):
        add_temporal_module(malmm.model, settings)
    module = malmm.model.temporal
    add_temporal_module(malmm.model, dataclasses.replace(settings, temporal_layers=2))
    assert malmm.model.temporal is module  # the same module: its weights go on training


def test_settings_are_checked() -> None:
    assert temporal_settings("none", 64) is None
    with pytest.raises(ValueError, match="one of none, mamba"):
        temporal_settings("lstm", 64)
    with pytest.raises(ValueError, match="unknown"):
        temporal_settings("mamba", 64, depth=3)


def test_train_command_trains_the_module_alone_and_readers_pick_it_up(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """`malmm train --temporal mamba`: only the module changes (the Q-Former's outputs are read
    once per clip and draw, then reused); `predict --checkpoint RUN` builds the module from the
    run and reads through it."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from typer.testing import CliRunner

    from malmm_cli.cli import app
    from malmm_cli.jobs.training import trainer as training  # the module whose query_outputs the trainer calls
    from tests.media import make_scene

    rows = []
    for i, colour in enumerate(["red", "blue"] * 3):
        make_scene(tmp_path / f"{colour}-{i}.mp4", colour, seed=i)
        rows.append(f'{{"video": "{colour}-{i}.mp4", "label": "{colour}"}}\n')
    (tmp_path / "labels.jsonl").write_text("".join(rows))
    (tmp_path / "labels.txt").write_text("red\nblue\n")
    small = ["--device", "cpu", "--frames", "4", "--memory-bank-length", "2"]
    run = tmp_path / "run"
    reads = []
    original = training.query_outputs

    def counted(*args):
        reads.append(args[2].shape[0])
        return original(*args)

    training.query_outputs = counted
    try:
        result = CliRunner().invoke(app, ["train", str(tmp_path / "labels.jsonl"), "--task", "classify", "--output",
                                          str(run), "--model", str(tiny_llama_dir), *small, "--epochs", "3",
                                          "--batch-size", "3", "--samplings", "2", "--warmup-steps", "1", "--lr",
                                          "1e-2", "--temporal", "mamba", "--temporal-layers", "2"],
                                    catch_exceptions=False)  # fmt: skip
    finally:
        training.query_outputs = original
    assert result.exit_code == 0, result.output
    assert "temporal mamba (2 layers) trained alone" in result.output
    assert sum(reads) == 6 * 2  # each clip's Q-Former outputs once per sampling, not once per epoch
    saved = load_file(str(run / "model.safetensors"))
    base = Malmm.from_pretrained(tiny_llama_dir).model.state_dict()
    for name, tensor in saved.items():
        if name.startswith("temporal."):
            continue
        assert torch.equal(tensor, base[name]), name  # everything else frozen
    assert saved["temporal.gate"].item() != 0.0  # the module was trained
    with safe_open(str(run / "model.safetensors"), framework="pt") as file:
        assert '"layers": 2' in file.metadata()["temporal"]

    result = CliRunner().invoke(app, ["predict", str(tmp_path / "red-0.mp4"), "--model", str(tiny_llama_dir), *small,
                                      "--checkpoint", str(run), "--labels", str(tmp_path / "labels.txt"),
                                      "--format", "jsonl", "-q"], catch_exceptions=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    reader = Malmm.from_pretrained(tiny_llama_dir, checkpoint=run)
    assert reader.model.temporal is not None and reader.model.temporal.gate.item() == saved["temporal.gate"].item()


@pytest.mark.parametrize("description", ["caption with segments", "questions"])
def test_the_reading_loop_carries_the_module_state_per_video(
    malmm: Malmm, tmp_path: Path, readouts: dict[tuple, torch.Tensor], description: str
) -> None:
    """Videos read in lockstep (leaving the batch at different steps: `MemoryState.select`) give
    the LLM what each read alone gives, through an open module; and the module changes it."""
    from tests import media
    from tests.test_reading import DESCRIPTIONS, read

    clips = [media.make_video(tmp_path / "two.mp4", seconds=2, fps=10, size=(64, 48)),
             media.make_video(tmp_path / "five.mp4", seconds=5, fps=10, size=(96, 64), seed=3)]  # fmt: skip
    seen = readouts  # what the LLM is given at each read-out (tests/test_reading.py)
    readers, task, bank = DESCRIPTIONS[description]
    read(malmm, clips, readers, task, bank)
    without = dict(seen)
    opened(malmm.model.add_temporal("mamba"), gate=0.8)
    seen.clear()
    read(malmm, clips, readers, task, bank)
    lockstep = dict(seen)
    assert lockstep.keys() == without.keys()
    assert not any(torch.allclose(lockstep[key], without[key], atol=1e-3) for key in lockstep)
    for path in clips:
        seen.clear()
        read(malmm, [path], readers, task, bank)
        assert seen
        for key, tokens in seen.items():
            torch.testing.assert_close(lockstep[key], tokens, atol=1e-5, rtol=0)
