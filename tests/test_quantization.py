"""4-/8-bit loading on CPU: the LLM's linear layers are really replaced, everything else untouched."""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from torch import nn

from models import CAPTION, GenerationSettings, Malmm
from models.architectures import architecture
from models.memory_plan import GIB, choose_quantization, plan_memory
from models.quantization import quantization_config
from tests.tiny_models import IMAGE_SIZE

QUANTIZED_TYPES = {"8bit": (bnb.nn.Linear8bitLt, torch.int8), "4bit": (bnb.nn.Linear4bit, torch.uint8)}
FULL_PRECISION = ("vision_model", "qformer", "language_projection", "language_model.lm_head")


def next_token_logits(malmm: Malmm) -> tuple[torch.Tensor, torch.Tensor]:
    """Q-Former output after 6 frames and the LLM's next-token logits after the caption prompt."""
    pixels = torch.randn(6, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    output, _ = malmm.read(pixels, malmm.new_memory(CAPTION.prompt(), 3))
    ids = malmm.tokenizer([CAPTION.prompt()], return_tensors="pt").input_ids
    with torch.inference_mode():
        embeds = torch.cat([malmm.model.language_inputs(output), malmm.model.get_input_embeddings()(ids)], dim=1)
        return output, malmm.model.language_model(inputs_embeds=embeds).logits[0, -1].float()


@pytest.fixture(scope="module")
def reference(tiny_llama_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return next_token_logits(Malmm.from_pretrained(tiny_llama_dir))


@pytest.mark.parametrize(("mode", "min_cosine"), [("8bit", 0.9995), ("4bit", 0.99)])
def test_llm_linears_are_quantized_and_outputs_stay_close(tiny_llama_dir, reference, mode, min_cosine) -> None:
    malmm = Malmm.from_pretrained(tiny_llama_dir, quantize=mode)
    layer_type, weight_dtype = QUANTIZED_TYPES[mode]
    llm_linears = [
        (name, module)
        for name, module in malmm.model.named_modules()
        if name.startswith("language_model.") and "lm_head" not in name and isinstance(module, nn.Linear)
    ]
    assert llm_linears and all(isinstance(m, layer_type) for _, m in llm_linears)
    assert all(m.weight.dtype == weight_dtype for _, m in llm_linears)
    for name, module in malmm.model.named_modules():
        if name.startswith(FULL_PRECISION) and isinstance(module, nn.Linear):
            assert type(module) is nn.Linear and module.weight.dtype == torch.float32, name

    output, logits = next_token_logits(malmm)
    torch.testing.assert_close(output, reference[0], atol=1e-6, rtol=0)  # Q-Former untouched
    cosine = torch.nn.functional.cosine_similarity(logits, reference[1], dim=0).item()
    assert cosine > min_cosine, f"{mode}: next-token logits cosine to fp32 {cosine:.5f}"
    text = malmm.generate(output, CAPTION.prompt(), GenerationSettings(max_new_tokens=6, num_beams=2))
    assert text[0]


def test_vision_encoder_can_be_8bit_too(tiny_llama_dir, reference) -> None:
    malmm = Malmm.from_pretrained(tiny_llama_dir, quantize="4bit", quantize_vision=True)
    vision_linears = [m for m in malmm.model.vision_model.modules() if isinstance(m, nn.Linear)]
    assert vision_linears and all(isinstance(m, bnb.nn.Linear8bitLt) for m in vision_linears)
    assert all(m.weight.dtype == torch.int8 for m in vision_linears)
    assert all(type(m) is nn.Linear for m in malmm.model.qformer.modules() if isinstance(m, nn.Linear))
    output, _ = next_token_logits(malmm)
    torch.testing.assert_close(output, reference[0], atol=1e-3, rtol=0)


def test_skip_list_names_lm_head_because_it_replaces_the_default() -> None:
    for mode in ("8bit", "4bit"):
        config = quantization_config(mode, torch.float16)
        assert "lm_head" in config.llm_int8_skip_modules
    assert quantization_config("none", torch.float16) is None
    with pytest.raises(ValueError, match="unknown quantization"):
        quantization_config("2bit", torch.float16)


def test_memory_plan_for_vicuna_7b_shapes() -> None:
    config = architecture("vicuna-7b")
    plans = {mode: plan_memory(config, quantize=mode) for mode in ("none", "8bit", "4bit")}
    assert plans["none"].total > plans["8bit"].total > plans["4bit"].total
    assert 12 * GIB < plans["none"].llm < 14 * GIB  # 6.7B params in fp16
    assert plans["4bit"].llm < plans["none"].llm / 3
    assert plan_memory(config, quantize="4bit", quantize_vision=True).vision < plans["4bit"].vision * 0.6
    assert choose_quantization(plans, 24 * GIB) == "none"
    assert choose_quantization(plans, 12 * GIB) == "8bit"
    assert choose_quantization(plans, int(8.5 * GIB)) == "4bit"
    assert choose_quantization(plans, 2 * GIB) is None
    # memory does not depend on how many frames are read: there is no frames argument at all
    assert plan_memory(config, memory_bank_length=40).total > plan_memory(config, memory_bank_length=10).total
