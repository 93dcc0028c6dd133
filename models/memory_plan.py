"""How much device memory a model will need, before loading it.

Weights are counted from the configuration on PyTorch's meta device (no memory, no download
beyond config.json). Activations are upper estimates for one step of each stage. What MA-LMM needs
does not depend on the video's length: the memory bank is bounded, frames are encoded in batches.
The memory path (Q-Former, frame table, projection, memory banks) is float32 whatever the dtype
of the ViT and the LLM (models/modeling.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import InstructBlipConfig

from models.lora import LLM_LORA_TARGETS, LORA_TARGETS
from models.presets import OPTIMIZERS
from models.time_aware import TIME_TOKENS

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
    qformer_encoder: int = 0  # the Q-Former module's own parameters (of `qformer`), which LoRA freezes
    lora_width: int = 0  # in + out features summed over the Q-Former's query/key/value layers (LoRA's targets)
    llm_lora_width: int = 0  # the same over the LLM's attention projections (--lora-llm's targets)

    def llm_adapter(self, rank: int) -> int:
        """Parameters of a rank-`rank` adapter on the LLM: r x (in + out) per adapted layer."""
        return rank * self.llm_lora_width


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

    def adapted_width(module: nn.Module, targets: Sequence[str]) -> int:
        """in + out features summed over the layers LoRA adapts (named `targets`)."""
        return sum(m.in_features + m.out_features for name, m in module.named_modules()
                   if name.rsplit(".", 1)[-1] in targets and isinstance(m, nn.Linear))  # fmt: skip

    vision = split(model.vision_model)
    llm = split(model.language_model, keep=("lm_head",))
    encoder = sum(p.numel() for p in model.qformer.parameters())
    qformer = encoder + model.query_tokens.numel() + model.frame_position_embedding.weight.numel()
    qformer += sum(p.numel() for p in model.language_projection.parameters())
    return ParameterCounts(*vision, qformer, *llm, qformer_encoder=encoder,
                           lora_width=adapted_width(model.qformer, LORA_TARGETS),
                           llm_lora_width=adapted_width(model.language_model, LLM_LORA_TARGETS))  # fmt: skip


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated bytes on the device, by component."""

    vision: int
    qformer: int
    llm: int
    activations: int
    quantize: str
    quantize_vision: bool
    optimizer: int = 0  # training: the trained parameters' gradients and optimiser state
    optimizer_name: str = ""
    llm_adapter: int = 0  # training with --lora-llm: the LLM adapter's parameters (float32, 4 bytes each)

    @property
    def total(self) -> int:
        held = self.vision + self.qformer + self.llm + 4 * self.llm_adapter + self.optimizer + self.activations
        return int(held * SAFETY) + RUNTIME_OVERHEAD

    def describe(self) -> str:
        vision = " (8-bit)" if self.quantize_vision else ""
        llm = "" if self.quantize == "none" else f" ({self.quantize})"
        optimizer = f", gradients and {self.optimizer_name} {self.optimizer / GIB:.2g}" if self.optimizer else ""
        adapter = (f", LLM adapter {4 * self.llm_adapter / GIB:.2g} ({self.llm_adapter / 1e6:.1f} M parameters)"
                   if self.llm_adapter else "")  # fmt: skip
        return (
            f"~{self.total / GIB:.1f} GiB: vision {self.vision / GIB:.1f}{vision}, Q-Former {self.qformer / GIB:.2f}, "
            f"LLM {self.llm / GIB:.1f}{llm}{adapter}{optimizer}, activations {self.activations / GIB:.1f}"
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
    time_aware: bool = False,
    llm_lora_rank: int = 0,
) -> MemoryPlan:
    """Estimate device memory for running MA-LMM with these settings (any video length): one
    video read by `readers` memories (questions), answers generated one at a time (larger
    batches of videos and answers are sized after loading, in what is left). time_aware: the
    Q-Former reads each frame's time sentence too (TIME_TOKENS more instruction tokens).
    llm_lora_rank: a checkpoint's LLM adapter of that rank (--lora-llm), its float32 weights."""
    counts = counts or count_parameters(config)
    width = torch.finfo(dtype).bits // 8
    float32 = 4  # the memory path's width, on every device
    vision_linear = QUANTIZED_BYTES["8bit"] if quantize_vision else width
    llm_linear = QUANTIZED_BYTES.get(quantize, width)

    vision_activation = vision_batch * vision_activation_per_frame(config, dtype)
    instruction = prompt_tokens + (TIME_TOKENS if time_aware else 0)
    memory = memory_state_bytes(config, memory_bank_length, readers, instruction)  # one video's
    generation = generation_bytes(config, dtype, num_beams, max_new_tokens, prompt_tokens)
    return MemoryPlan(
        vision=int(counts.vision_linear * vision_linear + counts.vision_other * width),
        qformer=counts.qformer * float32,
        llm=int(counts.llm_linear * llm_linear + counts.llm_other * width),
        activations=vision_activation + memory + generation,
        quantize=quantize,
        quantize_vision=quantize_vision,
        llm_adapter=counts.llm_adapter(llm_lora_rank),
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


# Optimiser state bytes per trained parameter: AdamW's two float32 moments; bitsandbytes' 8-bit
# AdamW keeps them in one byte each (plus a float32 scale per block of 256).
OPTIMIZER_BYTES = {"adamw": 8.0, "adamw8bit": 2.0 + 8 / 256}  # one entry per models.presets.OPTIMIZERS


@dataclass(frozen=True)
class TrainingShape:
    """What one training step holds at once, for its memory plan (see `plan_training`)."""

    batch_size: int
    grad_accum: int = 1  # takes no memory; kept so that a smaller batch can be suggested with as many more steps
    optimizer: str = "adamw"
    checkpointing: bool = True  # the LLM's activations are recomputed in the backward pass
    lora_rank: int = 0  # the Q-Former trained through adapters of this rank (models/lora.py); 0: whole
    text_tokens: int = 96  # prompt and target tokens of the longest example
    instruction_tokens: int = 32  # the Q-Former's instruction
    llm_lora_rank: int = 0  # adapters of this rank trained on the LLM's attention (models/lora.py); 0: none
    time_aware: bool = False  # each frame's instruction starts with its time sentence (TIME_TOKENS more)
    clips_per_example: int = 1  # clips read per example and step (find: a positive and its negative windows)


def plan_training(
    config: InstructBlipConfig,
    shape: TrainingShape,
    *,
    quantize: str = "none",
    quantize_vision: bool = False,
    dtype: torch.dtype = torch.float16,
    vision_batch: int = 8,
    memory_bank_length: int = 20,
    efficient_attention: bool = True,
    counts: ParameterCounts | None = None,
) -> MemoryPlan:
    """Estimate device memory for training (models/training.py) with these settings.

    Held throughout: the frozen weights, the trained parameters with their gradients and
    optimiser state (an LLM adapter's too, and its own float32 weights). At the peak, one of: the
    ViT encoding a batch of frames (features are computed before the memory reads them), or a
    batch's training step: every clip's memory state, what its last step keeps for the backward
    pass (`training_step_bytes`) and the LLM's.
    efficient_attention: the GPU's fused attention kernels (a CPU keeps the attention scores).
    """
    counts = counts or count_parameters(config)
    inference = plan_memory(
        config, quantize=quantize, quantize_vision=quantize_vision, dtype=dtype, vision_batch=vision_batch,
        memory_bank_length=memory_bank_length, counts=counts,
    )  # fmt: skip
    trained = counts.qformer + 2 * config.vision_config.hidden_size  # + the vision LayerNorm
    if shape.lora_rank:  # the Q-Former frozen but for its adapters
        trained += shape.lora_rank * counts.lora_width - counts.qformer_encoder
    adapter = counts.llm_adapter(shape.llm_lora_rank)
    trained += adapter
    instruction = shape.instruction_tokens + (TIME_TOKENS if shape.time_aware else 0)
    clips = shape.batch_size * shape.clips_per_example
    step = clips * (
        memory_state_bytes(config, memory_bank_length, 1, instruction)
        + training_step_bytes(config, memory_bank_length, instruction, efficient_attention)
        + llm_training_bytes(config, dtype, shape.text_tokens, shape.checkpointing)
    )
    vision = vision_batch * vision_activation_per_frame(config, dtype)
    return dataclasses.replace(
        inference,
        optimizer=int(trained * (4 + OPTIMIZER_BYTES[shape.optimizer])),  # float32 gradients + moments
        optimizer_name=OPTIMIZERS[shape.optimizer],
        llm_adapter=adapter,
        activations=max(vision, step),
    )


def training_step_bytes(
    config: InstructBlipConfig, memory_bank_length: int, instruction_tokens: int = 32, efficient_attention: bool = True
) -> int:
    """What one clip's last memory step keeps for the backward pass (float32): the bank's entries
    with the current one live, their keys and values in every layer that reads them (projected
    again, as MA-LMM trains), and each layer's own activations; with unfused attention (a CPU's) also
    its copies of the keys and values and the attention probabilities before and after dropout."""
    v, q = config.vision_config, config.qformer_config
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    slots, width = memory_bank_length + 1, q.hidden_size
    cross_layers = -(-q.num_hidden_layers // q.cross_attention_frequency)
    queries = config.num_query_tokens + instruction_tokens
    heads = q.num_attention_heads
    held = slots * tokens * v.hidden_size + cross_layers * 2 * slots * tokens * width  # visual entries, keys, values
    held += q.num_hidden_layers * 3 * slots * queries * width  # query entries, keys, values
    held += q.num_hidden_layers * queries * (8 * width + 2 * q.intermediate_size)  # the rest of each layer
    if not efficient_attention:  # and its contiguous copies of the keys and values
        held += cross_layers * slots * tokens * (3 * width + 3 * heads * config.num_query_tokens)
        held += q.num_hidden_layers * slots * queries * (width + 3 * heads * queries)
    return held * 4


def llm_training_bytes(config: InstructBlipConfig, dtype: torch.dtype, text_tokens: int, checkpointing: bool) -> int:
    """The frozen LLM's activations kept for one clip's backward pass (to the soft prompt): every
    layer's, or with checkpointing each layer's input and one layer recomputed; float32 logits,
    their log-probabilities and gradient."""
    t = config.text_config
    width = torch.finfo(dtype).bits // 8
    hidden = getattr(t, "hidden_size", None) or t.d_model
    layers = getattr(t, "num_hidden_layers", None) or t.num_layers * 2
    intermediate = getattr(t, "intermediate_size", None) or t.d_ff
    length = config.num_query_tokens + text_tokens
    per_layer = length * (5 * hidden + 3 * intermediate) * width
    kept = layers * length * hidden * width + per_layer if checkpointing else layers * per_layer
    return kept + 3 * length * t.vocab_size * 4


def choose_quantization(plans: dict[str, MemoryPlan], free_bytes: int) -> str | None:
    """`auto`: no quantization when everything fits, else 8-bit, else 4-bit; None if nothing fits."""
    for mode in ("none", "8bit", "4bit"):
        if plans[mode].total <= free_bytes:
            return mode
    return None
