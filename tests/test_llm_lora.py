"""`malmm train --lora-llm R`: LoRA adapters on the frozen LLM's attention (QLoRA on a 4-bit LLM),
trained, saved with the run and added back by every loader; the memory plan counts them.

The tiny model's LLM widths are multiples of 64, so bitsandbytes' packed 4-bit kernel of
AVX512-BF16 CPUs (AMD EPYC, recent Xeons) takes every layer, as does the plain one elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from malmm_cli.cli import app
from malmm_cli.jobs.loading import LoadOptions, plan
from malmm_cli.jobs.training.data import read_data
from malmm_cli.jobs.training.folder import TrainingError
from malmm_cli.jobs.training.job import SilentProgress
from malmm_cli.jobs.training.settings import TrainSettings
from malmm_cli.jobs.training.trainer import Trainer, add_llm_adapter
from models import CAPTION, CheckpointError, Malmm
from models.checkpoint import load_checkpoint, save_trained
from models.lora import (
    LLM_LORA_TARGETS,
    LoraError,
    add_llm_lora,
    add_lora,
    llm_lora_layers,
    llm_lora_settings,
    merged_lora_weights,
)
from models.memory_plan import OPTIMIZER_BYTES, SAFETY, TrainingShape, plan_training
from models.presets import TRAINED_WEIGHTS
from models.time_aware import TIME_TOKENS
from models.training import trainable_parameters
from tests.media import SCENE_COLOURS, make_scene
from tests.tiny_models import IMAGE_SIZE

COLOURS = list(SCENE_COLOURS)


def malmm_cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def captions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four captioned clips (the caption names the background's colour)."""
    folder = tmp_path_factory.mktemp("clips")
    rows = []
    for i in range(4):
        make_scene(folder / f"{i}.mp4", COLOURS[i % 3], seed=i)
        rows.append({"video": f"{i}.mp4", "caption": f"the {COLOURS[i % 3]} room ."})
    (folder / "captions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return folder / "captions.jsonl"


def settings(**changes: object) -> TrainSettings:
    recipe = dict(task="caption", frames=3, memory_bank_length=2, epochs=2, lr=5e-3, batch_size=2, warmup_steps=0,
                  samplings=1, llm_lora_rank=4)  # fmt: skip
    return TrainSettings(**{**recipe, **changes})


def scored(malmm: Malmm) -> tuple[torch.Tensor, list[str]]:
    """The LLM's next-token logits after 6 frames and the caption prompt, and its caption of them."""
    pixels = torch.randn(6, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    output, _ = malmm.read(pixels, malmm.new_memory(CAPTION.prompt(), 3))
    ids = malmm.tokenizer([CAPTION.prompt()], return_tensors="pt").input_ids
    with torch.inference_mode():
        embeds = torch.cat([malmm.model.language_inputs(output), malmm.model.get_input_embeddings()(ids)], dim=1)
        logits = malmm.model.language_model(inputs_embeds=embeds).logits[0, -1].float()
    return logits, malmm.generate(output, CAPTION.prompt(), CAPTION.generation)


def test_qlora_trains_the_adapters_and_reloads_through_the_checkpoint(
    tiny_llama_dir: Path, captions: Path, tmp_path: Path
) -> None:
    """On a 4-bit LLM: the loss moves, only the adapters and what MA-LMM trains change (the
    quantized base weights do not), and `--checkpoint RUN` gives the LLM back that adapter, so the
    reloaded model scores and captions exactly as the trained one in memory."""
    train, _ = read_data(captions, "caption", None, None, 0)
    malmm = Malmm.from_pretrained(tiny_llama_dir, quantize="4bit")
    run = tmp_path / "run"
    trainer = Trainer(malmm, train, [], settings(), run, base_model=str(tiny_llama_dir), cache=None, warn=print)
    layers = llm_lora_layers(malmm.model)
    assert len(layers) == 4 * 2  # q, k, v, o of both layers
    assert all(isinstance(layer.base_layer, bnb.nn.Linear4bit) for _, layer in layers)  # QLoRA: peft wraps bnb's
    trained = dict(trainer.trained)
    adapters = {name for name in trained if name.startswith("language_model.")}
    assert adapters and all(".lora_A." in n or ".lora_B." in n for n in adapters)
    assert all(trained[name].dtype == torch.float32 for name in adapters)
    assert {name for name in trained if name.startswith("qformer.")}  # the Q-Former is still trained whole
    before = {name: tensor.clone() for name, tensor in malmm.model.state_dict().items()}

    summary = trainer.run(SilentProgress())
    losses = [epoch["train_loss"] for epoch in summary["epochs"]]
    assert losses[1] != losses[0]
    after = malmm.model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed <= set(trained) and adapters & changed  # base_layer weights and quant states unchanged
    assert all(trained[n].abs().sum() > 0 for n in adapters if ".lora_B." in n)  # trained away from zero

    with safe_open(str(run / TRAINED_WEIGHTS), framework="pt") as file:
        metadata, names = file.metadata(), set(file.keys())
    assert json.loads(metadata["llm_lora"]) == {"rank": 4, "alpha": 8, "targets": list(LLM_LORA_TARGETS)}
    stored = {name for name in names if name.startswith("language_model.")}
    assert len(stored) == len(adapters) and all("lora_" in name and "base_layer" not in name for name in stored)

    malmm.model.eval()
    expected_logits, expected_caption = scored(malmm)
    reloaded = Malmm.from_pretrained(tiny_llama_dir, checkpoint=run, quantize="4bit")
    assert len(reloaded.checkpoint_report.loaded) == len(names)
    assert reloaded.model.config.llm_lora == malmm.model.config.llm_lora
    assert all(isinstance(layer.base_layer, bnb.nn.Linear4bit) for _, layer in llm_lora_layers(reloaded.model))
    logits, caption = scored(reloaded)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=1e-5)
    assert caption == expected_caption
    for _, layer in llm_lora_layers(reloaded.model):
        layer.enable_adapters(False)
    assert (scored(reloaded)[0] - expected_logits).abs().max() > 1e-3  # the adapter is what makes them equal

    result = malmm_cli("caption", captions.parent / "0.mp4", "--model", tiny_llama_dir, "--device", "cpu",
                       "--frames", "3", "--checkpoint", run, "--quantize", "4bit")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"Loaded {len(names)} tensors" in result.output


def test_an_ordinary_checkpoint_leaves_the_llm_alone(tiny_llama_dir: Path, tmp_path: Path) -> None:
    save_trained(Malmm.from_pretrained(tiny_llama_dir).model, tmp_path / TRAINED_WEIGHTS, "tiny")
    with safe_open(str(tmp_path / TRAINED_WEIGHTS), framework="pt") as file:
        assert json.loads(file.metadata()["llm_lora"]) is None
        names = file.keys()
    assert names and not [name for name in names if name.startswith("language_model.")]
    for quantize in ("none", "4bit"):
        malmm = Malmm.from_pretrained(tiny_llama_dir, checkpoint=tmp_path, quantize=quantize)
        assert not llm_lora_layers(malmm.model) and getattr(malmm.model.config, "llm_lora", None) is None


def test_a_checkpoint_and_a_model_with_other_adapters_are_refused(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Loading refuses a model whose LLM adapter is not the file's; a run that starts from a
    checkpoint with an adapter goes on training it, at its rank only."""
    model = Malmm.from_pretrained(tiny_llama_dir).model
    add_llm_lora(model, llm_lora_settings(4, model))
    save_trained(model, tmp_path / TRAINED_WEIGHTS, "tiny")
    with pytest.raises(CheckpointError, match=r"has LLM adapter rank 4 .*the model has LLM adapter none"):
        load_checkpoint(Malmm.from_pretrained(tiny_llama_dir).model, tmp_path)
    started = Malmm.from_pretrained(tiny_llama_dir, checkpoint=tmp_path).model
    add_llm_adapter(started, settings(llm_lora_rank=4))  # the checkpoint's: kept, trained on
    assert len(llm_lora_layers(started)) == 8
    with pytest.raises(TrainingError, match=r"has an LLM adapter of rank 4 .*asks for rank 8.*--lora-llm 4"):
        add_llm_adapter(started, settings(llm_lora_rank=8))
    with pytest.raises(TrainingError, match=r"has an LLM adapter of rank 4 .*give --lora-llm 4 to go on training"):
        add_llm_adapter(started, settings(llm_lora_rank=0))
    # reading with it: the inference plan counts the adapter's float32 weights, an ordinary one nothing
    read = LoadOptions(model=str(tiny_llama_dir), checkpoint=tmp_path, quantize="none")
    _, with_adapter = plan(model.config, read, "cpu", torch.float32)
    _, without = plan(model.config, dataclasses.replace(read, checkpoint=None), "cpu", torch.float32)
    adapter = sum(p.numel() for name, p in model.named_parameters() if ".lora_" in name)
    assert with_adapter.llm_adapter == adapter and without.llm_adapter == 0
    assert with_adapter.total > without.total and "LLM adapter" in with_adapter.describe()


def test_an_llm_without_llama_attention_is_refused(tiny_t5_dir: Path) -> None:
    model = Malmm.from_pretrained(tiny_t5_dir).model
    with pytest.raises(LoraError, match=r"q_proj, k_proj, v_proj, o_proj.*\(t5\) has none of them"):
        llm_lora_settings(4, model)
    with pytest.raises(TrainingError, match=r"has none of them"):
        add_llm_adapter(model, settings(llm_lora_rank=4))


def test_what_is_trained_beside_the_llm_adapter(tiny_llama_dir: Path) -> None:
    """The LLM's adapters are trained with the whole Q-Former, with its LoRA (whose merged weights
    never take the LLM's), and with a temporal module alone; they start alike under one seed."""
    model = Malmm.from_pretrained(tiny_llama_dir).model
    torch.manual_seed(3)
    add_llm_lora(model, llm_lora_settings(2, model))
    whole = dict(trainable_parameters(model))
    assert {n for n, _ in model.qformer.named_parameters(prefix="qformer")} <= set(whole)
    llm = {name for name in whole if name.startswith("language_model.")}
    assert llm == {name for name, _ in model.named_parameters() if ".lora_" in name}
    add_lora(model, 2)
    with_lora = dict(trainable_parameters(model))
    assert llm <= set(with_lora)
    merged, wrapped = merged_lora_weights(model)
    assert merged and all(name.startswith("qformer.") for name in [*merged, *wrapped])
    model.add_temporal("mamba")
    alone = {name for name, _ in trainable_parameters(model, temporal_only=True)}
    assert alone == llm | {name for name, _ in model.temporal.named_parameters(prefix="temporal")}

    again = Malmm.from_pretrained(tiny_llama_dir).model
    torch.manual_seed(3)
    add_llm_lora(again, llm_lora_settings(2, again))
    first = next(name for name in llm if ".lora_A." in name)
    assert torch.equal(dict(again.named_parameters())[first], dict(model.named_parameters())[first])


def test_resume_refuses_another_llm_adapter(tiny_llama_dir: Path, captions: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["--task", "caption", "--model", tiny_llama_dir, "--device", "cpu", "--frames", "3", "-b", "2",
            "--batch-size", "2", "--epochs", "1", "--output", run, "-q"]  # fmt: skip
    first = malmm_cli("train", captions, *args, "--lora-llm", "4")
    assert first.exit_code == 0, first.output
    assert json.loads((run / "training.json").read_text())["settings"]["llm_lora_rank"] == 4
    for other in (["--lora-llm", "8"], []):
        changed = malmm_cli("train", captions, *args, *other, "--resume", "--epochs", "2")
        assert changed.exit_code == 2 and f"llm_lora_rank 4 -> {other[1] if other else 0}" in changed.output


def test_the_memory_plan_counts_the_adapter_and_time_tokens(tiny_llama_dir: Path) -> None:
    model = Malmm.from_pretrained(tiny_llama_dir).model
    config = model.config
    plain = plan_training(config, TrainingShape(1), dtype=torch.float32)
    adapted = plan_training(config, TrainingShape(1, llm_lora_rank=4), dtype=torch.float32)
    add_llm_lora(model, llm_lora_settings(4, model))
    parameters = sum(p.numel() for name, p in model.named_parameters() if name.startswith("language_model.") and
                     ".lora_" in name)  # fmt: skip
    assert adapted.llm_adapter == parameters
    float32 = torch.finfo(torch.float32).bits // 8
    assert adapted.optimizer - plain.optimizer == parameters * (float32 + OPTIMIZER_BYTES["adamw"])  # grads, moments
    # the total holds the adapter's float32 weights besides: nothing else differs
    assert adapted.activations == plain.activations
    held = parameters * (float32 + float32 + OPTIMIZER_BYTES["adamw"])
    assert adapted.total - plain.total == pytest.approx(held * SAFETY, abs=1)  # (each total rounded down)
    assert adapted.total > plain.total and "LLM adapter" in adapted.describe() and "LLM adapter" not in plain.describe()
    timed = plan_training(config, TrainingShape(1, time_aware=True), dtype=torch.float32)
    longer = plan_training(config, TrainingShape(1, instruction_tokens=32 + TIME_TOKENS), dtype=torch.float32)
    assert timed.activations == longer.activations > plain.activations


def test_the_adapters_are_float32_on_a_half_precision_llm(tiny_llama_dir: Path) -> None:
    """As QLoRA trains them: a bfloat16 LLM's adapters are float32 (peft would give them the
    LLM's dtype), the LLM's output keeps its dtype, and the loss's gradients reach them."""
    malmm = Malmm.from_pretrained(tiny_llama_dir, dtype=torch.bfloat16)
    model = malmm.model
    add_llm_lora(model, llm_lora_settings(4, model))
    adapters = {name: p for name, p in trainable_parameters(model) if name.startswith("language_model.")}
    assert adapters and {p.dtype for p in adapters.values()} == {torch.float32}
    with torch.no_grad():
        for name, parameter in adapters.items():
            if ".lora_B." in name:
                parameter.normal_(std=0.1)
    embeds = model.get_input_embeddings()(malmm.tokenizer(["the red room ."], return_tensors="pt").input_ids)
    logits = model.language_model(inputs_embeds=embeds).logits
    assert logits.dtype == torch.bfloat16
    logits.float().logsumexp(-1).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters.values())
