"""Loading: Hugging Face folders by path, MA-LMM LAVIS checkpoints on top, unsafe pickles refused."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import InstructBlipForConditionalGeneration

from models import CheckpointError, Malmm, MalmmForConditionalGeneration
from models.checkpoint import load_checkpoint, load_lavis_checkpoint
from models.lora import add_llm_lora, llm_lora_settings

# transformers name -> LAVIS name, the inverse of models/checkpoint.py, written out independently.
TO_LAVIS = [
    (r"^qformer\.embeddings\.layernorm\.", "Qformer.bert.embeddings.LayerNorm."),
    (r"^qformer\.embeddings\.", "Qformer.bert.embeddings."),
    (
        r"^qformer\.encoder\.layer\.(\d+)\.(attention|crossattention)\.attention\.",
        r"Qformer.bert.encoder.layer.\1.\2.self.",
    ),
    (r"^qformer\.encoder\.", "Qformer.bert.encoder."),
    (r"^vision_model\.post_layernorm\.", "ln_vision."),
    (r"^language_projection\.", "llm_proj."),
    (r"^frame_position_embedding\.", "image_pe."),
    (r"^vision_model\.embeddings\.class_embedding$", "visual_encoder.cls_token"),
    (r"^vision_model\.embeddings\.position_embedding$", "visual_encoder.pos_embed"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual_encoder.patch_embed.proj."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"visual_encoder.blocks.\1.norm\2."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.weight$", r"visual_encoder.blocks.\1.attn.qkv.weight"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection\.", r"visual_encoder.blocks.\1.attn.proj."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"visual_encoder.blocks.\1.mlp."),
    (r"^query_tokens$", "query_tokens"),
]


def lavis_state_dict(model: MalmmForConditionalGeneration, with_vision: bool) -> dict[str, torch.Tensor]:
    """The model's trained parts (and optionally its EVA ViT) under LAVIS names, perturbed."""
    state = {}
    for name, value in model.state_dict().items():
        if name.startswith("language_model."):
            continue
        if name.startswith("vision_model.") and not with_vision and "post_layernorm" not in name:
            continue
        new = value.clone() + 0.01 * torch.randn_like(value.float()).to(value.dtype)
        qkv_bias = re.match(r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.bias$", name)
        if qkv_bias:  # EVA stores q and v biases apart; k has none
            q, _, v = new.chunk(3)
            state[f"visual_encoder.blocks.{qkv_bias.group(1)}.attn.q_bias"] = q
            state[f"visual_encoder.blocks.{qkv_bias.group(1)}.attn.v_bias"] = v
            continue
        for pattern, replacement in TO_LAVIS:
            if re.search(pattern, name):
                state[re.sub(pattern, replacement, name)] = new
                break
        else:
            raise AssertionError(f"no LAVIS name for {name}")
    state["Qformer.bert.embeddings.position_ids"] = torch.arange(64).unsqueeze(0)  # a buffer LAVIS saves
    return state


def expected_after_load(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    expected = {}
    for name, value in state.items():
        match = re.match(r"^visual_encoder\.blocks\.(\d+)\.attn\.q_bias$", name)
        if match:
            block = match.group(1)
            v = state[f"visual_encoder.blocks.{block}.attn.v_bias"]
            expected[f"vision_model.encoder.layers.{block}.self_attn.qkv.bias"] = torch.cat([value, 0 * value, v])
    return expected


def save_lavis(path: Path, state: dict[str, torch.Tensor]) -> Path:
    """A file shaped like MA-LMM's checkpoint_best.pth: weights under 'model', training state beside."""
    torch.save(
        {
            "model": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 0.05, "params": [0, 1]}]},
            "config": {"model": {"arch": "blip2_vicuna_instruct", "memory_bank_length": 10}},
            "scaler": {"scale": 65536.0},
            "epoch": 3,
        },
        path,
    )
    return path


def test_hf_folder_loads_by_path_with_zero_frame_table(tiny_llama_dir: Path, tiny_malmm: Malmm) -> None:
    reference = InstructBlipForConditionalGeneration.from_pretrained(tiny_llama_dir)
    ours = tiny_malmm.model.state_dict()
    for name, value in reference.state_dict().items():
        assert torch.equal(ours[name], value), name
    assert torch.count_nonzero(tiny_malmm.model.frame_position_embedding.weight) == 0
    assert tiny_malmm.checkpoint_report is None


@pytest.mark.parametrize("with_vision", [False, True])
def test_lavis_checkpoint_loads_on_top(tiny_llama_dir: Path, tmp_path: Path, with_vision: bool) -> None:
    base = MalmmForConditionalGeneration.from_pretrained(tiny_llama_dir)
    with torch.no_grad():
        base.frame_position_embedding.weight.normal_()
    state = lavis_state_dict(base, with_vision)
    path = save_lavis(tmp_path / "checkpoint_best.pth", state)

    malmm = Malmm.from_pretrained(tiny_llama_dir, checkpoint=path)
    report = malmm.checkpoint_report
    assert report is not None and report.clean, report.message()
    loaded = malmm.model.state_dict()
    torch.testing.assert_close(
        loaded["qformer.encoder.layer.0.crossattention.attention.key.weight"],
        state["Qformer.bert.encoder.layer.0.crossattention.self.key.weight"],
        atol=0,
        rtol=0,
    )
    torch.testing.assert_close(loaded["vision_model.post_layernorm.weight"], state["ln_vision.weight"], atol=0, rtol=0)
    torch.testing.assert_close(loaded["language_projection.bias"], state["llm_proj.bias"], atol=0, rtol=0)
    torch.testing.assert_close(loaded["frame_position_embedding.weight"], state["image_pe.weight"], atol=0, rtol=0)
    torch.testing.assert_close(loaded["query_tokens"], state["query_tokens"], atol=0, rtol=0)
    for name, value in expected_after_load(state).items():
        torch.testing.assert_close(loaded[name], value, atol=0, rtol=0)
    if with_vision:
        torch.testing.assert_close(
            loaded["vision_model.encoder.layers.1.self_attn.projection.weight"],
            state["visual_encoder.blocks.1.attn.proj.weight"],
            atol=0,
            rtol=0,
        )
    untouched = InstructBlipForConditionalGeneration.from_pretrained(tiny_llama_dir).state_dict()
    assert torch.equal(loaded["language_model.lm_head.weight"], untouched["language_model.lm_head.weight"])


def test_a_lavis_checkpoint_is_refused_by_a_model_with_an_llm_adapter_or_temporal_module(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """MA-LMM's files have neither: loaded into a model that has one, its untrained adapter or
    module would pass for the checkpoint's."""
    model = MalmmForConditionalGeneration.from_pretrained(tiny_llama_dir)
    path = save_lavis(tmp_path / "checkpoint_best.pth", lavis_state_dict(model, False))
    add_llm_lora(model, llm_lora_settings(4, model))
    with pytest.raises(CheckpointError, match=r"has LLM adapter none, the model has LLM adapter rank 4"):
        load_checkpoint(model, path)
    temporal = MalmmForConditionalGeneration.from_pretrained(tiny_llama_dir)
    temporal.add_temporal("mamba")
    with pytest.raises(CheckpointError, match=r"has temporal module none, the model has temporal module mamba"):
        load_checkpoint(temporal, path)
    plain = MalmmForConditionalGeneration.from_pretrained(tiny_llama_dir)
    assert load_checkpoint(plain, path).clean  # the file itself loads


def test_report_names_missing_and_unexpected_keys(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model = MalmmForConditionalGeneration.from_pretrained(tiny_llama_dir)
    state = {k: v for k, v in lavis_state_dict(model, False).items() if not k.startswith("llm_proj.")}
    state["some_other_head.weight"] = torch.zeros(3)
    report = load_lavis_checkpoint(model, save_lavis(tmp_path / "partial.pth", state))
    assert set(report.missing) == {"language_projection.weight", "language_projection.bias"}
    assert report.unexpected == ["some_other_head.weight"]
    message = report.message()
    assert "language_projection.weight" in message and "some_other_head.weight" in message
    assert message.startswith(f"Loaded {len(report.loaded)} tensors from partial.pth.")


def test_frame_table_takes_the_checkpoints_length(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model = MalmmForConditionalGeneration.from_pretrained(tiny_llama_dir)
    table = torch.randn(120, model.config.vision_config.hidden_size)
    load_lavis_checkpoint(model, save_lavis(tmp_path / "pe.pth", {"image_pe.weight": table}))
    assert model.config.max_num_frames == 120
    assert torch.equal(model.frame_position_embedding.weight, table)
    model.save_pretrained(tmp_path / "converted")  # a converted model round-trips through from_pretrained
    again = MalmmForConditionalGeneration.from_pretrained(tmp_path / "converted")
    assert torch.equal(again.frame_position_embedding.weight, table)


def test_shape_mismatch_is_a_clear_error(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model = MalmmForConditionalGeneration.from_pretrained(tiny_llama_dir)
    path = save_lavis(tmp_path / "other.pth", {"llm_proj.weight": torch.zeros(4096, 768)})
    with pytest.raises(CheckpointError, match=r"does not fit this base model.*language_projection\.weight"):
        load_lavis_checkpoint(model, path)


def test_safetensors_checkpoint_loads(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model = MalmmForConditionalGeneration.from_pretrained(tiny_llama_dir)
    state = lavis_state_dict(model, False)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "malmm.safetensors")
    report = load_lavis_checkpoint(model, tmp_path / "malmm.safetensors")
    assert report.clean, report.message()


class RunsCode:
    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_without_running_it(tiny_llama_dir: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = RunsCode()
    payload.marker = str(marker)
    path = tmp_path / "evil.pth"
    torch.save({"model": {"query_tokens": torch.zeros(1)}, "extra": payload}, path)
    model = MalmmForConditionalGeneration.from_pretrained(tiny_llama_dir)
    with pytest.raises(CheckpointError, match="will not unpickle"):
        load_lavis_checkpoint(model, path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "not found"), (b"not a checkpoint at all", "not a PyTorch checkpoint"), ([1, 2, 3], "no state dict"),
     (b"junk\n", r"not a PyTorch checkpoint or is damaged$"), (b"", r"not a PyTorch checkpoint or is damaged$")],
)  # fmt: skip
def test_unreadable_checkpoints_are_clear_errors(tiny_llama_dir: Path, tmp_path: Path, content, message) -> None:
    path = tmp_path / "file.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    model = MalmmForConditionalGeneration.from_pretrained(tiny_llama_dir)
    with pytest.raises(CheckpointError, match=message):
        load_lavis_checkpoint(model, path)


def test_checkpoint_without_matching_tensors_is_refused(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model = MalmmForConditionalGeneration.from_pretrained(tiny_llama_dir)
    path = save_lavis(tmp_path / "unrelated.pth", {"resnet.fc.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match="no tensor that matches"):
        load_lavis_checkpoint(model, path)
