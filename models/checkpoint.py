"""Load MA-LMM fine-tuned checkpoints (LAVIS `.pth` files) on top of a Hugging Face InstructBLIP.

LAVIS names its modules differently from transformers (`Qformer.bert.*`, `ln_vision`, `llm_proj`,
`image_pe`, `visual_encoder.blocks.*`...). The checkpoint's tensors are renamed to the transformers
modules and copied in place; everything the file does not hold stays as the base model had it.
A released MA-LMM checkpoint holds only what MA-LMM trained: the Q-Former, its query tokens, the
vision LayerNorm, the LLM projection and the frame position table.

Files are read with `torch.load(weights_only=True)`: a file that needs to run pickled code to load
is refused, never executed. LLM weights (a recipe that trained the LLM) load into a full-precision
LLM only: a 4-/8-bit one holds integers, and the file is refused rather than cast into them.

`malmm train` saves the trained tensors alone, under transformers' names, as safetensors
(`save_trained`), with the base model's shape signature in the file's metadata: loading such a
file (or the run folder holding it) on another base model, or a file that lacks trained
tensors, is refused with one line. `load_checkpoint` takes either kind.

The metadata also holds the temporal module's settings (models/temporal.py; `null` without one):
`checkpoint_temporal` reads them so that a loader can build the module before loading, and
loading into a model whose module differs (or that has one where the file has none, or the
reverse) is refused. It holds the wording of time-aware frames too (models/time_aware.py; `null`
when the run read frames without their times), which `checkpoint_time_aware` reads so that the
loaded model reads frames as the run did.

A run trained with an LLM adapter (`--lora-llm`, models/lora.py) holds the adapter's tensors too
(peft's names under `language_model.`; never the LLM's base weights, which come from the hub) and its
settings under `llm_lora` (rank, alpha, targets; `null` without one): `checkpoint_llm_lora` reads
them so that a loader can add the adapter to the (quantized or not) LLM before loading, and a model
whose adapter differs from the file's is refused, as for the temporal module.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.lora import LLM, LoraError, describe_llm_lora, llm_adapter_tensors, load_llm_adapter, merged_lora_weights
from models.presets import TRAINED_WEIGHTS

# (LAVIS pattern, transformers replacement), tried in order; the first match wins.
_RENAMES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), r)
    for p, r in [
        (r"^Qformer\.bert\.embeddings\.LayerNorm\.", "qformer.embeddings.layernorm."),
        (r"^Qformer\.bert\.embeddings\.", "qformer.embeddings."),
        (
            r"^Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.",
            r"qformer.encoder.layer.\1.\2.attention.",
        ),
        (r"^Qformer\.bert\.encoder\.", "qformer.encoder."),
        (r"^query_tokens$", "query_tokens"),
        (r"^ln_vision\.", "vision_model.post_layernorm."),
        (r"^(llm_proj|t5_proj)\.", "language_projection."),
        (r"^image_pe\.", "frame_position_embedding."),
        (r"^(llm_model|t5_model)\.", "language_model."),
        (r"^visual_encoder\.cls_token$", "vision_model.embeddings.class_embedding"),
        (r"^visual_encoder\.pos_embed$", "vision_model.embeddings.position_embedding"),
        (r"^visual_encoder\.patch_embed\.proj\.", "vision_model.embeddings.patch_embedding."),
        (r"^visual_encoder\.blocks\.(\d+)\.norm([12])\.", r"vision_model.encoder.layers.\1.layer_norm\2."),
        (r"^visual_encoder\.blocks\.(\d+)\.attn\.qkv\.weight$", r"vision_model.encoder.layers.\1.self_attn.qkv.weight"),
        (r"^visual_encoder\.blocks\.(\d+)\.attn\.proj\.", r"vision_model.encoder.layers.\1.self_attn.projection."),
        (r"^visual_encoder\.blocks\.(\d+)\.mlp\.", r"vision_model.encoder.layers.\1.mlp."),
    ]
]
# Buffers and heads LAVIS saves that have no counterpart to load into.
_IGNORED = re.compile(r"^Qformer\.bert\.embeddings\.position_ids$|^Qformer\.cls\.")
# EVA ViT keeps q and v biases apart (k has none); transformers holds one fused qkv bias.
_EVA_QV_BIAS = re.compile(r"^visual_encoder\.blocks\.(\d+)\.attn\.([qv])_bias$")
# What MA-LMM fine-tunes: a checkpoint that lacks some of these is reported.
TRAINED_PREFIXES = (
    "qformer.",
    "query_tokens",
    "language_projection.",
    "frame_position_embedding.",
    "vision_model.post_layernorm.",
    "temporal.",  # the optional temporal module (models/temporal.py), where the model has one
)


class CheckpointError(Exception):
    """A checkpoint file that cannot be loaded, with a message a user can act on."""


@dataclass
class CheckpointReport:
    """What loading a checkpoint did: how many tensors it set, and what did not line up."""

    path: Path
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # trained parts the file did not hold
    unexpected: list[str] = field(default_factory=list)  # file keys with no place in the model

    @property
    def clean(self) -> bool:
        return not self.missing and not self.unexpected

    def message(self) -> str:
        text = f"Loaded {len(self.loaded)} tensor{'' if len(self.loaded) == 1 else 's'} from {self.path.name}."
        if self.missing:
            text += f" Not in the checkpoint, kept from the base model: {_preview(self.missing)}."
        if self.unexpected:
            text += f" In the checkpoint but not used: {_preview(self.unexpected)}."
        return text


def _preview(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a LAVIS checkpoint (`{"model": state_dict, ...}`), a bare state dict, or safetensors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises several types for a bad header
            raise CheckpointError(f"{path} is not a readable safetensors file: {error}") from error
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "global" not in str(error).lower():  # not a pickle of code: just not a checkpoint
            raise CheckpointError(f"{path} is not a PyTorch checkpoint or is damaged") from error
        raise CheckpointError(
            f"{path} holds pickled Python objects beyond tensors and plain containers; malmm will not "
            "unpickle it because that can run arbitrary code. If you trust the file, re-save its "
            "weights alone (torch.save({'model': state_dict}, 'weights.pth')) and load that."
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, KeyError, ValueError, IndexError) as error:
        # what torch's unpickler raises depends on which bytes the file starts with: any is "not one"
        reason = f": {error}" if str(error) and not isinstance(error, KeyError) else ""
        raise CheckpointError(f"{path} is not a PyTorch checkpoint or is damaged{reason}") from error
    state = content.get("model", content) if isinstance(content, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = list(content)[:8] if isinstance(content, dict) else type(content).__name__
        raise CheckpointError(f"{path} has no state dict under 'model' (found: {keys})")
    return state


def to_transformers_names(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename LAVIS keys to transformers keys. Returns (renamed tensors, keys with no mapping)."""
    renamed: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    qv_bias: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if _IGNORED.search(key):
            continue
        if match := _EVA_QV_BIAS.match(key):
            qv_bias.setdefault(match.group(1), {})[match.group(2)] = value
            continue
        for pattern, replacement in _RENAMES:
            if pattern.search(key):
                renamed[pattern.sub(replacement, key)] = value
                break
        else:
            unmapped.append(key)
    for block, biases in qv_bias.items():
        if set(biases) != {"q", "v"}:
            unmapped += [f"visual_encoder.blocks.{block}.attn.{b}_bias" for b in biases]
            continue
        fused = torch.cat([biases["q"], torch.zeros_like(biases["q"]), biases["v"]])
        renamed[f"vision_model.encoder.layers.{block}.self_attn.qkv.bias"] = fused
    return renamed, unmapped


def load_lavis_checkpoint(model: nn.Module, path: str | Path) -> CheckpointReport:
    """Copy a LAVIS/MA-LMM checkpoint file into `model` (a MalmmForConditionalGeneration) in place."""
    return load_lavis_state_dict(model, read_state_dict(path), Path(path))


def load_lavis_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> CheckpointReport:
    """Copy LAVIS-named tensors into `model` in place; `path` names their source in messages.

    The frame position table is resized to the checkpoint's row count if they differ. Raises
    CheckpointError when a tensor's shape does not fit its parameter, or when nothing matches.
    """
    renamed, unmapped = to_transformers_names(state)
    return _load_named(model, renamed, path, unmapped)


def _load_named(
    model: nn.Module, tensors: dict[str, torch.Tensor], path: Path, unmapped: list[str] | None = None
) -> CheckpointReport:
    """Copy tensors named as the model's parameters into it, all or nothing (see `load_lavis_state_dict`)."""
    report = CheckpointReport(path=path, unexpected=list(unmapped or []))
    table = tensors.get("frame_position_embedding.weight")
    if table is not None and table.shape != model.frame_position_embedding.weight.shape:
        _resize_frame_table(model, table.shape[0])

    params = dict(model.named_parameters())
    fitting = {name: value for name, value in tensors.items() if name in params}
    # a 4-/8-bit LLM holds integer weights: copying floats into them would cast them to garbage
    quantized = [name for name, value in fitting.items()
                 if value.is_floating_point() and not params[name].is_floating_point()]  # fmt: skip
    if quantized:
        raise CheckpointError(
            f"{path.name} holds LLM weights ({_preview(quantized, 3)}), which cannot be loaded into a 4-/8-bit "
            "LLM: load the model without quantization (--quantize none)"
        )
    mismatched = [f"{name}: checkpoint {tuple(value.shape)}, model {tuple(params[name].shape)}"
                  for name, value in fitting.items() if params[name].shape != value.shape]  # fmt: skip
    if mismatched:
        raise CheckpointError(
            f"{path.name} does not fit this base model ({len(mismatched)} shape mismatches, e.g. "
            f"{_preview(mismatched, 3)}). Is it for a different InstructBLIP (vicuna-7b, vicuna-13b, flan-t5)?"
        )
    with torch.no_grad():
        for name, value in tensors.items():
            target = params.get(name)
            if target is None:
                report.unexpected.append(name)
            else:
                target.copy_(value.to(dtype=target.dtype))
                report.loaded.append(name)
    if not report.loaded:
        raise CheckpointError(f"{path.name} holds no tensor that matches this model: is it an MA-LMM checkpoint?")
    loaded = set(report.loaded)
    report.missing = [n for n in params if n.startswith(TRAINED_PREFIXES) and n not in loaded]
    return report


def _resize_frame_table(model: nn.Module, rows: int) -> None:
    old = model.frame_position_embedding.weight
    model.frame_position_embedding = nn.Embedding(rows, old.shape[1], device=old.device, dtype=old.dtype)
    model.config.max_num_frames = rows


TRAINED_FORMAT = "malmm-trained"


def base_signature(config: object) -> dict[str, object]:
    """What a trained checkpoint must match in its base model: the kinds and shapes of the three
    networks (a different LLM of the same width would take the weights and read them wrongly)."""
    vision, qformer, text = config.vision_config, config.qformer_config, config.text_config
    return {
        "llm": text.model_type,
        "llm_vocabulary": text.vocab_size,
        "llm_width": getattr(text, "hidden_size", None) or getattr(text, "d_model", None),
        "llm_layers": getattr(text, "num_hidden_layers", None) or getattr(text, "num_layers", None),
        "vision_width": vision.hidden_size,
        "vision_layers": vision.num_hidden_layers,
        "image_size": vision.image_size,
        "qformer_width": qformer.hidden_size,
        "qformer_layers": qformer.num_hidden_layers,
        "query_tokens": config.num_query_tokens,
    }


def trained_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors MA-LMM trains, by transformers name, on the CPU; layers trained through LoRA
    adapters as their merged weights (models/lora.py), and the LLM's adapter, if any, as its own
    tensors (peft's names under `language_model.`)."""
    merged, wrapped = merged_lora_weights(model)
    named = {name: p for name, p in model.named_parameters()
             if name.startswith(TRAINED_PREFIXES) and not name.startswith(wrapped)}  # fmt: skip
    named.update(merged)
    named.update(llm_adapter_tensors(model))
    return {name: tensor.detach().to("cpu").contiguous() for name, tensor in named.items()}


def save_trained(model: nn.Module, path: Path, base_model: str) -> None:
    """Write the trained tensors to `path` (safetensors), atomically: a run killed while saving
    keeps its previous file."""
    from safetensors.torch import save_file

    metadata = {"format": TRAINED_FORMAT, "base_model": base_model,
                "base_signature": json.dumps(base_signature(model.config), sort_keys=True),
                "temporal": json.dumps(getattr(model.config, "temporal", None), sort_keys=True),
                "time_aware": json.dumps(getattr(model.config, "time_aware", None) or None),
                "llm_lora": json.dumps(getattr(model.config, "llm_lora", None) or None, sort_keys=True)}  # fmt: skip
    partial = path.with_name(f".{path.name}.partial")
    save_file(trained_tensors(model), str(partial), metadata=metadata)
    respect_umask(partial)
    os.replace(partial, path)


def respect_umask(path: Path) -> None:
    """Give a file the mode a plain open() gives (0666 less the umask, 0644 under umask 022):
    safetensors writes its files 0600, so a checkpoint would be unreadable by the group or the
    service meant to load it, unlike every other file of the run."""
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    """The process umask, read where Linux shows it (setting it to read it back is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _trained_metadata(path: Path) -> dict[str, str] | None:
    """The metadata of a file `save_trained` wrote, else None."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
    except Exception:  # not safetensors at all: read_state_dict reports it
        return None
    return metadata if metadata.get("format") == TRAINED_FORMAT else None


def _trained_file(path: Path) -> Path:
    """The weights file of a `malmm train` run folder, or `path` itself."""
    if path.is_dir():
        if not (path / TRAINED_WEIGHTS).is_file():
            raise CheckpointError(f"{path} is a folder without {TRAINED_WEIGHTS}: is it a `malmm train` run?")
        return path / TRAINED_WEIGHTS
    return path


def _stored(path: str | Path, key: str) -> Any:
    """A setting a `malmm train` file's metadata holds (JSON); None for another file."""
    path = _trained_file(Path(path))
    metadata = _trained_metadata(path) if path.is_file() else None
    return json.loads(metadata.get(key, "null")) if metadata else None


def checkpoint_temporal(path: str | Path) -> dict | None:
    """The temporal module settings a checkpoint was trained with (None: no module, or not a
    `malmm train` file), so that a loader can give the model that module before loading."""
    return _stored(path, "temporal")


def checkpoint_time_aware(path: str | Path) -> str | None:
    """The wording of time-aware frames a checkpoint was trained with (None: trained without, or
    not a `malmm train` file, as MA-LMM's released weights), so that a loader reads frames as it did."""
    return _stored(path, "time_aware")


def checkpoint_llm_lora(path: str | Path) -> dict | None:
    """The LLM adapter's settings a checkpoint holds (rank, alpha, targets; None: no adapter, or
    not a `malmm train` file), so that a loader can add that adapter before loading."""
    return _stored(path, "llm_lora")


def describe_temporal(settings: dict | None) -> str:
    if not settings:
        return "none"
    sizes = ", ".join(f"{key} {value}" for key, value in settings.items() if key != "kind")
    return f"{settings['kind']} ({sizes})"


def _check_part(model: nn.Module, path: Path, stored: dict | None, part: str) -> None:
    """Refuse a file whose temporal module or LLM adapter (`part`: "temporal" or "llm_lora") is not
    the model's, one where the other has none included (see the module docstring)."""
    ours = getattr(model.config, part, None) or None
    if (stored or None) != ours:
        what, describe = _PARTS[part]
        raise CheckpointError(
            f"{path} has {what} {describe(stored)}, the model has {what} {describe(ours)}: build the model with "
            "the file's (Malmm.from_pretrained(..., checkpoint=...) does it) or load a file trained with this one"
        )


_PARTS = {"temporal": ("temporal module", describe_temporal), "llm_lora": ("LLM adapter", describe_llm_lora)}


def load_checkpoint(model: nn.Module, path: str | Path) -> CheckpointReport:
    """Load a `malmm train` run (its folder or file) or an MA-LMM LAVIS checkpoint into `model`."""
    path = _trained_file(Path(path))
    metadata = _trained_metadata(path) if path.is_file() else None
    if metadata is None:
        if path.is_file():
            _check_part(model, path, None, "temporal")  # LAVIS checkpoints have no temporal module
            _check_part(model, path, None, "llm_lora")  # nor an LLM adapter
        return load_lavis_checkpoint(model, path)
    expected = base_signature(model.config)
    signature = json.loads(metadata.get("base_signature", "{}"))
    if signature != expected:
        differ = ", ".join(f"{k} {signature.get(k)} vs {v}" for k, v in expected.items() if signature.get(k) != v)
        raise CheckpointError(
            f"{path} was trained on another base model ({metadata.get('base_model')}): {differ}; "
            "load it with that --model"
        )
    _check_part(model, path, json.loads(metadata.get("temporal", "null")), "temporal")
    _check_part(model, path, json.loads(metadata.get("llm_lora", "null")), "llm_lora")
    state = read_state_dict(path)
    missing = [name for name, _ in model.named_parameters() if name.startswith(TRAINED_PREFIXES) and name not in state]
    if missing:
        raise CheckpointError(f"{path} lacks {len(missing)} trained tensors ({_preview(missing, 3)}): it is incomplete")
    llm_lora = getattr(model.config, "llm_lora", None)
    adapter = {name: value for name, value in state.items() if name.startswith(LLM)} if llm_lora else {}
    try:
        loaded = load_llm_adapter(model, adapter, str(path)) if llm_lora else []
    except LoraError as error:
        raise CheckpointError(str(error)) from error
    report = _load_named(model, {name: value for name, value in state.items() if name not in adapter}, path)
    report.loaded += loaded
    return report
