"""One MA-LMM step of the InstructBLIP Q-Former: read one frame while attending to the memory.

This runs transformers' own Q-Former modules (`InstructBlipQFormerModel`: its embeddings, linear
projections, output LayerNorms and feed-forward blocks, with their weights) and only spells out
the attention arithmetic, because MA-LMM changes what the keys and values are:

- every cross-attention layer attends to [visual bank ; current frame] instead of the frame alone;
- every self-attention layer takes keys and values from [its query bank ; current input], queries
  from the current input only, and repeats the instruction padding mask once per remembered step.

The visual bank does not depend on the instruction: a video read by several readers (questions)
has one visual bank, and cross-attention reads it for all of them at once, their queries side by
side in one sequence (attention is computed per query, so this is the same arithmetic).

After the step each bank gains the current entry and is compressed back to the bank length. The
banks also keep every reading layer's keys and values of their entries, so a frame costs the
projection of that frame only (the reference re-projects the whole bank in every layer, per
frame), and they are updated in place (memory.py), so nothing is copied as the bank fills. A step
with gradients (the last of a training clip) projects the bank again, as the reference does, so
that the key and value weights learn from every remembered entry.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from transformers.models.instructblip.modeling_instructblip import (
    InstructBlipQFormerAttention,
    InstructBlipQFormerModel,
)

from models.memory import MemoryBank, MemoryState
from models.time_aware import TimeTokens


def project(attention: InstructBlipQFormerAttention, states: torch.Tensor) -> torch.Tensor:
    """Keys and values of `states` [B, T, C] for one attention layer, per head: [B, 2H, T, d]
    (the H key heads, then the H value heads), the layout `attend` and the banks use."""
    heads = attention.attention
    keys_values = torch.cat([heads.key(states), heads.value(states)], dim=-1)  # [B, T, 2D]
    return keys_values.view(*states.shape[:2], 2 * heads.num_attention_heads, -1).transpose(1, 2)


def attend(
    attention: InstructBlipQFormerAttention,
    hidden: torch.Tensor,
    keys_values: torch.Tensor,
    context_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-head attention of `hidden` [B, L, D] over projected `keys_values` [B, 2H, K, d], then
    the residual block (dense + residual + LayerNorm).

    context_mask: [B, K] bool, True where a key may be attended to (None: all).
    """
    heads = attention.attention
    num_heads, head_size = heads.num_attention_heads, heads.attention_head_size
    query = heads.query(hidden).view(*hidden.shape[:2], num_heads, head_size).transpose(1, 2)  # [B, H, L, d]
    key, value = keys_values.to(query.dtype).chunk(2, dim=1)  # [B, H, K, d] each; banks hold float32
    mask = None if context_mask is None else context_mask[:, None, None, :]  # [B, 1, 1, K]
    dropout = heads.attention_dropout if heads.training else 0.0  # BERT's attention dropout, in training
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout)
    out = out.transpose(1, 2).reshape(hidden.shape[0], hidden.shape[1], num_heads * head_size)  # [B, L, D]
    return attention.output(out, hidden)


def remember(
    bank: MemoryBank | None,
    length: int,
    entry: torch.Tensor,
    readers: list[InstructBlipQFormerAttention],
    evict: str,
    mask: torch.Tensor | None = None,
) -> tuple[MemoryBank, list[torch.Tensor]]:
    """Add this step (entry [B, T, C]) to `bank`, made on the first step, with its keys and values
    for each attention layer in `readers`, and return each reader's keys and values over
    [bank ; this step]: [B, 2H, (S+1)T, d] each. mask [B, T]: this step's real tokens, when they
    differ from step to step (the bank then keeps them: `MemoryBank.key_mask`).

    With gradients (training), as MA-LMM trains: the bank keeps detached copies, so only the
    current step is differentiated and earlier steps can run without any graph; and the keys
    and values of every remembered entry are projected again from the entries by the trained
    weights (MA-LMM's `key(cat(bank, current))`), so those weights learn from the whole bank,
    not only from this step.
    """
    tracked = entry.requires_grad
    with torch.no_grad() if tracked else contextlib.nullcontext():
        projections = tuple(project(attention, entry) for attention in readers)  # [B, 2H, T, d] each
    stored = entry.detach() if tracked else entry
    if bank is None:
        bank = MemoryBank(length, stored, projections, evict, mask)
    else:
        bank.append(stored, projections, mask)
    if tracked:
        remembered = bank.entries_through(entry)  # [B, (S+1)T, C], this step's entry live
        return bank, [project(attention, remembered) for attention in readers]
    return bank, [bank.context(i) for i in range(len(readers))]


def qformer_step(
    qformer: InstructBlipQFormerModel,
    query_tokens: torch.Tensor,
    state: MemoryState,
    frame: torch.Tensor,
    time: TimeTokens | None = None,
) -> torch.Tensor:
    """Read one frame into `state` (updated in place). frame: [V, N, C] vision features of each
    video with the frame position already added. Returns the Q-Former output at the query
    positions of every reader [R, NQ, D] (R = V x readers per video).

    time: each reader's time sentence for this frame [R, K] (time-aware frames, time_aware.py),
    read before the instruction: the text is then [time ; instruction], Lt = K + the instruction's
    length, and its padding changes from frame to frame, so the query banks keep each step's.

    Only the current frame and the current input are projected to keys and values: the banks
    keep theirs, and attention reads them where they are.
    """
    state.start_step()
    batch, videos = state.batch_size, state.videos
    if frame.shape[0] != videos:
        raise ValueError(f"{frame.shape[0]} frames for a state of {videos} videos")
    evict = "oldest" if state.strategy == "fifo" else "merge"
    queries = query_tokens.expand(batch, -1, -1)  # [B, NQ, D]
    num_queries = queries.shape[1]
    text_ids, text_mask = state.instruction_ids, state.instruction_mask  # [B, Lt]
    if time is not None:
        text_ids = torch.cat([time.ids.to(text_ids.device), text_ids], dim=1)
        text_mask = torch.cat([time.mask.to(text_mask.device), text_mask], dim=1)
    hidden = qformer.embeddings(input_ids=text_ids, query_embeds=queries)  # [B, NQ+Lt, D]
    query_mask = torch.ones(batch, num_queries, dtype=torch.bool, device=hidden.device)
    token_mask = torch.cat([query_mask, text_mask.to(hidden.device).bool()], dim=1)  # [B, NQ+Lt]
    step_mask = None if time is None else token_mask  # kept per slot by the query banks
    length = state.memory_bank_length if state.banked else 1  # without banks: room for this frame only

    frame = frame.to(hidden.device)
    cross_layers = [layer for layer in qformer.encoder.layer if layer.has_cross_attention]
    # Every cross-attention layer reads [visual bank ; current frame]: [B, 2H, (S+1)N, d] each.
    readers = [layer.crossattention for layer in cross_layers]
    state.visual, contexts = remember(state.visual, length, frame, readers, evict)
    visual_contexts = iter(contexts)

    for number, layer in enumerate(qformer.encoder.layer):
        known = state.queries[number] if number < len(state.queries) else None
        inputs, (context,) = remember(
            known, length, hidden, [layer.attention], evict, step_mask
        )  # [B, 2H, (S+1)(NQ+Lt), d]
        if known is None:
            state.queries.append(inputs)
        # keys and values over [remembered inputs ; current input], the padding mask once per step
        context_mask = token_mask.repeat(1, len(inputs)) if state.padded else None  # none: every key counts
        if step_mask is not None:  # each step's own padding (time-aware frames)
            context_mask = inputs.key_mask()
        attended = attend(layer.attention, hidden, context, context_mask)
        inputs.compress()

        # Contiguous parts: a linear layer on a strided 3-D view runs as a slower batched matmul.
        query_part = attended[:, :num_queries].contiguous()
        if layer.has_cross_attention:  # each video's readers side by side: [V, readers x NQ, D]
            side_by_side = query_part.view(videos, -1, query_part.shape[-1])
            query_part = attend(layer.crossattention, side_by_side, next(visual_contexts)).view_as(query_part)
        query_out = layer.output_query(layer.intermediate_query(query_part), query_part)
        text_part = attended[:, num_queries:].contiguous()
        text_out = layer.output(layer.intermediate(text_part), text_part)
        hidden = torch.cat([query_out, text_out], dim=1)

    state.visual.compress()
    state.frames_seen += 1
    return hidden[:, :num_queries]
