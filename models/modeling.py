"""MA-LMM as a transformers model: InstructBLIP plus a frame position table and a memory step.

`MalmmForConditionalGeneration` is `InstructBlipForConditionalGeneration` with one extra
parameter, `frame_position_embedding` ([max_num_frames, vision hidden size], MA-LMM's `image_pe`).
Every InstructBLIP checkpoint in Hugging Face format loads into it unchanged (`from_pretrained`,
quantization configs and device maps included); the table then starts at zero, which is MA-LMM's
own initialisation, so zero-shot use is InstructBLIP reading frames through the memory bank.

Where a frame goes: pixels -> `vision_features` (frozen ViT, its post-LayerNorm = MA-LMM's
`ln_vision`) -> `step` (+ frame position, Q-Former with memory, see qformer.py) -> after the last
frame, `language_inputs` (projection to the LLM width) -> generation.py.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn
from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration

from models.memory import MemoryState
from models.qformer import qformer_step

DEFAULT_MAX_NUM_FRAMES = 120  # rows of MA-LMM's frame position table


def max_num_frames(config: InstructBlipConfig) -> int:
    return int(getattr(config, "max_num_frames", DEFAULT_MAX_NUM_FRAMES))


def frame_position(table: torch.Tensor, index: int, total_frames: int | None = None) -> torch.Tensor:
    """The position embedding [C] of frame `index` (0-based) from a table of R rows [R, C].

    MA-LMM trains frame t on row t. The policy for videos longer than the table:
    - total_frames unknown or at most R: row `index` (the reference); frames past the last row
      reuse the last row.
    - total_frames > R: the table is stretched over the video: frame t sits at fractional row
      t * (R - 1) / (total_frames - 1), linearly interpolated between its two neighbours, so the
      first frame is row 0, the last is row R-1 and order is kept. (The reference crashes here.)
    A position only depends on the frame index and the planned total, never on frames read, so
    the output after any frame stays readable online.
    """
    rows = table.shape[0]
    if index < 0:
        raise ValueError(f"frame index must be >= 0, got {index}")
    if total_frames is None or total_frames <= rows:
        return table[min(index, rows - 1)]
    position = min(index * (rows - 1) / (total_frames - 1), rows - 1)
    low = math.floor(position)
    high = min(low + 1, rows - 1)
    weight = position - low
    return table[low] * (1 - weight) + table[high] * weight


class MalmmForConditionalGeneration(InstructBlipForConditionalGeneration):
    """InstructBLIP with MA-LMM's frame positions and memory-bank step (see module docstring)."""

    # A plain InstructBLIP checkpoint has no frame table: it is expected to be missing.
    _keys_to_ignore_on_load_missing: ClassVar[list[str]] = [r"frame_position_embedding\.weight"]

    def __init__(self, config: InstructBlipConfig):
        super().__init__(config)
        self.frame_position_embedding = nn.Embedding(max_num_frames(config), config.vision_config.hidden_size)
        nn.init.zeros_(self.frame_position_embedding.weight)

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is getattr(self, "frame_position_embedding", None):
            nn.init.zeros_(module.weight)  # MA-LMM's initialisation: no position until trained

    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen ViT features after its final LayerNorm: [F, 3, H, W] -> [F, N, C].

        Frames are independent here, so any number can be encoded in one batch.
        """
        vision = self.vision_model
        pixel_values = pixel_values.to(vision.embeddings.patch_embedding.weight.device)
        pixel_values = pixel_values.to(vision.embeddings.patch_embedding.weight.dtype)
        return vision(pixel_values=pixel_values).last_hidden_state

    def new_memory(
        self,
        instruction_ids: torch.Tensor,
        instruction_mask: torch.Tensor | None = None,
        memory_bank_length: int = 10,
        total_frames: int | None = None,
    ) -> MemoryState:
        """An empty memory for a batch of videos read with this Q-Former instruction [B, Lt]."""
        device = self.query_tokens.device
        if instruction_mask is None:
            instruction_mask = torch.ones_like(instruction_ids)
        return MemoryState(
            instruction_ids=instruction_ids.to(device),
            instruction_mask=instruction_mask.to(device),
            memory_bank_length=memory_bank_length,
            total_frames=total_frames,
        )

    def step(self, state: MemoryState, features: torch.Tensor) -> tuple[torch.Tensor, MemoryState]:
        """Read the next frame of every video in the batch into `state` (updated in place).

        features: [B, N, C] from `vision_features`. Returns the Q-Former query output [B, NQ, D]
        (what the LLM would see if the video ended here) and the state.
        """
        table = self.frame_position_embedding.weight
        position = frame_position(table, state.frames_seen, state.total_frames)
        frame = features.to(table.device) + position.to(features.dtype)  # added to all N tokens
        return qformer_step(self.qformer, self.query_tokens, state, frame), state

    def language_inputs(self, query_output: torch.Tensor) -> torch.Tensor:
        """Q-Former output [B, NQ, D] -> LLM input embeddings [B, NQ, H]."""
        projection = self.language_projection
        return projection(query_output.to(projection.weight.device, projection.weight.dtype))
