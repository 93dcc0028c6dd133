"""4-/8-bit weights with bitsandbytes, for the LLM only by default.

The LLM is 85-95% of InstructBLIP's weights and tolerates 4-bit (nf4) or 8-bit (LLM.int8) well;
the vision encoder, Q-Former, language projection and lm_head stay in full precision because
they are small and numerically sensitive. `quantize_vision_8bit` optionally shrinks the 1B-param
ViT too, after loading, so it works whatever mode the LLM uses.

On CPUs with AVX512-BF16, bitsandbytes runs 4-bit layers through a kernel that repacks each
weight on first use, and that kernel only takes out_features divisible by 32 and in_features
divisible by the quantization block (64); elsewhere (other CPUs, CUDA) any shape works. Every
InstructBLIP LLM fits; layers of other models that do not are kept in full precision
(`unfit_for_cpu_4bit`) instead of failing with "shape '[32, 0]' is invalid".
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from transformers import BitsAndBytesConfig, PretrainedConfig

QUANTIZE_MODES = ("none", "8bit", "4bit")
# Modules kept in full precision. This list REPLACES transformers' default skip list, so it must
# name lm_head itself; names match any module whose dotted path contains them.
KEEP_FULL_PRECISION = ["vision_model", "qformer", "language_projection", "frame_position_embedding", "lm_head"]


PACKED_4BIT_OUT_MULTIPLE = 32  # bitsandbytes' packed 4-bit CPU kernel: rows per block
PACKED_4BIT_IN_MULTIPLE = 64  # ... and its quantization block size (nf4's default)


class _DropInt8CastNotice(logging.Filter):
    """bitsandbytes logs "inputs will be cast ... to float16" on every 8-bit matmul of a float32
    model (the CPU case): expected there, and hundreds of lines per video."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "inputs will be cast from" not in record.getMessage()


class _DropOptionalKernelNotice(logging.Filter):
    """On AVX512-BF16 CPUs bitsandbytes tries, at import, to fetch a faster 4-bit kernel from the
    hub (`kernels` package) and logs a warning when it cannot; its own kernel works, and malmm runs
    offline, so the line would only confuse."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "kernels-community" not in record.getMessage()


def quiet_bitsandbytes() -> None:
    """Install the filters above (once; a second call adds nothing). Called where a quantized model
    is planned or loaded, before bitsandbytes is first imported, not when this module is imported:
    importing a module should not change another library's logging."""
    for name, kind in (("bitsandbytes.backends.cpu.ops", _DropOptionalKernelNotice),
                       ("bitsandbytes.autograd._functions", _DropInt8CastNotice)):  # fmt: skip
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())


def cpu_4bit_packs_weights() -> bool:
    """Whether bitsandbytes' 4-bit layers on this CPU use the packed kernel (AVX512-BF16)."""
    quiet_bitsandbytes()
    from bitsandbytes.functional import has_avx512bf16

    return bool(has_avx512bf16())


def fits_packed_4bit(layer: nn.Linear) -> bool:
    return layer.out_features % PACKED_4BIT_OUT_MULTIPLE == 0 and layer.in_features % PACKED_4BIT_IN_MULTIPLE == 0


def unfit_for_cpu_4bit(config: PretrainedConfig) -> list[str]:
    """Full names of the LLM's linear layers that the packed 4-bit CPU kernel cannot take."""
    from models.modeling import MalmmForConditionalGeneration

    with torch.device("meta"):  # shapes only: no memory, no weights
        model = MalmmForConditionalGeneration(config)
    return [
        f"language_model.{name}"
        for name, module in model.language_model.named_modules()
        if isinstance(module, nn.Linear) and not name.endswith("lm_head") and not fits_packed_4bit(module)
    ]


def quantization_config(
    mode: str, compute_dtype: torch.dtype, keep: list[str] | None = None
) -> BitsAndBytesConfig | None:
    """The transformers quantization config for the LLM in `mode` (none, 8bit or 4bit).

    keep: full names of further modules to leave in full precision (see `unfit_for_cpu_4bit`).
    """
    skip = [*KEEP_FULL_PRECISION, *(keep or [])]
    if mode == "none":
        return None
    quiet_bitsandbytes()  # transformers imports bitsandbytes when it loads the model
    if mode == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    if mode == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=skip,
        )
    raise ValueError(f"unknown quantization {mode!r}: use one of {', '.join(QUANTIZE_MODES)}")


def quantize_vision_8bit(model: nn.Module) -> int:
    """Replace the vision encoder's linear layers by 8-bit ones in place. Returns how many.

    Weights are handed to bitsandbytes on the CPU and quantized as they move to their device. Each
    8-bit layer is made on the `meta` device: made anywhere else it would first draw a random
    initialisation of its full-size weight (about 1 G values for ViT-g, serially, on the CPU),
    only to have it replaced by the real weight on the next line.
    """
    import bitsandbytes as bnb

    replaced = 0
    for parent in list(model.vision_model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            device = child.weight.device
            layer = bnb.nn.Linear8bitLt(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                has_fp16_weights=False,
                device="meta",
            )
            layer.weight = bnb.nn.Int8Params(child.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
            if child.bias is not None:
                layer.bias = nn.Parameter(child.bias.data.cpu(), requires_grad=False)
            setattr(parent, name, layer.to(device))
            replaced += 1
    return replaced
