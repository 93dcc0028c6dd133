"""Training the Q-Former through LoRA adapters (peft) instead of whole, for small GPUs.

Rank-r adapters on every Q-Former attention's query, key and value projections (self- and
cross-attention) are trained with the query tokens, the projection, the vision LayerNorm and the
frame table; the rest of the Q-Former stays frozen. That shrinks what the optimiser holds from
189 M parameters to 4.1 M at rank 8 (vicuna-7b's), not the activations. Saved checkpoints hold the merged weights
(base + adapter) under the model's own names, so they load like any trained checkpoint, without
peft.
"""

from __future__ import annotations

import torch
from torch import nn

LORA_TARGETS = ["query", "key", "value"]  # the attention projections' names in transformers' Q-Former


def add_lora(model: nn.Module, rank: int) -> None:
    """Wrap the Q-Former's attention projections of `model` in rank-`rank` LoRA adapters
    (alpha 2 x rank; their up-projections start at zero, so the model is unchanged at first)."""
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=LORA_TARGETS), model.qformer)


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name in `model`, layer) of every LoRA-wrapped layer; none without peft or adapters."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return []
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoraLayer)]


def adapter_parameters(model: nn.Module) -> set[int]:
    """The ids of the adapters' own parameters (what LoRA trains in the Q-Former)."""
    return {id(p) for _, layer in lora_layers(model) for p in [*layer.lora_A.parameters(), *layer.lora_B.parameters()]}


@torch.no_grad()
def merged_lora_weights(model: nn.Module) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """({name.weight / name.bias: base + adapter}, prefixes of the wrapped layers' own tensors)."""
    merged: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model):
        base = layer.base_layer
        delta = sum(layer.get_delta_weight(adapter) for adapter in layer.active_adapters)
        merged[f"{name}.weight"] = base.weight + delta
        if base.bias is not None:
            merged[f"{name}.bias"] = base.bias
    return merged, tuple(f"{name}." for name, _ in lora_layers(model))
