"""MA-LMM as a transformers model: InstructBLIP plus a frame position table and a memory step.

`MalmmForConditionalGeneration` is `InstructBlipForConditionalGeneration` with one extra
parameter, `frame_position_embedding` ([max_num_frames, vision hidden size], MA-LMM's `image_pe`).
Every InstructBLIP checkpoint in Hugging Face format loads into it unchanged (`from_pretrained`,
quantization configs and device maps included); the table then starts at zero, which is MA-LMM's
own initialisation, so zero-shot use is InstructBLIP reading frames through the memory bank.

Where a frame goes: pixels -> `vision_features` (frozen ViT, its post-LayerNorm = MA-LMM's
`ln_vision`) -> `step` (+ frame position, Q-Former with memory, see qformer.py; then the optional
temporal module, temporal.py) -> after the last frame, `language_inputs` (projection to the LLM
width) -> generation.py.

Time-aware frames (time_aware.py) are on when `config.time_aware` holds a wording (`set_time_aware`;
a `malmm train --time-aware` run carries it): each step then takes every reader's time sentence.

The temporal module exists when `config.temporal` describes one (`add_temporal` sets it, and a
`malmm train --temporal mamba` run carries it); without it the model is MA-LMM, unchanged.

Precision: the ViT and the LLM run in the dtype they are loaded in (half precision on a GPU), the
memory path in float32 on every device: the vision LayerNorm, frame positions, query tokens,
Q-Former, memory banks, temporal module and language projection, as the reference runs them (LAVIS keeps these in
float32 beside a float16 ViT and LLM). Merging thousands of frames into one slot needs it, and it
is cheap: the Q-Former step is about 1% of a frame's FLOPs and 0.2 B of the model's 8 B parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn
from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration, InstructBlipVisionModel

from models.memory import MemoryState
from models.qformer import qformer_step
from models.temporal import TemporalMamba, temporal_settings
from models.time_aware import TimeTokens

DEFAULT_MAX_NUM_FRAMES = 120  # rows of MA-LMM's frame position table
# Modules kept in float32 whatever dtype the model loads in (see the module docstring).
FLOAT32_MODULES = [
    "query_tokens", "qformer", "language_projection", "frame_position_embedding", "post_layernorm", "temporal",
]  # fmt: skip


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
    `index` is the frame's place in the plan (its sample number), not a count of frames read:
    frames skipped or missing leave their rows unused instead of squeezing later frames forward.
    A position only depends on that index and the planned total, so the output after any frame
    stays readable online.
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


def encode_vision(vision: InstructBlipVisionModel, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """[F, 3, H, W] -> [F, N, C]: the ViT in its own dtype, then its final LayerNorm (MA-LMM's
    `ln_vision`) in its own, float32 by the precision policy, so the features come out in float32.
    Frames are independent here, so any number can be encoded in one batch.

    normalize=False stops before the LayerNorm (in the ViT's dtype): training trains it."""
    weight = vision.embeddings.patch_embedding.weight
    hidden = vision.embeddings(pixel_values.to(weight.device, weight.dtype))  # [F, N, C]
    hidden = vision.encoder(inputs_embeds=hidden).last_hidden_state
    if not normalize:
        return hidden
    norm = vision.post_layernorm
    return norm(hidden.to(norm.weight.device, norm.weight.dtype))


class MalmmForConditionalGeneration(InstructBlipForConditionalGeneration):
    """InstructBLIP with MA-LMM's frame positions and memory-bank step (see module docstring)."""

    # A plain InstructBLIP checkpoint has no frame table: it is expected to be missing.
    _keys_to_ignore_on_load_missing: ClassVar[list[str]] = [r"frame_position_embedding\.weight"]
    # transformers loads these in float32 even when asked for float16 or bfloat16.
    _keep_in_fp32_modules_strict: ClassVar[list[str]] = FLOAT32_MODULES

    def __init__(self, config: InstructBlipConfig):
        super().__init__(config)
        self.frame_position_embedding = nn.Embedding(max_num_frames(config), config.vision_config.hidden_size)
        nn.init.zeros_(self.frame_position_embedding.weight)
        settings = getattr(config, "temporal", None)
        self.temporal = TemporalMamba(settings) if settings else None

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is getattr(self, "frame_position_embedding", None):
            nn.init.zeros_(module.weight)  # MA-LMM's initialisation: no position until trained
        if isinstance(module, TemporalMamba):
            module.reset_parameters()  # Mamba's initialisation, gate closed

    def add_temporal(self, kind: str = "mamba", **sizes: int) -> TemporalMamba | None:
        """Give the model a freshly initialised temporal module (models/temporal.py) after the
        Q-Former, recorded in `config.temporal`; "none" removes it. Its gate starts closed, so the
        outputs stay MA-LMM's until it is trained. sizes: see temporal.DEFAULT_SIZES."""
        return self.set_temporal(temporal_settings(kind, self.config.qformer_config.hidden_size, **sizes))

    def set_temporal(self, settings: dict | None) -> TemporalMamba | None:
        """The temporal module of `settings` (`config.temporal` of a model or checkpoint), frozen,
        in float32 on the model's device; None removes it."""
        self.config.temporal = settings
        module = TemporalMamba(settings) if settings else None
        self.temporal = None if module is None else module.to(self.query_tokens.device).requires_grad_(False)
        return self.temporal

    @property
    def time_aware(self) -> str | None:
        """The wording of each frame's time sentence (time_aware.py), None when frames read without it."""
        return getattr(self.config, "time_aware", None) or None

    def set_time_aware(self, wording: str | None) -> None:
        """Read every frame with its time sentence in `wording` ("{time}": its seconds); None: without."""
        if wording is not None and "{time}" not in wording:
            raise ValueError(f"the time wording needs a {{time}} field, got {wording!r}")
        self.config.time_aware = wording

    def keep_memory_path_in_float32(self) -> None:
        """Cast the memory path (FLOAT32_MODULES) to float32 where loading left it lower: a frame
        table missing from the checkpoint is created in the load dtype."""
        if self.query_tokens.dtype != torch.float32:
            self.query_tokens.data = self.query_tokens.data.float()
        for module in (self.qformer, self.language_projection, self.frame_position_embedding,
                       self.vision_model.post_layernorm, self.temporal or nn.Identity()):  # fmt: skip
            if any(p.dtype != torch.float32 for p in module.parameters()):
                module.float()

    def vision_features(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """Frozen ViT features after its final LayerNorm: [F, 3, H, W] -> [F, N, C] (see `encode_vision`)."""
        return encode_vision(self.vision_model, pixel_values, normalize)

    def new_memory(
        self,
        instruction_ids: torch.Tensor,
        instruction_mask: torch.Tensor | None = None,
        memory_bank_length: int = 10,
        total_frames: int | Sequence[int] | None = None,
        *,
        strategy: str = "malmm",
        readers_per_video: int = 1,
    ) -> MemoryState:
        """An empty memory for readers with these Q-Former instructions [R, Lt], `readers_per_video`
        consecutive rows per video (see MemoryState)."""
        device = self.query_tokens.device
        if instruction_mask is None:
            instruction_mask = torch.ones_like(instruction_ids)
        return MemoryState(
            instruction_ids=instruction_ids.to(device),
            instruction_mask=instruction_mask.to(device),
            memory_bank_length=memory_bank_length,
            total_frames=total_frames,
            strategy=strategy,
            readers_per_video=readers_per_video,
        )

    def step(
        self,
        state: MemoryState,
        features: torch.Tensor,
        index: int | Sequence[int] | None = None,
        time: TimeTokens | None = None,
    ) -> tuple[torch.Tensor, MemoryState]:
        """Read the next frame of every video in the batch into `state` (updated in place).

        features: [V, N, C] from `vision_features`, one frame per video. index: where the frame
        sits in the plan of its video's total frames (0-based), one for all videos or one each; by
        default the number of frames read so far, right for a caller that reads every planned
        frame in turn. Returns what the LLM would read if the videos ended here, per reader
        ([R, NQ, D]: the Q-Former query output, after the temporal module if the model has one,
        or for avgpool/concat the mean/concatenation of every step's), and the state.

        time: each reader's time sentence for this frame (time_aware.time_tokens), which a
        time-aware model needs and any other refuses.
        """
        output = self.query_step(state, features, index, time)
        if self.temporal is not None:
            if state.temporal is None:
                state.temporal = self.temporal.new_state()
            output = self.temporal.step(output, state.temporal)  # [R, NQ, D]
        return state.language_queries(output), state

    def query_step(
        self,
        state: MemoryState,
        features: torch.Tensor,
        index: int | Sequence[int] | None = None,
        time: TimeTokens | None = None,
    ) -> torch.Tensor:
        """The Q-Former part of `step` (frame position, then the memory step): the query output
        of every reader [R, NQ, D], before any temporal module."""
        if (time is None) != (self.time_aware is None):
            raise ValueError(
                "this model reads every frame with its time: give each step the frames' times"
                if time is None
                else "this model was not trained with time-aware frames: step without times"
            )
        table = self.frame_position_embedding.weight
        if index is None:
            index = state.frames_seen
        indices = [index] * features.shape[0] if isinstance(index, int) else list(index)
        if len(indices) != features.shape[0]:
            raise ValueError(f"{len(indices)} frame indices for a batch of {features.shape[0]} videos")
        totals = state.frame_totals()
        if len(totals) != len(indices):
            raise ValueError(f"{features.shape[0]} frames for a state of {len(totals)} videos")
        rows = {key: frame_position(table, *key) for key in set(zip(indices, totals, strict=True))}
        position = torch.stack([rows[key] for key in zip(indices, totals, strict=True)])  # [V, C]
        frame = features.to(table.device, table.dtype) + position[:, None, :]  # added to all N tokens
        return qformer_step(self.qformer, self.query_tokens, state, frame, time=time)

    def language_inputs(self, query_output: torch.Tensor) -> torch.Tensor:
        """Q-Former output [B, NQ, D] -> LLM input embeddings [B, NQ, H]."""
        projection = self.language_projection
        return projection(query_output.to(projection.weight.device, projection.weight.dtype))
