"""Fine-tuning MA-LMM: what is trained, the loss, and the optimiser and schedule MA-LMM uses.

Trained, as MA-LMM trains: the Q-Former (with its text embeddings) and its query tokens, the
language projection, the vision LayerNorm and the frame position table (`TRAINED_PREFIXES`), and
the temporal module if the model has one; or the temporal module alone (`temporal_only`).
The ViT and the LLM stay frozen (but for LoRA adapters on its attention, with `--lora-llm`); the LLM
may be quantized, gradients pass through bitsandbytes' layers to the soft prompt.

A clip goes through the same memory step as at inference (`MalmmForConditionalGeneration.step`):
`read_clip` takes its frames' ViT features before the vision LayerNorm (which is trained, so
cached features must not include it) and steps the memory frame by frame. Both banks are
detached and only the last step's queries reach the LLM, so every step but the last runs without
gradients: the same gradients as keeping a graph for every step, in a fraction of the memory. In
that last step the keys and values of the banks' entries are projected again by the trained
weights, as MA-LMM does (`qformer.remember`).
`answer_loss` is then the LLM's cross-entropy on the target text and end-of-sequence, after
[projected queries][prompt], with query, prompt and padding positions ignored.
With the Q-Former frozen (a temporal module trained alone), `query_outputs` reads a clip's
per-frame Q-Former outputs once, and `temporal_read` trains the module on them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from models.checkpoint import TRAINED_PREFIXES
from models.generation import right_padded
from models.lora import adapter_parameters, llm_adapter_parameters
from models.memory import MemoryState
from models.modeling import MalmmForConditionalGeneration
from models.time_aware import TimeTokens

MAX_PROMPT_TOKENS = 128  # MA-LMM's max_txt_len (the prompt keeps its end)
MAX_TARGET_TOKENS = 256  # MA-LMM's max_output_txt_len (the target keeps its start)
IGNORED = -100  # label of positions without a loss (transformers' convention)


def trainable_parameters(
    model: MalmmForConditionalGeneration, temporal_only: bool = False
) -> list[tuple[str, nn.Parameter]]:
    """Freeze everything but what MA-LMM trains (and the temporal module, if the model has one);
    returns the trained parameters by name. With LoRA adapters in the Q-Former (models/lora.py)
    they are trained instead of the Q-Former. An adapter on the LLM (`lora.add_llm_lora`) is trained
    too, the LLM's own weights frozen. temporal_only: train the temporal module alone (and the LLM's
    adapter, if the model has one), the rest of MA-LMM frozen as it was loaded."""
    if temporal_only and model.temporal is None:
        raise ValueError("temporal_only needs a model with a temporal module (add_temporal)")
    model.requires_grad_(False)
    adapters, llm_adapters = adapter_parameters(model), llm_adapter_parameters(model)

    def trained_here(name: str, parameter: nn.Parameter) -> bool:
        if id(parameter) in llm_adapters:
            return True
        if temporal_only:
            return name.startswith("temporal.")
        if not name.startswith(TRAINED_PREFIXES):
            return False
        return not adapters or not name.startswith("qformer.") or id(parameter) in adapters

    trained = [(name, p) for name, p in model.named_parameters() if trained_here(name, p)]
    for _, parameter in trained:
        parameter.requires_grad_(True)
    return trained


def parameter_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float = 0.05) -> list[dict]:
    """AdamW groups as LAVIS builds them: no weight decay on biases, norms and 1-D parameters."""
    decay, no_decay = [], []
    for name, parameter in named:
        plain = parameter.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()
        (no_decay if plain else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, start_lr: float = 1e-8
) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning rate rising linearly from `start_lr` over `warmup_steps` optimiser steps, then
    a cosine from the base rate to zero at `total_steps`."""
    base = optimizer.param_groups[0]["lr"]
    start = min(start_lr / base, 1.0) if base > 0 else 1.0

    def factor(step: int) -> float:
        if step < warmup_steps:
            return start + (1.0 - start) * step / warmup_steps
        remaining = max(total_steps - warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup_steps, remaining) / remaining))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(name: str, groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """AdamW (0.9, 0.999) as MA-LMM trains, or bitsandbytes' AdamW with 8-bit moments (one of
    models.presets.OPTIMIZERS)."""
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=lr, betas=(0.9, 0.999))
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))


def read_clip(
    model: MalmmForConditionalGeneration,
    state: MemoryState,
    features: torch.Tensor,
    times: Sequence[TimeTokens] | None = None,
) -> torch.Tensor:
    """Read clips of T frames into fresh memories: features [B, T, N, C] (ViT output before the
    vision LayerNorm) -> the last step's query output [B, NQ, D], with gradients through it only.

    With a temporal module, the Q-Former outputs of every frame are collected (the same detached
    memory steps) and the module reads them in one parallel scan over the clip, with gradients
    through all of it: the same output as stepping it frame by frame.

    state: `model.new_memory(...)` for the B clips, with total_frames T. times: for a time-aware
    model, every frame's time sentences (T of them, each [B, K]: `Malmm.time_tokens`).
    """
    norm = model.vision_model.post_layernorm
    frames = features.shape[1]

    def frame(t: int) -> torch.Tensor:
        return norm(features[:, t].to(norm.weight.device, norm.weight.dtype))

    def time(t: int) -> TimeTokens | None:
        return None if times is None else times[t]

    if model.temporal is None:
        with torch.no_grad():  # detached banks: earlier steps add nothing to the gradients
            for t in range(frames - 1):
                model.step(state, frame(t), t, time(t))
        output, _ = model.step(state, frame(frames - 1), frames - 1, time(frames - 1))
        return output
    with torch.no_grad():
        outputs = [model.query_step(state, frame(t), t, time(t)) for t in range(frames - 1)]
    outputs.append(model.query_step(state, frame(frames - 1), frames - 1, time(frames - 1)))
    return temporal_read(model, state, torch.stack(outputs, dim=1))


def temporal_read(model: MalmmForConditionalGeneration, state: MemoryState, outputs: torch.Tensor) -> torch.Tensor:
    """What the LLM reads after a clip whose Q-Former outputs of every frame are `outputs`
    [B, T, NQ, D] (from `query_step`, or cached: with the Q-Former frozen they never change):
    the temporal module's scan over the clip, then the strategy's pooling of its outputs, fed in
    frame order as the steps would have fed them. Returns [B, NQ, D] (concat: [B, NQ x T, D])."""
    scanned = model.temporal.scan(outputs)  # [B, T, NQ, D]
    output = None
    for t in range(outputs.shape[1]):
        state.frames_seen = t + 1  # avgpool and concat pool by frames read so far
        output = state.language_queries(scanned[:, t])
    return output


def query_outputs(
    model: MalmmForConditionalGeneration,
    state: MemoryState,
    features: torch.Tensor,
    times: Sequence[TimeTokens] | None = None,
) -> torch.Tensor:
    """The Q-Former query outputs of every frame of clips [B, T, N, C] (ViT features before the
    vision LayerNorm) read into fresh memories: [B, T, NQ, D], before the temporal module. With the
    Q-Former frozen they never change, so a trainer may compute them once and keep them. times: as
    `read_clip`'s."""
    norm = model.vision_model.post_layernorm
    outputs = [model.query_step(state, norm(features[:, t].to(norm.weight.device, norm.weight.dtype)), t,
                                None if times is None else times[t])
               for t in range(features.shape[1])]  # fmt: skip
    return torch.stack(outputs, dim=1)


def answer_loss(
    model: MalmmForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    query_output: torch.Tensor,
    prompts: list[str],
    targets: list[str],
) -> torch.Tensor:
    """Mean cross-entropy of the LLM over the target tokens (and end-of-sequence) of a batch.

    Decoder-only LLMs (Vicuna) read [queries][prompt][target][padding], as MA-LMM builds it;
    encoder-decoder ones (Flan-T5) encode [queries][prompt] and decode the target.
    """
    inputs, labels = _answer_inputs(model, tokenizer, query_output, prompts, targets)
    return model.language_model(**inputs, labels=labels).loss


def answer_log_likelihoods(
    model: MalmmForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    query_output: torch.Tensor,
    prompts: list[str],
    targets: list[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-likelihood of each target as the whole answer [B], its token count [B]), with
    gradients: the sum of its tokens' log-probabilities, end-of-sequence included, as
    `score_labels` ranks labels at inference. `answer_loss` is minus their sum over the tokens'."""
    inputs, labels = _answer_inputs(model, tokenizer, query_output, prompts, targets)
    logits = model.language_model(**inputs, labels=labels).logits.float()  # T5 decodes the labels shifted
    if model.config.use_decoder_only_language_model:  # position i predicts token i + 1
        logits, labels = logits[:, :-1], labels[:, 1:]
    real = labels != IGNORED
    picked = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * real).sum(dim=1), real.sum(dim=1)


def _answer_inputs(
    model: MalmmForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    query_output: torch.Tensor,
    prompts: list[str],
    targets: list[str],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The LLM's inputs for a batch of targets after [queries][prompt], and their labels (IGNORED
    where no loss is taken)."""
    if not (len(prompts) == len(targets) == query_output.shape[0]):
        raise ValueError(f"{len(prompts)} prompts and {len(targets)} targets for {query_output.shape[0]} clips")
    embed = model.get_input_embeddings()
    device = embed.weight.device
    queries = model.language_inputs(query_output).to(device, embed.weight.dtype)  # [B, NQ, H]
    prompt_ids = [ids[-MAX_PROMPT_TOKENS:] for ids in tokenizer(prompts).input_ids]
    if model.config.use_decoder_only_language_model:
        target_ids = [
            [*tokenizer(text, add_special_tokens=False).input_ids, tokenizer.eos_token_id][:MAX_TARGET_TOKENS]
            for text in targets
        ]
        rows = [p + t for p, t in zip(prompt_ids, target_ids, strict=True)]
        ids, mask = right_padded(rows, tokenizer.pad_token_id or 0, device)
        labels = ids.masked_fill(~mask, IGNORED)
        for row, prompt in enumerate(prompt_ids):
            labels[row, : len(prompt)] = IGNORED
        query_labels = torch.full(queries.shape[:2], IGNORED, dtype=labels.dtype, device=device)
        inputs = {"inputs_embeds": torch.cat([queries, embed(ids)], dim=1),
                  "attention_mask": torch.cat([torch.ones_like(query_labels), mask.long()], dim=1)}  # fmt: skip
        return inputs, torch.cat([query_labels, labels], dim=1)
    target_ids = [ids[:MAX_TARGET_TOKENS] for ids in tokenizer(targets).input_ids]  # T5 appends </s>
    ids, mask = right_padded(prompt_ids, tokenizer.pad_token_id or 0, device)
    labels, real = right_padded(target_ids, 0, device)
    inputs = {"inputs_embeds": torch.cat([queries, embed(ids)], dim=1),
              "attention_mask": torch.cat([torch.ones(queries.shape[:2], dtype=torch.long, device=device),
                                           mask.long()], 1)}  # fmt: skip
    return inputs, labels.masked_fill(~real, IGNORED)
