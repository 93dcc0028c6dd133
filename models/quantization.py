"""4-/8-bit weights with bitsandbytes, for the LLM only by default.

The LLM is 85-95% of InstructBLIP's weights and tolerates 4-bit (nf4) or 8-bit (LLM.int8) well;
the vision encoder, Q-Former, language projection and lm_head stay in full precision because
they are small and numerically sensitive. `quantize_vision_8bit` optionally shrinks the 1B-param
ViT too, after loading, so it works whatever mode the LLM uses.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import BitsAndBytesConfig

QUANTIZE_MODES = ("none", "8bit", "4bit")
# Modules kept in full precision. This list REPLACES transformers' default skip list, so it must
# name lm_head itself; names match any module whose dotted path contains them.
KEEP_FULL_PRECISION = ["vision_model", "qformer", "language_projection", "frame_position_embedding", "lm_head"]


class _DropInt8CastNotice(logging.Filter):
    """bitsandbytes logs "inputs will be cast ... to float16" on every 8-bit matmul of a float32
    model (the CPU case): expected there, and hundreds of lines per video."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "inputs will be cast from" not in record.getMessage()


def quantization_config(mode: str, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """The transformers quantization config for the LLM in `mode` (none, 8bit or 4bit)."""
    if mode == "none":
        return None
    if mode == "8bit":
        bnb_logger = logging.getLogger("bitsandbytes.autograd._functions")
        if not any(isinstance(f, _DropInt8CastNotice) for f in bnb_logger.filters):
            bnb_logger.addFilter(_DropInt8CastNotice())
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(KEEP_FULL_PRECISION))
    if mode == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=list(KEEP_FULL_PRECISION),
        )
    raise ValueError(f"unknown quantization {mode!r}: use one of {', '.join(QUANTIZE_MODES)}")


def quantize_vision_8bit(model: nn.Module) -> int:
    """Replace the vision encoder's linear layers by 8-bit ones in place. Returns how many.

    Weights are handed to bitsandbytes on the CPU and quantized as they move to their device.
    """
    import bitsandbytes as bnb

    replaced = 0
    for parent in list(model.vision_model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            device = child.weight.device
            layer = bnb.nn.Linear8bitLt(
                child.in_features, child.out_features, bias=child.bias is not None, has_fp16_weights=False
            )
            layer.weight = bnb.nn.Int8Params(child.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
            if child.bias is not None:
                layer.bias = nn.Parameter(child.bias.data.cpu(), requires_grad=False)
            setattr(parent, name, layer.to(device))
            replaced += 1
    return replaced
