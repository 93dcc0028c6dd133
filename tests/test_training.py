"""`malmm train`: the gradients MA-LMM trains with, the data formats, learning on a synthetic
task end to end, resume, and refusing checkpoints that do not fit."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import InstructBlipConfig
from typer.testing import CliRunner

from malmm_cli.cli import app
from malmm_cli.jobs.dataset import DatasetError, read_examples
from malmm_cli.jobs.model import RunOptions
from malmm_cli.jobs.reporting import Silent
from malmm_cli.jobs.training.data import prompt_for, read_data, target_for
from malmm_cli.jobs.training.folder import TrainingError, check_output
from malmm_cli.jobs.training.job import TrainingStopped, TrainRequest, run_training
from malmm_cli.jobs.training.settings import TrainSettings
from malmm_cli.jobs.training.trainer import Trainer, training_shape
from malmm_cli.media.augment import ClipAugment, draw_crop
from malmm_cli.reading.feature_cache import FeatureCache
from malmm_cli.reading.stream import Sampling, VideoStream
from models import Malmm
from models.checkpoint import save_trained
from models.lora import add_lora
from models.memory_plan import TrainingShape, plan_training
from models.training import answer_loss, parameter_groups, read_clip, trainable_parameters, warmup_cosine
from tests.media import SCENE_COLOURS, make_scene, make_text_file
from tests.memory_trace import LiveTensorBytes
from tests.tiny_models import build_model_folder, tiny_config

COLOURS = list(SCENE_COLOURS)
# Few frames and a bank shorter than the clip, so memory merging is part of what is trained.
SMALL = ["--device", "cpu", "--frames", "4", "--memory-bank-length", "2"]
TRAIN = [*SMALL, "--batch-size", "4", "--warmup-steps", "5", "--lr", "2e-3"]


@pytest.fixture(scope="module")
def steerable_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose random LLM a soft prompt can steer (tiny_config's docstring says why)."""
    return build_model_folder(tmp_path_factory.mktemp("models") / "steerable", tiny_config(llm_initializer_range=0.3))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 training clips (the background colour is the label, shapes move across it) and 12
    held-out clips of other seeds, so other shapes, sizes and motion."""
    folder = tmp_path_factory.mktemp("scenes")
    (folder / "clips").mkdir()
    (folder / "held").mkdir()
    labels, captions = [], []
    for i in range(30):
        colour = COLOURS[i % 3]
        make_scene(folder / "clips" / f"{i}.mp4", colour, seed=i)
        labels.append({"video": f"clips/{i}.mp4", "label": colour})
        captions.append({"video": f"clips/{i}.mp4", "caption": f"The {colour.capitalize()} room."})
    for i in range(12):
        make_scene(folder / "held" / f"{COLOURS[i % 3]}-{i}.mp4", COLOURS[i % 3], seed=1000 + i)
    (folder / "labels.jsonl").write_text("".join(json.dumps(row) + "\n" for row in labels))
    (folder / "captions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in captions))
    (folder / "labels.txt").write_text("\n".join(COLOURS) + "\n")
    return folder


def malmm_cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def held_out_accuracy(model: Path, scenes: Path, *checkpoint: object) -> float:
    result = malmm_cli("predict", scenes / "held", "--model", model, *SMALL, *checkpoint,
                       "--labels", scenes / "labels.txt", "--top-k", "1", "--format", "jsonl", "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 12
    return sum(Path(r["file"]).name.split("-")[0] == r["labels"][0]["label"] for r in rows) / len(rows)


# --- what is trained, and how ---------------------------------------------------------------------


def reference_last_step(model, state, frame: torch.Tensor) -> torch.Tensor:
    """MA-LMM's last training step written out as blip2.py and Qformer.py compute it: keys and
    values of every attention layer projected from [its detached bank ; the current input] by the
    trained weights. frame: [B, N, C] after the vision LayerNorm and the frame position."""
    qformer = model.qformer
    visual = state.visual.in_time_order()[0].flatten(1, 2)  # [B, S*N, C]: the bank's entries
    queries = model.query_tokens.expand(frame.shape[0], -1, -1)
    hidden = qformer.embeddings(input_ids=state.instruction_ids, query_embeds=queries)
    padding = (1.0 - state.instruction_mask.float()) * torch.finfo(torch.float32).min
    mask = torch.cat([torch.zeros(hidden.shape[0], queries.shape[1]), padding], dim=1)  # [B, NQ+Lt]

    def attention(module, states, keys_from, key_mask=None):
        heads = module.attention
        split = lambda x: x.view(x.shape[0], x.shape[1], heads.num_attention_heads, -1).transpose(1, 2)  # noqa: E731
        query, key, value = split(heads.query(states)), split(heads.key(keys_from)), split(heads.value(keys_from))
        scores = query @ key.transpose(-1, -2) / math.sqrt(heads.attention_head_size)
        if key_mask is not None:
            scores = scores + key_mask[:, None, None, :]
        context = (scores.softmax(-1) @ value).transpose(1, 2).flatten(2)
        return module.output(context, states)

    for number, layer in enumerate(qformer.encoder.layer):
        bank = state.queries[number].in_time_order()[0].flatten(1, 2)  # [B, S*(NQ+Lt), D]
        steps = state.queries[number].used + 1
        attended = attention(layer.attention, hidden, torch.cat([bank, hidden], 1), mask.repeat(1, steps))
        query_part, text_part = attended[:, : queries.shape[1]], attended[:, queries.shape[1] :]
        if layer.has_cross_attention:
            query_part = attention(layer.crossattention, query_part, torch.cat([visual, frame], 1))
        hidden = torch.cat([layer.output_query(layer.intermediate_query(query_part), query_part),
                            layer.output(layer.intermediate(text_part), text_part)], dim=1)  # fmt: skip
    return hidden[:, : queries.shape[1]]


def test_gradients_are_malmms_training_gradients(tiny_llama_dir: Path) -> None:
    """Earlier steps without a graph, then the last one through the memory: the gradients of
    MA-LMM's training step (banks detached, their keys and values projected again by the trained
    weights), and the output inference reads."""
    malmm = Malmm.from_pretrained(tiny_llama_dir)
    model = malmm.model
    trained = trainable_parameters(model)
    assert {name.split(".")[0] for name, _ in trained} == {"query_tokens", "qformer", "language_projection",
                                                         "frame_position_embedding", "vision_model"}  # fmt: skip
    assert all(name.startswith("vision_model.post_layernorm") for name, _ in trained if name.startswith("vision"))
    frames = 6  # more than the bank holds: the banks have merged entries by the last step
    features = torch.randn(2, frames, 17, 48, generator=torch.Generator().manual_seed(0))
    prompts, targets = ["what does the video describe?", "what is it?"], ["a man is cooking", "two dogs"]
    norm = model.vision_model.post_layernorm

    def gradients(output: torch.Tensor) -> dict[str, torch.Tensor]:
        model.zero_grad()
        answer_loss(model, malmm.tokenizer, output, prompts, targets).backward()
        return {name: p.grad.clone() for name, p in trained}

    state = malmm.new_memory(prompts, 3, total_frames=frames)
    ours = gradients(read_clip(model, state, features))
    assert state.padded and len(state.visual) == 3  # padding masked; the bank was full (and merged)
    state = malmm.new_memory(prompts, 3, total_frames=frames)
    with torch.no_grad():
        for t in range(frames - 1):
            model.step(state, norm(features[:, t]), t)
    frame = norm(features[:, -1]) + model.frame_position_embedding.weight[frames - 1]
    reference = gradients(reference_last_step(model, state, frame))
    for name, gradient in reference.items():
        torch.testing.assert_close(ours[name], gradient, rtol=1e-4, atol=1e-6, msg=name)
    key = "qformer.encoder.layer.0.crossattention.attention.key.weight"
    assert ours[key].abs().sum() > 0 and all(g.abs().sum() > 0 for n, g in ours.items() if "value" in n)

    with torch.no_grad():  # training reads what inference reads
        inference_state = malmm.new_memory(prompts, 3, total_frames=frames)
        for t in range(frames):
            inference, _ = malmm.step(inference_state, norm(features[:, t]), t)
    state = malmm.new_memory(prompts, 3, total_frames=frames)
    torch.testing.assert_close(read_clip(model, state, features), inference)


@pytest.mark.parametrize("llm", ["llama", "t5"])
def test_loss_counts_target_tokens_only(llm: str, tiny_malmm: Malmm, tiny_malmm_t5: Malmm) -> None:
    """A batch's loss is the token-weighted mean of its examples' losses: prompts and padding
    (which differ in length here) carry none."""
    malmm = tiny_malmm if llm == "llama" else tiny_malmm_t5
    output = torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(1))
    prompts, targets = ["what does the video describe?", "Question: what is the man doing? Short answer:"], [
        "a man is cooking food in the kitchen", "dancing"]  # fmt: skip
    with torch.no_grad():
        batch = answer_loss(malmm.model, malmm.tokenizer, output, prompts, targets)
        alone = [answer_loss(malmm.model, malmm.tokenizer, output[i : i + 1], prompts[i : i + 1], targets[i : i + 1])
                 for i in range(2)]  # fmt: skip
    tokens = [len(malmm.tokenizer(t, add_special_tokens=False).input_ids) + 1 for t in targets]  # + </s>
    expected = sum(loss * n for loss, n in zip(alone, tokens, strict=True)) / sum(tokens)
    assert batch.item() == pytest.approx(expected.item(), rel=1e-5)


def test_qformer_attention_drops_out_in_training_only(tiny_malmm: Malmm) -> None:
    """MA-LMM trains the Q-Former with BERT's attention dropout (0.1); reading never drops."""
    import copy

    from models.qformer import attend, project

    attention = copy.deepcopy(tiny_malmm.model.qformer.encoder.layer[0].attention)  # the shared model stays as is
    assert attention.attention.attention_dropout == pytest.approx(0.1)
    hidden = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        keys_values = project(attention, hidden)
        reading = attend(attention, hidden, keys_values)
        torch.manual_seed(0)
        training = attend(attention.train(), hidden, keys_values)
        attention.attention.attention_dropout = 0.0  # the output block's own dropout stays, same seed
        torch.manual_seed(0)
        without = attend(attention, hidden, keys_values)
        torch.testing.assert_close(attend(attention.eval(), hidden, keys_values), reading, atol=0, rtol=0)
    assert not torch.allclose(training, without, atol=1e-4)  # the attention weights were dropped out


def test_weight_decay_groups_and_schedule(tiny_malmm: Malmm) -> None:
    named = [(n, p) for n, p in tiny_malmm.model.named_parameters() if n.startswith("qformer.encoder.layer.0.")]
    decay, plain = parameter_groups(named)
    assert plain["weight_decay"] == 0 and decay["weight_decay"] == 0.05
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in plain["params"])
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    schedule = warmup_cosine(optimizer, total_steps=110, warmup_steps=10)
    rates = []
    for _ in range(110):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(1e-8) and rates[10] == pytest.approx(1e-4)
    assert rates[5] == pytest.approx((1e-8 + 1e-4) / 2, rel=1e-3)
    assert rates[60] == pytest.approx(1e-4 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert rates[-1] < 1e-6


# --- data -------------------------------------------------------------------------------------------


def test_data_files(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"video": "v.mp4", "start": 2, "end": 5.5, "caption": "A Dog."}\n\n'
                                      '{"video": "w.mp4", "caption": "two cats"}\n')  # fmt: skip
    first, _ = read_examples(tmp_path / "a.jsonl", "caption")
    assert (first.video, first.start, first.end, first.caption) == (tmp_path / "v.mp4", 2.0, 5.5, "A Dog.")
    assert target_for("caption", first) == "a dog"
    (tmp_path / "b.csv").write_text("video,question,answer\nclips/x.mp4,what is he doing?,cooking\n")
    (example,) = read_examples(tmp_path / "b.csv", "ask")
    assert prompt_for("ask", example) == "Question: what is he doing? Short answer:"
    assert example.video == tmp_path / "clips" / "x.mp4" and example.answer == "cooking"
    with pytest.raises(DatasetError, match="line 2: no question"):
        read_examples(_write(tmp_path / "c.csv", "video,answer\nx.mp4,yes\n"), "ask")
    with pytest.raises(DatasetError, match=r"line 1: end \(2\) must be after start \(5\)"):
        read_examples(
            _write(tmp_path / "d.jsonl", '{"video": "v.mp4", "start": 5, "end": 2, "label": "x"}\n'), "classify"
        )
    with pytest.raises(DatasetError, match="line 1: not JSON"):
        read_examples(_write(tmp_path / "e.jsonl", "{video\n"), "classify")
    (excel,) = read_examples(_write(tmp_path / "f.csv", "\ufeffvideo,label\nx.mp4,red\n"), "classify")  # a BOM
    assert excel.video == tmp_path / "x.mp4" and excel.label == "red"
    with pytest.raises(DatasetError, match=r"^g\.csv line 2: no video \(its fields: path, label\)$"):
        read_examples(_write(tmp_path / "g.csv", "path,label\nx.mp4,red\n"), "classify")
    with pytest.raises(DatasetError, match=r"^h\.csv line 2: more fields than the header names \(extra left over\)"):
        read_examples(_write(tmp_path / "h.csv", "video,label\nx.mp4,red,extra\n"), "classify")


def test_malmm_annotation_files(tmp_path: Path) -> None:
    """MA-LMM's own annotation JSON (shapes of YouCook2, MSR-VTT QA, Breakfast and LVU)."""
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "GLd3aX16zBg.mp4").write_bytes(b"")
    youcook = {"GLd3aX16zBg_0090_0102": {"video": "GLd3aX16zBg", "start_time": 90, "end_time": 102,
                                         "caption": "spread margarine on two slices of white bread"}}  # fmt: skip
    (example,) = read_examples(_write(tmp_path / "yc.json", json.dumps(youcook)), "caption", tmp_path / "videos")
    assert (example.video.name, example.start, example.end) == ("GLd3aX16zBg.mp4", 90.0, 102.0)
    qa = {"0": {"answer": "couch", "question": "what are three people sitting on?", "question_id": "0",
                "video": "video6513"}}  # fmt: skip
    (example,) = read_examples(_write(tmp_path / "qa.json", json.dumps(qa)), "ask", tmp_path / "videos")
    assert example.video == tmp_path / "videos" / "video6513" and example.answer == "couch"  # missing: reported later
    breakfast = {"P03-cam01-P03_cereals": {"duration": 56, "class_name": "cereal", "class_label": 0}}
    (example,) = read_examples(_write(tmp_path / "bf.json", json.dumps(breakfast)), "classify")
    assert (example.video.name, example.label) == ("P03-cam01-P03_cereals", "cereal")
    lvu = {"0xWMqsZOYWg": {"subset": "val", "director": "steven", "director_answer": "(a)"}}
    with pytest.raises(DatasetError, match="no class_name or target; name the label field"):
        read_examples(_write(tmp_path / "lvu.json", json.dumps(lvu)), "classify")
    (example,) = read_examples(tmp_path / "lvu.json", "classify", label_field="director")
    assert example.label == "steven"
    coin = {"-0og5HDGGMc": {"video": "-0og5HDGGMc", "target": "make french fries", "duration": 210.5}}
    (example,) = read_examples(_write(tmp_path / "coin.json", json.dumps(coin)), None)  # the task from the fields
    assert (example.label, example.duration) == ("make french fries", 210.5)
    (example,) = read_examples(tmp_path / "qa.json", None, tmp_path / "videos")
    assert example.answer == "couch" and example.question == "what are three people sitting on?"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- learning, end to end ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["whole", "augment", "lora"])
def test_learns_labels_from_colour(
    how: str, steerable_dir: Path, scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scene's colour is the label; the untrained model is near chance on held-out clips,
    the trained one (through `predict --checkpoint RUN`) gets at least 90%. With --augment (the
    colour survives crops and flips) too, and then only validation clips are cached; and through
    LoRA adapters, whose merged weights `predict` loads without them."""
    augment = how == "augment"
    assert held_out_accuracy(steerable_dir, scenes) <= 0.5
    cache = tmp_path / "cache"
    monkeypatch.setenv("MALMM_CACHE_DIR", str(cache))
    run = tmp_path / "run"
    extra = {"whole": [], "augment": ["--augment"], "lora": ["--lora", "16", "--lr", "5e-3"]}[how]
    result = malmm_cli("train", scenes / "labels.jsonl", "--task", "classify", "--output", run, "--model",
                       steerable_dir, *TRAIN, "--epochs", "10", "--val-split", "0.2", *extra)  # fmt: skip
    assert result.exit_code == 0, result.output
    info = json.loads((run / "training.json").read_text())
    assert len(info["epochs"]) == 10 and info["labels"] == sorted(COLOURS)
    assert info["epochs"][-1]["val_accuracy"] >= 0.8
    assert held_out_accuracy(steerable_dir, scenes, "--checkpoint", run) >= 0.9
    cached = len(FeatureCache(cache).entries())  # the held-out clips, the validation clips, and without
    assert cached == 12 + 6 + (0 if augment else 24 * 4)  # --augment each training clip's 4 samplings


def test_lora_trains_adapters_and_saves_merged_weights(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """With LoRA the Q-Former's own weights are frozen and its adapters trained; the checkpoint
    holds merged weights under the model's names, which give the adapted model's output."""
    malmm = Malmm.from_pretrained(tiny_llama_dir)
    add_lora(malmm.model, 4)
    trained = dict(trainable_parameters(malmm.model))
    qformer = [name for name in trained if name.startswith("qformer.")]
    assert qformer and all(".lora_A." in name or ".lora_B." in name for name in qformer)
    assert {"query_tokens", "language_projection.weight", "frame_position_embedding.weight"} <= set(trained)
    plan = plan_training(malmm.model.config, TrainingShape(1, lora_rank=4), dtype=torch.float32)
    assert plan.optimizer == sum(p.numel() for p in trained.values()) * (4 + 8)  # the plan counts what LoRA trains
    with torch.no_grad():
        for name in qformer:
            trained[name].normal_(std=0.05)  # as if trained: the adapters change the output
    features = torch.randn(2, 5, 17, 48, generator=torch.Generator().manual_seed(0))
    prompts = ["what does the video describe?", "what is it?"]

    def output(model) -> torch.Tensor:
        with torch.no_grad():
            return read_clip(model, model.new_memory(*_instructions(malmm, prompts), 3, total_frames=5), features)

    save_trained(malmm.model, tmp_path / "model.safetensors", "tiny")
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert not any("lora" in name or "base_layer" in name for name in saved)
    plain = Malmm.from_pretrained(tiny_llama_dir)
    assert set(saved) == set(dict(trainable_parameters(plain.model)))
    before = output(plain.model)
    merged = Malmm.from_pretrained(tiny_llama_dir, checkpoint=tmp_path / "model.safetensors")
    torch.testing.assert_close(output(merged.model), output(malmm.model))
    assert not torch.allclose(before, output(merged.model))


def _instructions(malmm: Malmm, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = malmm.qformer_tokenizer(prompts, padding=True, return_tensors="pt")
    return tokens.input_ids, tokens.attention_mask


def test_augment_crops_and_flips_every_frame_of_a_clip_alike(tiny_malmm: Malmm, tmp_path: Path) -> None:
    """MA-LMM's crop: 50-100% of the area, aspect 3/4-4/3, anywhere in the frame, mirrored half
    the time; one box per clip, the same for a given seed, applied before the ViT."""
    rng = random.Random(0)
    crops = [draw_crop(240, 320, rng) for _ in range(400)]
    for c in crops:
        assert 0.5 - 0.02 <= c.height * c.width / (240 * 320) <= 1.0
        assert 3 / 4 - 0.02 <= c.width / c.height <= 4 / 3 + 0.02
        assert 0 <= c.top <= 240 - c.height and 0 <= c.left <= 320 - c.width
    assert 150 < sum(c.flip for c in crops) < 250
    assert len({(c.top, c.left) for c in crops}) > 300
    narrow = draw_crop(20, 1000, random.Random(1))  # no random box fits: the widest allowed, centred
    assert (narrow.height, narrow.width, narrow.left) == (20, 27, (1000 - 27) // 2)

    columns = np.broadcast_to((np.arange(320) % 256).astype(np.uint8)[None, :, None], (240, 320, 3))
    for seed in range(6):
        augment = ClipAugment(seed)
        first, second = augment(columns), augment(columns.copy())
        crop = draw_crop(240, 320, random.Random(seed))
        assert augment.crop == crop and np.array_equal(first, second)
        expected = np.arange(crop.left, crop.left + crop.width) % 256  # the column numbers, as uint8
        assert np.array_equal(first[0, :, 0], expected[::-1] if crop.flip else expected)
    with pytest.raises(ValueError, match="not cached"):
        VideoStream(None, "clip.mp4", Sampling(frames=2), cache=FeatureCache(Path("unused")), transform=augment)

    video = make_scene(tmp_path / "scene.mp4", "red", seed=0)

    def features(transform=None) -> torch.Tensor:
        with VideoStream(tiny_malmm, video, Sampling(frames=3), transform=transform) as stream:
            return torch.cat([feature for _, feature in stream])

    plain, mirrored = features(), features(lambda image: np.ascontiguousarray(image[:, ::-1]))
    assert plain.shape == mirrored.shape == features(ClipAugment(0)).shape and not torch.equal(plain, mirrored)


def test_eval_scores_rise_with_training(steerable_dir: Path, scenes: Path, tmp_path: Path) -> None:
    """`malmm eval` on held-out clips, before and after `malmm train`: the likelihood ranking
    goes from near chance to at least 90%, and the generated answers (top-1 from 5 beams) rise."""
    held = [{"video": str(p), "label": p.name.split("-")[0]} for p in sorted((scenes / "held").glob("*.mp4"))]
    data = tmp_path / "held.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in held))

    def evaluate(name: str, *checkpoint: object) -> dict:
        result = malmm_cli("eval", data, "--model", steerable_dir, *SMALL, *checkpoint, "--output", tmp_path / name,
                           "-q")  # fmt: skip
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["metrics"]

    before = evaluate("before")
    run = tmp_path / "run"
    trained = malmm_cli("train", scenes / "labels.jsonl", "--task", "classify", "--output", run, "--model",
                        steerable_dir, *TRAIN, "--epochs", "10", "-q")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    after = evaluate("after", "--checkpoint", run)
    assert before["ranked_top1"] <= 50 and after["ranked_top1"] >= 90
    assert before["top1"] <= 50 and after["top1"] >= 90 and after["top5"] >= after["top1"]


def test_learns_captions(steerable_dir: Path, scenes: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = malmm_cli("train", scenes / "captions.jsonl", "--task", "caption", "--output", run, "--model",
                       steerable_dir, *TRAIN, "--epochs", "15", "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    result = malmm_cli("caption", scenes / "held", "--model", steerable_dir, *SMALL, "--checkpoint", run,
                       "--num-beams", "1", "--max-new-tokens", "6", "--format", "jsonl", "-q")  # fmt: skip
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    right = [r["caption"] == f"the {Path(r['file']).name.split('-')[0]} room" for r in rows]
    assert len(rows) == 12 and sum(right) >= 11, [r["caption"] for r in rows]


# --- nothing lost ---------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["adamw", "adamw8bit"])
def test_resume_gives_the_same_weights(
    optimizer: str, tiny_llama_dir: Path, scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped by Ctrl-C in the middle of a gradient accumulation, or killed after a periodic
    save, a resumed run ends with bitwise the same weights as a run never stopped (with 8-bit
    AdamW too, whose moments are stored as bytes)."""
    args = ["--task", "classify", "--model", tiny_llama_dir, *TRAIN, "--batch-size", "3", "--grad-accum", "2",
            "--epochs", "3", "--save-every", "2", "--val-split", "0.2", "--optimizer", optimizer, "-q"]  # fmt: skip
    whole = tmp_path / "whole"
    assert malmm_cli("train", scenes / "labels.jsonl", "--output", whole, *args).exit_code == 0
    expected = load_file(str(whole / "model.safetensors"))
    moments = {v.dtype for k, v in load_file(str(whole / "resume" / "state.safetensors")).items() if "state1" in k}
    assert moments == ({torch.uint8, torch.float32} if optimizer == "adamw8bit" else set())  # small ones stay 32-bit
    original = Trainer._optimizer_step

    def stop(after: int, how: type[BaseException]):
        def step(self: Trainer, group: list, epoch: int):
            if self.position.step == after:
                if how is KeyboardInterrupt:  # in the middle: one micro-batch's gradients are accumulated
                    examples = [self.train_set[i] for i in group[0]]
                    self.batch_loss(examples, [self.features.get(e, 0, 0) for e in examples]).backward()
                raise how()
            return original(self, group, epoch)

        return step

    for after, how in ((5, KeyboardInterrupt), (7, Killed)):
        run = tmp_path / f"stopped-{after}"
        with monkeypatch.context() as patch:
            patch.setattr(Trainer, "_optimizer_step", stop(after, how))
            if how is Killed:
                with pytest.raises(Killed):
                    malmm_cli("train", scenes / "labels.jsonl", "--output", run, *args)
            else:
                assert malmm_cli("train", scenes / "labels.jsonl", "--output", run, *args).exit_code == 130
        saved = json.loads((run / "resume" / "state.json").read_text())["position"]["step"]
        assert saved == (after if how is KeyboardInterrupt else 6)  # a kill loses the steps since the last save
        result = malmm_cli("train", scenes / "labels.jsonl", "--output", run, *args, "--resume")
        assert result.exit_code == 0, result.output
        resumed = load_file(str(run / "model.safetensors"))
        assert all(torch.equal(resumed[k], expected[k]) for k in expected)
        assert figures(run) == figures(whole)


def test_every_optimizer_offered_is_planned() -> None:
    """models.presets.OPTIMIZERS is the one list of names (the command line's choices, torch-free):
    each has its state counted by the memory plan, and nothing else is accepted."""
    from models.memory_plan import OPTIMIZER_BYTES
    from models.presets import OPTIMIZERS

    assert OPTIMIZER_BYTES.keys() == OPTIMIZERS.keys()
    with pytest.raises(ValueError, match="optimizer must be one of adamw, adamw8bit, got 'sgd'"):
        TrainSettings(task="classify", frames=4, memory_bank_length=2, epochs=1, lr=1e-3, optimizer="sgd")


def test_memory_plan_bounds_a_training_step(tiny_llama_dir: Path) -> None:
    """The training plan's activations are within 30% above what a step really holds at its
    peak (measured tensor by tensor: memory states, the last step's graph, the LLM's, the
    backward pass), whatever the batch and the bank length."""
    malmm = Malmm.from_pretrained(tiny_llama_dir)
    model, config = malmm.model, malmm.model.config
    trained = trainable_parameters(model)
    model.qformer.train()
    for _, parameter in trained:
        parameter.grad = torch.zeros_like(parameter)  # held all along: the plan counts them apart
    exclude = [*model.parameters(), *model.buffers(), *(p.grad for _, p in trained)]
    prompt, target = "Question: what is the man doing? Short answer:", "he is cooking food in a pan"
    for batch, bank in ((2, 3), (4, 8)):
        with LiveTensorBytes(exclude) as measured:
            features = torch.randn(batch, bank + 3, 17, 48)
            start = measured.live
            state = malmm.new_memory([prompt] * batch, bank, total_frames=bank + 3)
            output = read_clip(model, state, features)
            answer_loss(model, malmm.tokenizer, output, [prompt] * batch, [target] * batch).backward()
        text = len(malmm.tokenizer(prompt + " " + target).input_ids)
        instruction = len(malmm.qformer_tokenizer(prompt).input_ids)
        shape = TrainingShape(batch, checkpointing=False, text_tokens=text, instruction_tokens=instruction)
        plan = plan_training(config, shape, dtype=torch.float32, memory_bank_length=bank, efficient_attention=False)
        held = measured.peak - start
        assert held <= plan.activations <= 1.3 * held, (batch, bank, held, plan.activations)


def test_train_refuses_settings_that_do_not_fit(
    tiny_llama_dir: Path, scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before loading, the plan is checked against free memory; what does not fit is refused in
    one line with the settings that would (a smaller batch, as many more accumulation steps)."""
    from malmm_cli.jobs import loading

    config = InstructBlipConfig.from_pretrained(tiny_llama_dir)
    examples = read_examples(scenes / "labels.jsonl", "classify")
    settings = TrainSettings(task="classify", frames=4, memory_bank_length=2, epochs=1, lr=1e-3)
    shape = training_shape(settings, examples)

    def total(batch: int) -> int:
        options = loading.LoadOptions(model="tiny", quantize="none", memory_bank_length=2,
                                      training=dataclasses.replace(shape, batch_size=batch))  # fmt: skip
        with monkeypatch.context() as patch:
            patch.setattr(loading, "free_memory", lambda device: 1 << 50)
            return loading.plan(config, options, "cpu", torch.float32)[1].total

    assert total(2) < total(4)
    monkeypatch.setattr(loading, "free_memory", lambda device: (total(2) + total(4)) // 2)
    result = malmm_cli("train", scenes / "labels.jsonl", "--task", "classify", "--output", tmp_path / "run",
                       "--model", tiny_llama_dir, *SMALL, "--quantize", "none", "--epochs", "1")  # fmt: skip
    assert result.exit_code == 2
    assert (
        "gradients and AdamW" in result.output and "settings that fit: --batch-size 2 --grad-accum 2" in result.output
    )
    assert not (tmp_path / "run").exists()


class Killed(BaseException):
    """Stops a run with no chance to save on the way out, as a kill does."""


def figures(run: Path) -> list[dict]:
    """Every epoch's figures of a run, but its time."""
    epochs = json.loads((run / "training.json").read_text())["epochs"]
    return [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in epochs]


def test_refuses_what_would_lose_or_mix_work(tiny_llama_dir: Path, scenes: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["--task", "classify", "--model", tiny_llama_dir, *TRAIN, "--epochs", "1", "-q"]
    assert malmm_cli("train", scenes / "labels.jsonl", "--output", run, *args).exit_code == 0
    again = malmm_cli("train", scenes / "labels.jsonl", "--output", run, *args)
    assert again.exit_code == 2 and "is not empty: pass --resume" in again.output
    changed = malmm_cli("train", scenes / "labels.jsonl", "--output", run, *args, "--lr", "1e-3", "--resume")
    assert changed.exit_code == 2 and "lr 0.002 -> 0.001" in changed.output
    fresh = malmm_cli("train", scenes / "labels.jsonl", "--output", tmp_path / "new", *args, "--resume")
    assert fresh.exit_code == 2 and "no saved run to resume" in fresh.output


def test_resume_can_raise_epochs(tiny_llama_dir: Path, scenes: Path, tmp_path: Path) -> None:
    """A finished run goes on with more epochs (its schedule stretched to the new length, as a
    run planned that long would have it); fewer epochs are refused, and --resume without
    --epochs goes on to the run's own length, not the task's default."""
    run = tmp_path / "run"
    args = ["--task", "classify", "--model", tiny_llama_dir, *TRAIN, "--batch-size", "8", "--warmup-steps", "1"]
    assert malmm_cli("train", scenes / "labels.jsonl", "--output", run, *args, "--epochs", "1", "-q").exit_code == 0
    more = malmm_cli("train", scenes / "labels.jsonl", "--output", run, *args, "--epochs", "3", "--resume")
    assert more.exit_code == 0, more.output
    steps = json.loads((run / "resume" / "state.json").read_text())["position"]["step"]
    assert "going on to 3 epochs (planned: 1): the learning-rate schedule is stretched" in more.output
    planned = warmup_cosine(torch.optim.SGD([torch.zeros(1)], lr=2e-3), steps, 1).lr_lambdas[0]
    assert f"lr {2e-3 * planned(steps // 3):.3g} at step {steps // 3} of {steps}" in more.output  # a 3-epoch run's
    info = json.loads((run / "training.json").read_text())
    assert len(info["epochs"]) == 3 and info["settings"]["epochs"] == 3
    fewer = malmm_cli("train", scenes / "labels.jsonl", "--output", run, *args, "--epochs", "2", "--resume")
    assert fewer.exit_code == 2 and "can raise --epochs, not lower it" in fewer.output
    same = malmm_cli("train", scenes / "labels.jsonl", "--output", run, *args, "--resume", "-q")
    assert same.exit_code == 0, same.output
    assert len(json.loads((run / "training.json").read_text())["epochs"]) == 3


def test_checkpoints_respect_the_umask(tiny_llama_dir: Path, scenes: Path, tmp_path: Path) -> None:
    """The weights and the resumable state get the mode any other file gets (safetensors alone
    would write them 0600, unreadable to a group that shares the run)."""
    previous = os.umask(0o027)
    try:
        args = ["--task", "classify", "--model", tiny_llama_dir, *TRAIN, "--epochs", "1", "-q"]
        assert malmm_cli("train", scenes / "labels.jsonl", "--output", tmp_path / "run", *args).exit_code == 0
    finally:
        os.umask(previous)
    for name in ("model.safetensors", "resume/state.safetensors", "training.json", "resume/state.json"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o640, name


def test_resume_refuses_other_data(tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the run reads is compared as its settings are: another split, or DATA edited in place
    (same path, rows reordered), would give the saved position and best epoch other meanings. The
    base model spelled otherwise (relative, a trailing slash) is the same model."""
    for i in range(4):
        make_scene(tmp_path / f"{i}.mp4", COLOURS[i % 2], seed=i)
    rows = [json.dumps({"video": f"{i}.mp4", "label": COLOURS[i % 2]}) + "\n" for i in range(4)]
    data = _write(tmp_path / "data.jsonl", "".join(rows))
    run = tmp_path / "run"
    args = ["--task", "classify", "--model", tiny_llama_dir, *TRAIN, "--epochs", "1", "-q"]
    assert malmm_cli("train", data, "--output", run, *args, "--val-split", "0.25").exit_code == 0
    monkeypatch.chdir(tiny_llama_dir.parent)
    same = malmm_cli("train", data, "--output", run, *args, "--val-split", "0.25", "--resume",
                     "--model", f"{tiny_llama_dir.name}/")  # fmt: skip
    assert same.exit_code == 0, same.output
    split = malmm_cli("train", data, "--output", run, *args, "--resume")
    assert split.exit_code == 2 and "was trained on other data (val_split 0.25 -> None)" in split.output
    data.write_text("".join(reversed(rows)))
    edited = malmm_cli("train", data, "--output", run, *args, "--val-split", "0.25", "--resume")
    assert edited.exit_code == 2 and "was trained on other data (data 'sha256:" in edited.output


def test_refuses_checkpoints_that_do_not_fit(
    tiny_llama_dir: Path, tiny_t5_dir: Path, scenes: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    args = ["--task", "classify", "--model", tiny_llama_dir, *TRAIN, "--epochs", "1", "-q"]
    assert malmm_cli("train", scenes / "labels.jsonl", "--output", run, *args).exit_code == 0
    other = malmm_cli("predict", scenes / "held" / "red-0.mp4", "--model", tiny_t5_dir, *SMALL, "--checkpoint", run)
    assert other.exit_code == 2
    (line,) = [line for line in other.output.splitlines() if line.startswith("error:")]
    assert "was trained on another base model" in line and "llm llama vs t5" in line
    weights = load_file(str(run / "model.safetensors"))
    del weights["query_tokens"]
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), framework="pt") as file:
        metadata = file.metadata()
    save_file(weights, str(tmp_path / "partial.safetensors"), metadata=metadata)
    partial = malmm_cli("predict", scenes / "held" / "red-0.mp4", "--model", tiny_llama_dir, *SMALL,
                        "--checkpoint", tmp_path / "partial.safetensors")  # fmt: skip
    assert partial.exit_code == 2 and "lacks 1 trained tensors (query_tokens): it is incomplete" in partial.output


def test_bad_examples_are_reported_once_and_skipped(tiny_llama_dir: Path, scenes: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (scenes / "labels.jsonl").read_text().splitlines()][:6]
    rows += [{"video": "missing.mp4", "label": "red"},
             {"video": str(make_text_file(tmp_path / "notes.mp4")), "label": "blue"}]  # fmt: skip
    data = scenes / "with-bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = malmm_cli("train", data, "--task", "classify", "--output", tmp_path / "run", "--model", tiny_llama_dir,
                       *TRAIN, "--epochs", "3")  # fmt: skip
    assert result.exit_code == 1, result.output  # as eval ends when some videos could not be read
    assert (tmp_path / "run" / "model.safetensors").is_file()  # saved first, trained on the rest
    (summary,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "2 examples could not be read and were left out: with-bad.jsonl line 7 (" in summary
    assert "missing.mp4), with-bad.jsonl line 8 (" in summary and "notes.mp4)" in summary
    assert result.output.count("missing.mp4") == 2 and result.output.count("notes.mp4") == 2  # once each above
    assert all(e["examples"] == 6 for e in json.loads((tmp_path / "run" / "training.json").read_text())["epochs"])


def test_an_unreadable_clip_leaves_out_itself_only(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Rows without an id are named by file and line: an unreadable clip on line 1 of the training
    file does not take line 1 of the validation file with it, nor the other way round, and each
    warning says which set the clip is left out of."""
    for i in range(4):
        make_scene(tmp_path / f"{i}.mp4", COLOURS[i % 2], seed=i)
    rows = lambda *videos: "".join(json.dumps({"video": v, "label": "red"}) + "\n" for v in videos)  # noqa: E731
    data = _write(tmp_path / "train.jsonl", rows("gone.mp4", "0.mp4", "1.mp4"))
    val = _write(tmp_path / "val.jsonl", rows("2.mp4", "gone-too.mp4", "3.mp4"))
    result = malmm_cli("train", data, "--val", val, "--task", "classify", "--output", tmp_path / "run",
                       "--model", tiny_llama_dir, *TRAIN, "--batch-size", "1", "--epochs", "2")  # fmt: skip
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if "no such file" in line]
    assert len(lines) == 2 and lines[0].startswith("warning: train.jsonl line 1 (") and "gone.mp4" in lines[0]
    assert lines[0].endswith("left out of training"), lines
    assert lines[1].startswith("warning: val.jsonl line 2 (") and lines[1].endswith("left out of validation"), lines
    epochs = json.loads((tmp_path / "run" / "training.json").read_text())["epochs"]
    assert [(e["examples"], e["val_examples"]) for e in epochs] == [(2, 2), (2, 2)]
    twice = _write(tmp_path / "twice.jsonl", '{"id": "a", "video": "0.mp4", "label": "red"}\n' * 2)
    with pytest.raises(DatasetError, match=r"twice.jsonl: two examples have the id 'a': give each its own"):
        read_data(twice, "classify", None, None, 0)


def test_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    """Said as it is: not "not empty: pass --resume", which a file cannot take."""
    (tmp_path / "afile").touch()
    for resume in (False, True):
        with pytest.raises(TrainingError, match="afile is a file: give --output a folder"):
            check_output(tmp_path / "afile", resume=resume)


# What the job checks before torch loads, in a fresh interpreter: each refusal's words, then whether
# torch was imported. Paths are relative to the folder it runs in.
CHECKS_WITHOUT_TORCH = """
import json, sys
from pathlib import Path
from malmm_cli.jobs.errors import SetupError, UsageError
from malmm_cli.jobs.model import RunOptions
from malmm_cli.jobs.training.job import TrainRequest, check_run

said = []
for fields, checkpoint in json.loads(sys.argv[1]):
    paths = {k: Path(v) for k, v in fields.items() if k in ("data", "output", "val")}
    try:
        plan = check_run(TrainRequest(**{**fields, **paths}), RunOptions(checkpoint=checkpoint and Path(checkpoint)))
        said.append(f"ok: {plan.settings.epochs} epochs, bank {plan.options.memory_bank_length}")
    except (SetupError, UsageError) as error:
        said.append(str(error))
print(json.dumps({"said": said, "torch": "torch" in sys.modules}))
"""


def test_the_job_checks_everything_before_torch_loads(tmp_path: Path) -> None:
    """The data, --val-split, the run folder (state to --resume, writable) and the checkpoint are
    checked by the job without importing torch: a mistake costs a fraction of a second."""
    make_text_file(tmp_path / "a.mp4")  # there (decoding is the run's business)
    _write(tmp_path / "data.jsonl", '{"video": "a.mp4", "label": "red"}\n{"video": "a.mp4", "label": "blue"}\n')
    _write(tmp_path / "gone.jsonl", '{"video": "gone.mp4", "label": "red"}\n')
    (tmp_path / "afile").touch()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").touch()
    task = {"data": "data.jsonl", "task": "classify"}
    cases = [
        ({**task, "output": "run"}, None),
        ({**task, "output": "run", "resume": True}, None),
        ({"data": "missing.jsonl", "task": "classify", "output": "run"}, None),
        ({"data": "gone.jsonl", "task": "classify", "output": "run"}, None),
        ({**task, "output": "run", "val_split": 0.9}, None),
        ({**task, "output": "busy"}, None),
        ({**task, "output": "afile/run"}, None),
        ({**task, "output": "run"}, "nothing.pth"),
        ({**task, "output": "run", "val": "data.jsonl", "val_split": 0.5}, None),
    ]
    done = subprocess.run([sys.executable, "-c", CHECKS_WITHOUT_TORCH, json.dumps(cases)], cwd=tmp_path,
                          capture_output=True, text=True, check=True)  # fmt: skip
    result = json.loads(done.stdout)
    assert result["said"] == [
        "ok: 20 epochs, bank 20",  # classify's MA-LMM recipe, the bank given to the model too
        "run holds no saved run to resume (no resume/state.json)",
        "missing.jsonl: no such file",
        "none of the 1 training videos exists (the first: gone.mp4): paths are relative to the data file's "
        "folder, or to --videos for MA-LMM annotations",
        "--val-split 0.9 leaves no training examples of 2",
        "busy is not empty: pass --resume to go on with its run, or choose a new folder",
        "cannot make the run folder afile/run: afile is a file",
        "nothing.pth: no such file or folder",
        "give --val or --val-split, not both",
    ]
    assert not result["torch"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "afile", "busy", "data.jsonl", "gone.jsonl"]


class RecordedProgress:
    """A run's progress as a Python caller sees it; Ctrl-C after step `stop_after`."""

    def __init__(self, steps: int, epochs: int, stop_after: int | None = None):
        self.planned, self.stop_after = (steps, epochs), stop_after
        self.started: int | None = None
        self.steps: list[int] = []
        self.epochs: list[int] = []

    def __enter__(self) -> RecordedProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def start(self, step: int) -> None:
        self.started = step

    def step(self, position, loss: float | None, lr: float, examples: int) -> None:
        self.steps.append(position.step)
        if position.step == self.stop_after:
            raise KeyboardInterrupt

    def epoch(self, record: dict) -> None:
        self.epochs.append(record["epoch"])


def test_the_job_trains_from_python(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """`run_training` without a terminal: progress is told of every step and epoch; Ctrl-C in the
    middle raises TrainingStopped (still a KeyboardInterrupt) once the state is saved, and the same
    request with `resume` goes on from that step to the run's own end."""
    for i in range(4):
        make_scene(tmp_path / f"{i}.mp4", COLOURS[i % 2], seed=i)
    rows = [json.dumps({"video": f"{i}.mp4", "label": COLOURS[i % 2]}) + "\n" for i in range(4)]
    data = _write(tmp_path / "clips.jsonl", "".join(rows))
    request = TrainRequest(data=data, task="classify", output=tmp_path / "run", frames=4, memory_bank_length=2,
                           epochs=2, batch_size=2, warmup_steps=1, lr=2e-3)  # fmt: skip
    options = RunOptions(model=str(tiny_llama_dir), device="cpu")
    shown: list[RecordedProgress] = []

    def progress(stop_after: int | None):
        return lambda steps, epochs: shown.append(RecordedProgress(steps, epochs, stop_after)) or shown[-1]

    with pytest.raises(TrainingStopped) as stopped:
        run_training(request, options, Silent(), progress(stop_after=3))
    assert isinstance(stopped.value, KeyboardInterrupt) and type(stopped.value.interrupt) is KeyboardInterrupt
    first = shown[-1]
    assert (first.planned, first.started, first.steps, first.epochs) == ((4, 2), 0, [1, 2, 3], [1])
    assert json.loads((tmp_path / "run" / "resume" / "state.json").read_text())["position"]["step"] == 3

    ran = run_training(dataclasses.replace(request, epochs=None, resume=True), options, Silent(), progress(None))
    second = shown[-1]
    assert (second.planned, second.started, second.steps, second.epochs) == ((4, 2), 3, [4], [2])
    assert not ran.failed and ran.output == tmp_path / "run" and [e["epoch"] for e in ran.summary["epochs"]] == [1, 2]
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_nothing_readable_fails(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """No video there: a usage error before the model loads. Videos there but none decodable: a
    failure after the first epoch, with no checkpoint written and no PyTorch warning leaked."""
    rows = lambda *videos: "".join(json.dumps({"video": v, "label": "red"}) + "\n" for v in videos)  # noqa: E731
    args = ["--task", "classify", "--model", tiny_llama_dir, *TRAIN, "--epochs", "2"]
    missing = malmm_cli("train", _write(tmp_path / "a.jsonl", rows("gone.mp4", "gone-too.mp4")),
                        "--output", tmp_path / "missing", *args)  # fmt: skip
    assert missing.exit_code == 2 and "none of the 2 training videos exists" in missing.output
    assert "Loading" not in missing.output and not (tmp_path / "missing").exists()
    make_text_file(tmp_path / "notes.mp4")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        broken = malmm_cli("train", _write(tmp_path / "b.jsonl", rows("gone.mp4", "notes.mp4")),
                           "--output", tmp_path / "broken", *args)  # fmt: skip
    assert broken.exit_code == 1 and "none of the 2 training clips could be read" in broken.output
    assert "Done" not in broken.output and not (tmp_path / "broken" / "model.safetensors").exists()
    assert not [w for w in caught if "lr_scheduler" in str(w.message)]


def test_trains_through_an_8bit_llm(steerable_dir: Path, scenes: Path, tmp_path: Path) -> None:
    """Gradients reach the soft prompt through bitsandbytes' 8-bit LLM layers (frozen)."""
    run = tmp_path / "run"
    result = malmm_cli("train", scenes / "labels.jsonl", "--task", "classify", "--output", run, "--model",
                       steerable_dir, *TRAIN, "--epochs", "3", "--quantize", "8bit", "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    losses = [epoch["train_loss"] for epoch in json.loads((run / "training.json").read_text())["epochs"]]
    assert losses[-1] < 0.8 * losses[0], losses
