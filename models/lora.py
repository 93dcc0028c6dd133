"""LoRA adapters (peft), for small GPUs: on the Q-Former instead of training it whole, and on the
frozen LLM (`--lora-llm`), which is otherwise not trained at all.

Q-Former: rank-r adapters on every attention's query, key and value projections (self- and
cross-attention) are trained with the query tokens, the projection, the vision LayerNorm and the
frame table; the rest of the Q-Former stays frozen. That shrinks what the optimiser holds from
189 M parameters to 4.1 M at rank 8 (vicuna-7b's), not the activations. Saved checkpoints hold the merged weights
(base + adapter) under the model's own names, so they load like any trained checkpoint, without
peft.

LLM: rank-r adapters on the attention projections of every decoder layer (`LLM_LORA_TARGETS`, as
transformers' LlamaAttention names them), as QLoRA trains them: on a 4-/8-bit LLM peft wraps
bitsandbytes' layers, whose quantized weights stay frozen; the adapters are float32 whatever the
LLM's dtype. They are never merged: the LLM's base weights come from the hub, not from the
checkpoint, which holds the adapters' own tensors (`llm_adapter_tensors`, peft's names under
`language_model.`) and their settings (`config.llm_lora`: rank, alpha, targets).
"""

from __future__ import annotations

import re

import torch
from torch import nn

LORA_TARGETS = ["query", "key", "value"]  # the attention projections' names in transformers' Q-Former
LLM_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")  # transformers' LlamaAttention's projections
QFORMER = "qformer."
LLM = "language_model."


class LoraError(ValueError):
    """An LLM adapter that cannot be added or loaded as asked; the message says why."""


def add_lora(model: nn.Module, rank: int) -> None:
    """Wrap the Q-Former's attention projections of `model` in rank-`rank` LoRA adapters
    (alpha 2 x rank; their up-projections start at zero, so the model is unchanged at first)."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS), model.qformer)


def _layers(model: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer) and name.startswith(prefix)]


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name in `model`, layer) of every LoRA-wrapped layer of the Q-Former; none without peft or
    adapters. (The LLM's are `llm_lora_layers`: they are never merged.)"""
    return _layers(model, QFORMER)


def _adapter_ids(layers: list[tuple[str, nn.Module]]) -> set[int]:
    return {id(p) for _, layer in layers for p in [*layer.lora_A.parameters(), *layer.lora_B.parameters()]}


def adapter_parameters(model: nn.Module) -> set[int]:
    """The ids of the Q-Former adapters' own parameters (what LoRA trains in the Q-Former)."""
    return _adapter_ids(lora_layers(model))


@torch.no_grad()
def merged_lora_weights(model: nn.Module) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """({name.weight / name.bias: base + adapter}, prefixes of the wrapped layers' own tensors), of
    the Q-Former's adapted layers."""
    merged: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model):
        base = layer.base_layer
        delta = sum(layer.get_delta_weight(adapter) for adapter in layer.active_adapters)
        merged[f"{name}.weight"] = base.weight + delta
        if base.bias is not None:
            merged[f"{name}.bias"] = base.bias
    return merged, tuple(f"{name}." for name, _ in lora_layers(model))


# --- the LLM's adapters ---------------------------------------------------------------------------


def llm_lora_targets(model: nn.Module) -> list[str]:
    """Which of `LLM_LORA_TARGETS` the model's LLM has (none in Flan-T5, whose attention names its
    projections q, k, v, o)."""
    present = {name.rsplit(".", 1)[-1] for name, _ in model.language_model.named_modules()}
    return [target for target in LLM_LORA_TARGETS if target in present]


def llm_lora_settings(rank: int, model: nn.Module) -> dict:
    """The settings of a rank-`rank` adapter on this model's LLM (what `config.llm_lora` and
    checkpoints hold); LoraError for an LLM without any of the targets."""
    if rank < 1:
        raise LoraError(f"an LLM adapter needs a rank of 1 or more, got {rank}")
    targets = llm_lora_targets(model)
    if not targets:
        kind = model.config.text_config.model_type
        raise LoraError(
            f"--lora-llm adapts a Llama-style LLM's attention projections ({', '.join(LLM_LORA_TARGETS)}); this "
            f"model's LLM ({kind}) has none of them: use a Vicuna/Llama InstructBLIP, or train without --lora-llm"
        )
    return {"rank": rank, "alpha": 2 * rank, "targets": targets}


def describe_llm_lora(settings: dict | None) -> str:
    if not settings:
        return "none"
    return f"rank {settings['rank']} (alpha {settings['alpha']}, on {', '.join(settings['targets'])})"


def add_llm_lora(model: nn.Module, settings: dict) -> None:
    """Wrap the LLM's attention projections (`settings["targets"]`) of `model` in LoRA adapters of
    `settings["rank"]` and `["alpha"]`, recorded in `config.llm_lora`. The up-projections start at
    zero, so the model is unchanged at first; the adapters are float32 and frozen until a trainer
    trains them. On a 4-/8-bit LLM peft wraps bitsandbytes' layers (it reads how the model was
    loaded from the model itself, hence the injection from the top: the targets are named by a
    pattern under `language_model.`)."""
    from peft import LoraConfig, inject_adapter_in_model

    if getattr(model.config, "llm_lora", None):
        raise LoraError(f"the LLM has an adapter already ({describe_llm_lora(model.config.llm_lora)})")
    absent = sorted(set(settings["targets"]) - set(llm_lora_targets(model)))
    if absent:
        raise LoraError(f"the adapter's targets {', '.join(absent)} are not in this model's LLM")
    pattern = re.escape(LLM) + r".*\.(" + "|".join(settings["targets"]) + ")"
    config = LoraConfig(r=settings["rank"], lora_alpha=settings["alpha"], target_modules=pattern)
    inject_adapter_in_model(config, model)
    for _, layer in llm_lora_layers(model):  # peft gives them the dtype of a float LLM's weights
        layer.lora_A.float()
        layer.lora_B.float()
    model.requires_grad_(False)  # peft marks its adapters trainable: the trainer says what is
    model.config.llm_lora = dict(settings)


def llm_lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name in `model`, layer) of the LLM's LoRA-wrapped layers."""
    return _layers(model, LLM)


def llm_adapter_parameters(model: nn.Module) -> set[int]:
    """The ids of the LLM adapters' own parameters (what `--lora-llm` trains)."""
    return _adapter_ids(llm_lora_layers(model))


def llm_adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LLM adapters' tensors by peft's names (without the adapter's name) under `language_model.`,
    as a checkpoint holds them; empty without an adapter."""
    if not getattr(model.config, "llm_lora", None):
        return {}
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model)  # the Q-Former's adapters too, when it has some
    return {name: tensor for name, tensor in state.items() if name.startswith(LLM)}


def load_llm_adapter(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> list[str]:
    """Copy a checkpoint's LLM adapter tensors (`llm_adapter_tensors`' names) into the model's
    adapter, all of them or LoraError. Returns the names loaded."""
    from peft import set_peft_model_state_dict

    expected = llm_adapter_tensors(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise LoraError(f"{source}: its LLM adapter does not fit this model's (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")  # fmt: skip
    wrong = [f"{name} {tuple(value.shape)} vs {tuple(expected[name].shape)}"
             for name, value in tensors.items() if value.shape != expected[name].shape]  # fmt: skip
    if wrong:
        raise LoraError(f"{source}: its LLM adapter has other shapes ({', '.join(wrong[:3])})")
    set_peft_model_state_dict(model, {name: value.float() for name, value in tensors.items()})
    return sorted(tensors)
