"""An optimiser's state dict as safetensors tensors plus JSON, and back: how resume/ keeps it
(never a pickle, which runs code when loaded)."""

from __future__ import annotations

import json
from typing import Any

import torch


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON-able rest) of an optimiser's `state_dict()`. A parameter's state may nest
    dicts (bitsandbytes keeps its quantization state in one): tensors are named by their path,
    `optimizer.{index}.{key}/{key}...`."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()  # storages already saved: bitsandbytes shares its quantization maps

    def split(values: dict[str, Any], prefix: str) -> dict[str, Any]:
        plain: dict[str, Any] = {}
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                value = value.detach().cpu().contiguous()
                shared = value.untyped_storage().data_ptr() in seen
                seen.add(value.untyped_storage().data_ptr())
                tensors[prefix + key] = value.clone() if shared else value
            elif isinstance(value, dict):
                plain[key] = split(value, f"{prefix}{key}/")
            else:
                plain[key] = value
        return plain

    plain_state = {str(index): split(values, f"optimizer.{index}.") for index, values in state["state"].items()}
    return tensors, {"state": plain_state, "param_groups": state["param_groups"]}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    """The state dict that `flatten_optimizer` split (other tensors, not named `optimizer.`, are ignored)."""
    state: dict[int, dict[str, Any]] = {int(i): json.loads(json.dumps(values)) for i, values in plain["state"].items()}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, path = name.split(".", 2)
            *parents, key = path.split("/")
            where = state.setdefault(int(index), {})
            for parent in parents:
                where = where.setdefault(parent, {})
            where[key] = value
    return {"state": state, "param_groups": plain["param_groups"]}
