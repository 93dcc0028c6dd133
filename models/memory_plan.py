"""How much device memory a model will need, before loading it.

Weights are counted from the configuration on PyTorch's meta device (no memory, no download
beyond config.json). Activations are upper estimates for one step of each stage. What MA-LMM needs
does not depend on the video's length: the memory bank is bounded, frames are encoded in batches.
The memory path (Q-Former, frame table, projection, memory banks) is float32 whatever the dtype
of the ViT and the LLM (models/modeling.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import InstructBlipConfig

GIB = 1024**3
# Bytes per quantized weight: nf4 packs 2 weights a byte, plus its double-quantized absmax scales;
# LLM.int8 stores one byte a weight plus a per-row scale.
QUANTIZED_BYTES = {"8bit": 1.0 + 1 / 256, "4bit": 0.5 + 1 / 64 + 4 / (64 * 256)}
RUNTIME_OVERHEAD = 400 * 1024**2  # CUDA/cuBLAS workspaces and allocator slack, measured order of magnitude
SAFETY = 1.10


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of each component: those in linear layers (quantizable) and the rest."""

    vision_linear: int
    vision_other: int
    qformer: int
    llm_linear: int
    llm_other: int  # embeddings, norms and lm_head (kept in full precision)


def count_parameters(config: InstructBlipConfig) -> ParameterCounts:
    from models.modeling import MalmmForConditionalGeneration

    with torch.device("meta"):
        model = MalmmForConditionalGeneration(config)

    def split(module: nn.Module, keep: tuple[str, ...] = ()) -> tuple[int, int]:
        linear = other = 0
        for name, child in module.named_modules():
            direct = sum(p.numel() for p in child.parameters(recurse=False))
            if isinstance(child, nn.Linear) and not any(k in name for k in keep):
                linear += direct
            else:
                other += direct
        return linear, other

    vision = split(model.vision_model)
    llm = split(model.language_model, keep=("lm_head",))
    qformer = sum(p.numel() for p in model.qformer.parameters()) + model.query_tokens.numel()
    qformer += sum(p.numel() for p in model.language_projection.parameters())
    qformer += model.frame_position_embedding.weight.numel()
    return ParameterCounts(*vision, qformer, *llm)


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated bytes on the device, by component."""

    vision: int
    qformer: int
    llm: int
    activations: int
    quantize: str
    quantize_vision: bool

    @property
    def total(self) -> int:
        return int((self.vision + self.qformer + self.llm + self.activations) * SAFETY) + RUNTIME_OVERHEAD

    def describe(self) -> str:
        vision = " (8-bit)" if self.quantize_vision else ""
        llm = "" if self.quantize == "none" else f" ({self.quantize})"
        return (
            f"~{self.total / GIB:.1f} GiB: vision {self.vision / GIB:.1f}{vision}, Q-Former {self.qformer / GIB:.2f}, "
            f"LLM {self.llm / GIB:.1f}{llm}, activations {self.activations / GIB:.1f}"
        )


def vision_activation_per_frame(config: InstructBlipConfig, dtype: torch.dtype = torch.float16) -> int:
    """Peak activation bytes of one frame in the ViT: one layer's input, qkv, attention scores, MLP."""
    v = config.vision_config
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    width = torch.finfo(dtype).bits // 8
    return tokens * (5 * v.hidden_size + v.intermediate_size) * width + v.num_attention_heads * tokens**2 * width


def plan_memory(
    config: InstructBlipConfig,
    *,
    quantize: str = "none",
    quantize_vision: bool = False,
    dtype: torch.dtype = torch.float16,
    vision_batch: int = 8,
    memory_bank_length: int = 40,
    readers: int = 1,
    num_beams: int = 5,
    max_new_tokens: int = 50,
    prompt_tokens: int = 64,
    counts: ParameterCounts | None = None,
) -> MemoryPlan:
    """Estimate device memory for running MA-LMM with these settings (any video length): one
    video read by `readers` memories (questions), answers generated one at a time (larger
    batches of videos and answers are sized after loading, in what is left)."""
    counts = counts or count_parameters(config)
    width = torch.finfo(dtype).bits // 8
    float32 = 4  # the memory path's width, on every device
    vision_linear = QUANTIZED_BYTES["8bit"] if quantize_vision else width
    llm_linear = QUANTIZED_BYTES.get(quantize, width)

    vision_activation = vision_batch * vision_activation_per_frame(config, dtype)
    memory = memory_state_bytes(config, memory_bank_length, readers, prompt_tokens)  # one video's
    generation = generation_bytes(config, dtype, num_beams, max_new_tokens, prompt_tokens)
    return MemoryPlan(
        vision=int(counts.vision_linear * vision_linear + counts.vision_other * width),
        qformer=counts.qformer * float32,
        llm=int(counts.llm_linear * llm_linear + counts.llm_other * width),
        activations=vision_activation + memory + generation,
        quantize=quantize,
        quantize_vision=quantize_vision,
    )


def memory_state_bytes(
    config: InstructBlipConfig, memory_bank_length: int, readers: int = 1, prompt_tokens: int = 64
) -> int:
    """One video's memory state: its visual bank (and one key/value copy per cross-attention
    layer), shared by its readers, and each reader's query banks; float32, bank length + 1 slots."""
    v, q = config.vision_config, config.qformer_config
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    slots, float32 = memory_bank_length + 1, 4
    cross_layers = -(-q.num_hidden_layers // q.cross_attention_frequency)
    queries = config.num_query_tokens + prompt_tokens
    visual = slots * tokens * (v.hidden_size + 2 * cross_layers * q.hidden_size) * float32
    query_banks = q.num_hidden_layers * slots * queries * 3 * q.hidden_size * float32  # inputs, keys, values
    return visual + readers * query_banks


def generation_bytes(
    config: InstructBlipConfig,
    dtype: torch.dtype = torch.float16,
    num_beams: int = 5,
    max_new_tokens: int = 50,
    prompt_tokens: int = 64,
    answers: int = 1,
) -> int:
    """LLM generation of `answers` read-outs at once: the key/value cache of every beam, one
    layer's MLP, last-position logits."""
    t = config.text_config
    width = torch.finfo(dtype).bits // 8
    hidden = getattr(t, "hidden_size", None) or t.d_model
    layers = getattr(t, "num_hidden_layers", None) or t.num_layers * 2
    heads = getattr(t, "num_attention_heads", None) or t.num_heads
    kv_heads = getattr(t, "num_key_value_heads", None) or heads
    intermediate = getattr(t, "intermediate_size", None) or t.d_ff
    sequences = answers * num_beams
    length = config.num_query_tokens + prompt_tokens + max_new_tokens
    kv_cache = sequences * length * layers * 2 * (hidden * kv_heads // heads) * width
    activation = sequences * length * (3 * hidden + 2 * intermediate) * width + sequences * t.vocab_size * 4
    return kv_cache + activation


def choose_quantization(plans: dict[str, MemoryPlan], free_bytes: int) -> str | None:
    """`auto`: no quantization when everything fits, else 8-bit, else 4-bit; None if nothing fits."""
    for mode in ("none", "8bit", "4bit"):
        if plans[mode].total <= free_bytes:
            return mode
    return None
