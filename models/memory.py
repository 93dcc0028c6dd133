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
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


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
    The physical slots in use are always 0 .. len(self) - 1 until the bank first overflows, and
    all of them from then on, so `context` is a view, never a copy. Slots are read and written a
    token row at a time (`index_select`/`index_copy_` on a flat view of each buffer), which moves
    whole rows instead of computing an index for every element as `gather`/`scatter` would.
    """

    def __init__(self, length: int, entry: torch.Tensor, projections: tuple[torch.Tensor, ...] = ()):
        """A bank of `length` slots holding one step. entry: [B, N, C]; projections: [B, G, N, d] each."""
        if length < 1:
            raise ValueError(f"memory bank length must be at least 1, got {length}")
        batch, tokens = entry.shape[:2]
        self.length = length
        capacity = length + 1  # one more than the bank keeps: the current step, until compressed
        self.slots = entry.new_empty(batch, capacity, tokens, entry.shape[-1], dtype=storage_dtype(entry.dtype))
        self.projections = tuple(
            p.new_empty(batch, p.shape[1], capacity, tokens, p.shape[-1], dtype=storage_dtype(p.dtype))
            for p in projections
        )
        self.sizes = torch.zeros(batch, capacity, tokens, dtype=torch.float32, device=entry.device)
        self.order = torch.zeros(batch, capacity, tokens, dtype=torch.long, device=entry.device)
        self.pair_similarity = torch.zeros(batch, capacity - 1, tokens, dtype=torch.float32, device=entry.device)
        self.free = torch.zeros(batch, 1, tokens, dtype=torch.long, device=entry.device)  # where the next step goes
        self.used = 0
        # Row of (b, g, slot 0, n) in a buffer's flat view, by number of groups (see `_rows`).
        self._first_rows = {b.shape[1]: self._slot_zero_rows(b) for b in self._buffers()}
        self.append(entry, projections)

    def __len__(self) -> int:
        return self.used

    def _buffers(self) -> tuple[torch.Tensor, ...]:
        """Every per-slot buffer as [B, G, P, N, d] (the slots are one group of C features)."""
        return (self.slots.unsqueeze(1), *self.projections)

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

    def append(self, entry: torch.Tensor, projections: tuple[torch.Tensor, ...] = ()) -> None:
        """Remember one more step (at most one beyond `length`, until `compress`)."""
        if self.used > self.length:
            raise RuntimeError("compress the bank before adding another step")
        if len(projections) != len(self.projections):
            raise ValueError(f"bank keeps {len(self.projections)} projections, got {len(projections)}")
        where = self.free  # [B, 1, N]
        for buffer, value in zip(self._buffers(), (entry.unsqueeze(1), *projections), strict=True):
            self._write(buffer, where, value)
        self.sizes.scatter_(1, where, 1.0)
        if self.used:  # the newest neighbour pair: previous newest step and this one
            newest = self._read(self.slots.unsqueeze(1), self.order[:, self.used - 1 : self.used])
            self.pair_similarity[:, self.used - 1 : self.used] = similarity(newest, entry.unsqueeze(1))  # [B, 1, N]
        self.order[:, self.used : self.used + 1] = where
        self.used += 1
        if self.used < self.slots.shape[1]:  # still filling up: slots are taken in turn
            self.free = torch.full_like(self.free, self.used)

    def compress(self) -> None:
        """If the bank holds more than `length` steps, merge the most similar neighbours (per token)."""
        if self.used <= self.length:
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

    def in_time_order(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(slots [B, used, N, C], sizes [B, used, N]) oldest first, as `compress_slots` keeps them."""
        order = self.order[:, : self.used]
        return _gather_slot(self.slots, order), self.sizes.gather(1, order)

    def tensors(self) -> list[torch.Tensor]:
        return [self.slots, *self.projections, self.sizes, self.order, self.pair_similarity, self.free]


@dataclass
class MemoryState:
    """Everything MA-LMM remembers about one video (or one batch of videos) while reading it.

    - `instruction_ids`, `instruction_mask` [B, Lt]: the Q-Former instruction. It is part of the
      state because the query banks hold its token positions: it cannot change mid-video.
    - `visual`: vision features (after the vision LayerNorm, plus the frame position) of past
      frames, one bank shared by every cross-attention layer.
    - `queries`: one bank per Q-Former layer holding that layer's past inputs (query tokens and
      instruction tokens), which its self-attention reads as extra keys and values.
    - `frames_seen`: frames read so far; `total_frames`: frames the caller plans to read, if
      known (it only affects frame positions past the end of the position table).

    Each step updates the state in place (its buffers are reused, so a frame costs the same however
    long the video); `copy()` it first to read two continuations of the same video. Size is bounded:
    after the first frame it holds the same buffers, of `memory_bank_length + 1` slots, for good.
    """

    instruction_ids: torch.Tensor
    instruction_mask: torch.Tensor
    memory_bank_length: int
    total_frames: int | None = None
    frames_seen: int = 0
    visual: MemoryBank | None = None
    queries: list[MemoryBank] = field(default_factory=list)
    padded: bool = field(init=False)  # whether any instruction has padding to mask out

    def __post_init__(self) -> None:
        if self.memory_bank_length < 1:
            raise ValueError(f"memory_bank_length must be at least 1, got {self.memory_bank_length}")
        if self.total_frames is not None and self.total_frames < 1:
            raise ValueError(f"total_frames must be at least 1, got {self.total_frames}")
        self.padded = not bool(self.instruction_mask.all())  # once here, not a device sync per frame

    @property
    def batch_size(self) -> int:
        return self.instruction_ids.shape[0]

    def copy(self) -> MemoryState:
        """An independent copy, for reading two different continuations of the same video."""
        return copy.deepcopy(self)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the state holds (for measuring its size)."""
        held = [self.instruction_ids, self.instruction_mask]
        for bank in [self.visual, *self.queries]:
            if bank is not None:
                held += bank.tensors()
        return held

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())
