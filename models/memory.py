"""The bounded, compressed memory of MA-LMM: what one video leaves behind as it is read.

A memory bank keeps one slot per remembered step, each slot a set of N tokens. When the bank
holds more slots than its length, the two temporally adjacent slots that are most alike are merged
(separately for every token position), so the bank never grows past its length however long the
video is. Merging is a mean weighted by how many original frames each slot already stands for, so
a slot that absorbed ten frames is not outvoted by one new frame.

Two forms of the same computation:
- `compress_slots` is the definition, on plain tensors in time order (what the reference does);
- `MemoryBank` does it in place, in fixed buffers, at a cost per frame that does not grow with
  the bank: attention does not depend on the order of its keys (each slot already carries its
  frame position), so slots need not move. A merge writes one slot per token position, frees the
  other for the next frame, and a per-token `order` index keeps the temporal neighbours; the
  similarity of each neighbouring pair is kept and only the pairs next to a merge are measured
  again. Tests check that both forms agree exactly.

Nothing here is stored on a module: a `MemoryState` belongs to one video (or one batch of videos).

Memory strategies (`STRATEGIES`), one seam for MA-LMM and the baselines it is compared with:
- "malmm": the merging banks above (the default);
- "fifo": the same banks, but a full bank drops its oldest step instead of merging;
- "avgpool": no bank; the LLM reads the mean of every frame's Q-Former output;
- "concat": no bank; the LLM reads the Q-Former outputs of every frame, one after the other
  (grows with the video, so it refuses more frames than `memory_bank_length`);
- "none": no bank; the LLM reads the last frame's Q-Former output (MA-LMM's no-memory ablation).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from models.presets import MEMORY_STRATEGIES as STRATEGIES
from models.temporal import select_state, state_tensors

if TYPE_CHECKING:
    from transformers import DynamicCache

BANKED = ("malmm", "fifo")  # the strategies whose Q-Former reads each frame through memory banks


def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity over the last dimension, in float32: in float16 the dot products and norms
    of 1408-wide features can overflow."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1)


def most_similar_adjacent(slots: torch.Tensor) -> torch.Tensor:
    """Index i of the adjacent pair (i, i+1) with the highest cosine similarity, per token position.

    slots: [B, S, N, C] with S >= 2. Returns [B, N] (long); ties resolve to the earliest pair.
    """
    return similarity(slots[:, :-1], slots[:, 1:]).argmax(dim=1)  # [B, S-1, N] -> [B, N]


def blend(a: torch.Tensor, b: torch.Tensor, size_a: torch.Tensor, size_b: torch.Tensor) -> torch.Tensor:
    """Size-weighted mean of two slots. a, b: [B, G, N, F]; sizes [B, 1, N] (the same for every G).

    Weights and arithmetic are float32 at least, whatever the slots' dtype: in float16 a frame
    merged into a slot of 3,000 frames would weigh 0.000488 instead of 0.000333, and nothing
    from about 4,000 frames on. (Banks store float32 for that reason, see `storage_dtype`.)
    """
    dtype = torch.promote_types(a.dtype, torch.float32)
    weight_a = (size_a.to(dtype) / (size_a.to(dtype) + size_b.to(dtype))).unsqueeze(-1)  # [B, 1, N, 1]
    return torch.lerp(b.to(dtype), a.to(dtype), weight_a).to(a.dtype)  # b + weight_a (a - b)


def storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """What a bank stores entries of `dtype` in: float32 at least, so that a slot standing for
    thousands of frames still moves when one more frame is merged into it (a float16 slot near 1.0
    cannot move by less than 0.0005, and one new frame among 5,000 moves it by 0.0002)."""
    return torch.promote_types(dtype, torch.float32)


def _gather_slot(tensor: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """tensor [B, S, N, F], slot [B, K, N] (long) -> [B, K, N, F]: slot[b, k, n] of each token position."""
    return tensor.gather(1, slot.unsqueeze(-1).expand(-1, -1, -1, tensor.shape[-1]))


def compress_slots(slots: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One merge, by definition: slots [B, S, N, C] in time order, sizes [B, S, N] -> S-1 slots.

    For each token position, the most similar adjacent pair (i, i+1) becomes one slot, the
    size-weighted mean of the two, and the sizes add up.
    """
    index = most_similar_adjacent(slots).unsqueeze(1)  # [B, 1, N]
    merged = blend(_gather_slot(slots, index), _gather_slot(slots, index + 1),
                   sizes.gather(1, index), sizes.gather(1, index + 1))  # fmt: skip
    keep_left = torch.arange(slots.shape[1] - 1, device=slots.device).view(1, -1, 1) < index  # [B, S-1, N]
    out = torch.where(keep_left.unsqueeze(-1), slots[:, :-1], slots[:, 1:])  # slot i+1 removed
    out.scatter_(1, index.unsqueeze(-1).expand(-1, -1, -1, slots.shape[-1]), merged)
    out_sizes = torch.where(keep_left, sizes[:, :-1], sizes[:, 1:])
    out_sizes.scatter_(1, index, sizes.gather(1, index) + sizes.gather(1, index + 1))
    return out, out_sizes


class MemoryBank:
    """Past steps of one stream, in fixed buffers of `length + 1` slots, updated in place.

    Buffers (physical slots p, token positions n), in float32 at least (`storage_dtype`):
    - `slots` [B, P, N, C]: the remembered entries; similarity for merging is measured on these.
    - `projections`: for each attention layer that reads this bank, the keys and values of the
      slots, per head: [B, G, P, N, d] (G = 2 x heads groups of d features, keys then values),
      computed once per frame and merged with the slots' weights (equal to projecting the merged
      slots: the projections are affine and the weights sum to one). Head-major, so that the
      keys of one head over all remembered tokens are one contiguous block for attention.
    - `sizes` [B, P, N]: how many original frames each slot stands for.
    - `order` [B, P, N]: the physical slot of the k-th oldest remembered step, per token position.
    - `pair_similarity` [B, P - 1, N]: similarity of temporal neighbours k and k+1.
    - `mask` [B, P, N, 1] (only a bank given masks: a query bank of time-aware frames, whose
      padding differs from step to step): how much of each slot was a real token, merged with
      the slots' weights; a key counts where it is above 0 (`key_mask`).
    The physical slots in use are always 0 .. len(self) - 1 until the bank first overflows, and
    all of them from then on, so `context` is a view, never a copy. Slots are read and written a
    token row at a time (`index_select`/`index_copy_` on a flat view of each buffer), which moves
    whole rows instead of computing an index for every element as `gather`/`scatter` would.
    """

    def __init__(
        self,
        length: int,
        entry: torch.Tensor,
        projections: tuple[torch.Tensor, ...] = (),
        evict: str = "merge",
        mask: torch.Tensor | None = None,
    ):
        """A bank of `length` slots holding one step. entry: [B, N, C]; projections: [B, G, N, d] each;
        mask [B, N]: which tokens of the entry are real (given: every step gives its own).

        evict: what a full bank does with one step too many: "merge" the most similar neighbours
        (MA-LMM) or drop the "oldest" (FIFO).
        """
        if length < 1:
            raise ValueError(f"memory bank length must be at least 1, got {length}")
        if evict not in ("merge", "oldest"):
            raise ValueError(f"evict must be 'merge' or 'oldest', got {evict!r}")
        batch, tokens = entry.shape[:2]
        self.length = length
        self.evict = evict
        capacity = length + 1  # one more than the bank keeps: the current step, until compressed
        self.slots = entry.new_empty(batch, capacity, tokens, entry.shape[-1], dtype=storage_dtype(entry.dtype))
        self.projections = tuple(
            p.new_empty(batch, p.shape[1], capacity, tokens, p.shape[-1], dtype=storage_dtype(p.dtype))
            for p in projections
        )
        self.sizes = torch.zeros(batch, capacity, tokens, dtype=torch.float32, device=entry.device)
        self.mask = None if mask is None else self.sizes.new_zeros(batch, capacity, tokens, 1)
        self.order = torch.zeros(batch, capacity, tokens, dtype=torch.long, device=entry.device)
        self.pair_similarity = torch.zeros(batch, capacity - 1, tokens, dtype=torch.float32, device=entry.device)
        self.free = torch.zeros(batch, 1, tokens, dtype=torch.long, device=entry.device)  # where the next step goes
        self.newest = self.free  # where the last step went
        self.used = 0
        # Row of (b, g, slot 0, n) in a buffer's flat view, by number of groups (see `_rows`).
        self._first_rows = {b.shape[1]: self._slot_zero_rows(b) for b in self._buffers()}
        self.append(entry, projections, mask)

    def __len__(self) -> int:
        return self.used

    def _buffers(self) -> tuple[torch.Tensor, ...]:
        """Every per-slot buffer as [B, G, P, N, d] (the slots are one group of C features)."""
        masks = () if self.mask is None else (self.mask.unsqueeze(1),)
        return (self.slots.unsqueeze(1), *self.projections, *masks)

    @staticmethod
    def _slot_zero_rows(buffer: torch.Tensor) -> torch.Tensor:
        """[B, G, N]: the row of `buffer.view(-1, d)` holding slot 0 of group g, token n."""
        batch, groups, capacity, tokens, _ = buffer.shape
        group = torch.arange(batch * groups, device=buffer.device).view(batch, groups, 1)
        return group * (capacity * tokens) + torch.arange(tokens, device=buffer.device)

    def _rows(self, buffer: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Rows of `buffer.view(-1, d)` holding physical slot `slot` [B, 1, N] of every group: [B*G*N]."""
        return (self._first_rows[buffer.shape[1]] + slot * buffer.shape[3]).flatten()

    def _read(self, buffer: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Slot `slot` [B, 1, N] of every token position: [B, G, N, d]."""
        rows = buffer.view(-1, buffer.shape[-1]).index_select(0, self._rows(buffer, slot))
        return rows.view(buffer.shape[0], buffer.shape[1], buffer.shape[3], buffer.shape[4])

    def _write(self, buffer: torch.Tensor, slot: torch.Tensor, value: torch.Tensor) -> None:
        """Write `value` [B, G, N, d] into slot `slot` [B, 1, N] of every token position."""
        rows = self._rows(buffer, slot)
        buffer.view(-1, buffer.shape[-1]).index_copy_(0, rows, value.reshape(rows.shape[0], -1).to(buffer.dtype))

    def append(
        self, entry: torch.Tensor, projections: tuple[torch.Tensor, ...] = (), mask: torch.Tensor | None = None
    ) -> None:
        """Remember one more step (at most one beyond `length`, until `compress`)."""
        if self.used > self.length:
            raise RuntimeError("compress the bank before adding another step")
        if len(projections) != len(self.projections):
            raise ValueError(f"bank keeps {len(self.projections)} projections, got {len(projections)}")
        if (mask is None) != (self.mask is None):
            raise ValueError("a bank made with token masks takes one at every step, and one made without none")
        masks = () if mask is None else (mask[:, None, :, None],)  # [B, 1, N, 1]
        where = self.free  # [B, 1, N]
        for buffer, value in zip(self._buffers(), (entry.unsqueeze(1), *projections, *masks), strict=True):
            self._write(buffer, where, value)
        self.sizes.scatter_(1, where, 1.0)
        if self.used and self.evict == "merge":  # the newest neighbour pair: previous newest step and this one
            newest = self._read(self.slots.unsqueeze(1), self.order[:, self.used - 1 : self.used])
            self.pair_similarity[:, self.used - 1 : self.used] = similarity(newest, entry.unsqueeze(1))  # [B, 1, N]
        self.order[:, self.used : self.used + 1] = where
        self.newest = where
        self.used += 1
        if self.used < self.slots.shape[1]:  # still filling up: slots are taken in turn
            self.free = torch.full_like(self.free, self.used)

    def compress(self) -> None:
        """If the bank holds more than `length` steps, merge the most similar neighbours (per token)."""
        if self.used <= self.length:
            return
        if self.evict == "oldest":
            self._drop_oldest()
            return
        pairs = self.used - 1
        index = self.pair_similarity[:, :pairs].argmax(dim=1, keepdim=True)  # [B, 1, N], earliest on ties
        first, second = self.order.gather(1, index), self.order.gather(1, index + 1)  # physical slots
        size_a, size_b = self.sizes.gather(1, first), self.sizes.gather(1, second)
        for buffer in self._buffers():
            merged = blend(self._read(buffer, first), self._read(buffer, second), size_a, size_b)
            self._write(buffer, first, merged)
        self.sizes.scatter_(1, first, size_a + size_b)
        self.free = second

        # Temporal neighbours after the merge: step i+1 leaves the order; pairs (k, k+1) before
        # the merge keep their similarity, later ones shift down by one; the merged step's two
        # pairs are measured again.
        slot_left = torch.arange(self.order.shape[1] - 1, device=index.device).view(1, -1, 1) <= index
        self.order[:, :-1] = torch.where(slot_left, self.order[:, :-1], self.order[:, 1:])
        pair_left = torch.arange(pairs - 1, device=index.device).view(1, -1, 1) < index
        kept = self.pair_similarity[:, :pairs]
        self.pair_similarity[:, : pairs - 1] = torch.where(pair_left, kept[:, :-1], kept[:, 1:])
        self.used -= 1
        if self.used > 1:
            self._remeasure(index - 1, index > 0)  # (step before, merged step), if any
            self._remeasure(index, index < self.used - 1)  # (merged step, step after), if any

    def _drop_oldest(self) -> None:
        """FIFO: the oldest step leaves; its slot takes the next one."""
        self.free = self.order[:, :1].clone()
        self.order[:, :-1] = self.order[:, 1:].clone()
        self.used -= 1

    def _remeasure(self, pair: torch.Tensor, where: torch.Tensor) -> None:
        """Measure again the similarity of neighbour pairs `pair` [B, 1, N], at positions where `where`."""
        pair = pair.clamp(0, self.used - 2)
        slots = self.slots.unsqueeze(1)
        left = self._read(slots, self.order.gather(1, pair))
        right = self._read(slots, self.order.gather(1, pair + 1))
        value = torch.where(where, similarity(left, right), self.pair_similarity.gather(1, pair))
        self.pair_similarity.scatter_(1, pair, value)

    def context(self, layer: int) -> torch.Tensor:
        """Keys and values of every remembered step for one reading layer: [B, G, used * N, d] (a view)."""
        buffer = self.projections[layer][:, :, : self.used]
        return buffer.reshape(*buffer.shape[:2], -1, buffer.shape[-1])

    def key_mask(self) -> torch.Tensor | None:
        """Which keys of `context` (and `entries_through`) count: [B, used * N] bool, or None when
        the bank keeps no masks."""
        if self.mask is None:
            return None
        return self.mask[:, : self.used, :, 0].reshape(self.mask.shape[0], -1) > 0

    def entries_through(self, entry: torch.Tensor) -> torch.Tensor:
        """Every remembered entry, slot-major [B, used * N, C], with the newest step taken from
        `entry` [B, N, C] instead of the bank's detached copy, so that gradients reach it."""
        slots = self.slots[:, : self.used]  # the slots in use (see the class docstring)
        remembered = slots.reshape(slots.shape[0], -1, slots.shape[-1])
        batch, tokens, width = entry.shape
        where = self.newest[:, 0] * tokens + torch.arange(tokens, device=remembered.device)  # [B, N]
        return remembered.scatter(1, where[:, :, None].expand(batch, tokens, width), entry.to(remembered.dtype))

    def in_time_order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(slots [B, used, N, C], sizes [B, used, N]) oldest first, as `compress_slots` keeps them."""
        order = self.order[:, : self.used]
        return _gather_slot(self.slots, order), self.sizes.gather(1, order)

    def tensors(self) -> list[torch.Tensor]:
        masks = [] if self.mask is None else [self.mask]
        return [self.slots, *self.projections, *masks, self.sizes, self.order, self.pair_similarity, self.free]

    def select(self, rows: torch.Tensor) -> MemoryBank:
        """A bank of some batch rows only (a copy)."""
        chosen = copy.copy(self)
        for name in ("slots", "sizes", "order", "pair_similarity", "free", "newest"):
            setattr(chosen, name, getattr(self, name).index_select(0, rows.to(self.slots.device)))
        if self.mask is not None:
            chosen.mask = self.mask.index_select(0, rows.to(self.mask.device))
        chosen.projections = tuple(p.index_select(0, rows.to(p.device)) for p in self.projections)
        chosen._first_rows = {b.shape[1]: chosen._slot_zero_rows(b) for b in chosen._buffers()}
        return chosen


@dataclass
class MemoryState:
    """Everything MA-LMM remembers about a batch of videos while reading them.

    Rows are readers: one instruction each, `readers_per_video` consecutive rows per video (several
    questions about one video). The visual bank does not depend on the instruction, so it holds
    one row per video, shared by that video's readers; each reader has its own query banks.

    - `instruction_ids`, `instruction_mask` [R, Lt]: the Q-Former instructions (R = videos x
      readers_per_video). Part of the state because the query banks hold their token positions:
      they cannot change mid-video.
    - `visual`: vision features (after the vision LayerNorm, plus the frame position) of past
      frames, one bank [V, ...] shared by every cross-attention layer and every reader of a video.
    - `queries`: one bank [R, ...] per Q-Former layer holding that layer's past inputs (query tokens
      and instruction tokens), which its self-attention reads as extra keys and values.
    - `frames_seen`: frames read so far; `total_frames`: frames the caller plans to read, if
      known, one for all videos or one each (it only affects frame positions past the end of the
      position table).
    - `strategy`: how the past is kept (see STRATEGIES); `pooled`: what the LLM will read for the
      strategies without banks (the running sum of outputs for avgpool, every output for concat).
    - `temporal`: the recurrent state of the model's temporal module, if it has one (models/temporal.py:
      per layer a convolution and an SSM state for each reader's query positions, fixed in size).

    Each step updates the state in place (its buffers are reused, so a frame costs the same however
    long the video); `copy()` it first to read two continuations of the same video. Size is bounded:
    after the first frame it holds the same buffers, of `memory_bank_length + 1` slots, for good
    (concat: buffers of `memory_bank_length` frames, allocated at the first frame).
    """

    instruction_ids: torch.Tensor
    instruction_mask: torch.Tensor
    memory_bank_length: int
    total_frames: int | Sequence[int] | None = None
    strategy: str = "malmm"
    readers_per_video: int = 1
    frames_seen: int = 0
    visual: MemoryBank | None = None
    queries: list[MemoryBank] = field(default_factory=list)
    pooled: torch.Tensor | None = None
    temporal: DynamicCache | None = None
    padded: bool = field(init=False)  # whether any instruction has padding to mask out

    def __post_init__(self) -> None:
        if self.memory_bank_length < 1:
            raise ValueError(f"memory_bank_length must be at least 1, got {self.memory_bank_length}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"memory strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.readers_per_video < 1 or self.instruction_ids.shape[0] % self.readers_per_video:
            raise ValueError(
                f"{self.instruction_ids.shape[0]} instructions do not split into videos of {self.readers_per_video}"
            )
        totals = self.frame_totals()
        if len(totals) != self.videos:
            raise ValueError(f"{len(totals)} frame totals for {self.videos} videos")
        for total in totals:
            if total is not None and total < 1:
                raise ValueError(f"total_frames must be at least 1, got {total}")
            if self.strategy == "concat" and total is not None and total > self.memory_bank_length:
                raise ValueError(self._concat_limit(total))
        self.padded = not bool(self.instruction_mask.all())  # once here, not a device sync per frame

    def _concat_limit(self, frames: int) -> str:
        return (
            f"the concat strategy keeps every frame, at most {self.memory_bank_length} (the memory bank "
            f"length); {frames} frames are more: sample fewer or raise the bank length"
        )

    @property
    def batch_size(self) -> int:
        """Readers (rows of the query banks and of the output)."""
        return self.instruction_ids.shape[0]

    @property
    def videos(self) -> int:
        return self.batch_size // self.readers_per_video

    @property
    def banked(self) -> bool:
        """Whether the Q-Former reads each frame through memory banks (else each frame alone)."""
        return self.strategy in BANKED

    def frame_totals(self) -> list[int | None]:
        """Planned frames of each video (None: unknown)."""
        if self.total_frames is None or isinstance(self.total_frames, int):
            return [self.total_frames] * self.videos
        return list(self.total_frames)

    def start_step(self) -> None:
        """Before a frame: without banks the Q-Former reads it alone; concat has room for it."""
        if self.strategy == "concat" and self.frames_seen >= self.memory_bank_length:
            raise ValueError(self._concat_limit(self.frames_seen + 1))
        if not self.banked:
            self.visual, self.queries = None, []

    def language_queries(self, output: torch.Tensor) -> torch.Tensor:
        """What the LLM would read if the video ended after this step: output [R, NQ, D] ->
        [R, T, D] (T = NQ, or NQ x frames read for concat). Call once per step, after it."""
        if self.strategy == "avgpool":
            self.pooled = output.float() if self.pooled is None else self.pooled + output.float()
            return (self.pooled / self.frames_seen).to(output.dtype)
        if self.strategy == "concat":
            rows, tokens, width = output.shape
            if self.pooled is None:
                self.pooled = output.new_empty(rows, self.memory_bank_length * tokens, width)
            start = (self.frames_seen - 1) * tokens
            self.pooled[:, start : start + tokens] = output
            return self.pooled[:, : start + tokens]
        return output

    def select(self, videos: Sequence[int]) -> MemoryState:
        """The state of some of the videos only (their readers and banks), for going on without
        the others (videos of a batch that ended)."""
        rows = [v * self.readers_per_video + r for v in videos for r in range(self.readers_per_video)]
        video_index = torch.tensor(list(videos), device=self.instruction_ids.device)
        row_index = torch.tensor(rows, device=self.instruction_ids.device)
        totals = self.frame_totals()
        chosen = copy.copy(self)
        chosen.instruction_ids = self.instruction_ids.index_select(0, row_index)
        chosen.instruction_mask = self.instruction_mask.index_select(0, row_index)
        chosen.total_frames = [totals[v] for v in videos]
        chosen.visual = None if self.visual is None else self.visual.select(video_index)
        chosen.queries = [bank.select(row_index) for bank in self.queries]
        chosen.pooled = None if self.pooled is None else self.pooled.index_select(0, row_index.to(self.pooled.device))
        if self.temporal is not None:  # one sequence per (reader, query position)
            queries = state_tensors(self.temporal)[0].shape[0] // self.batch_size
            sequences = (row_index[:, None] * queries + torch.arange(queries, device=row_index.device)).flatten()
            chosen.temporal = select_state(self.temporal, sequences)
        chosen.padded = not bool(chosen.instruction_mask.all())
        return chosen

    def copy(self) -> MemoryState:
        """An independent copy, for reading two different continuations of the same video."""
        return copy.deepcopy(self)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the state holds (for measuring its size)."""
        held = [self.instruction_ids, self.instruction_mask]
        for bank in [self.visual, *self.queries]:
            if bank is not None:
                held += bank.tensors()
        if self.pooled is not None:
            held.append(self.pooled)
        return held + state_tensors(self.temporal)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())
