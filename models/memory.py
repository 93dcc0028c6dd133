"""The bounded, compressed memory of MA-LMM, as plain data passed through the frame loop.

A memory bank keeps one slot per remembered step, each slot a set of N tokens. When the bank
holds more slots than its capacity, the two temporally adjacent slots that are most alike are
merged (separately for every token position), so the bank never grows past its capacity however
long the video is. Merging is a mean weighted by how many original frames each slot already
stands for, so a slot that absorbed ten frames is not outvoted by one new frame.

Nothing here is stored on a module: a `MemoryState` belongs to one video (one batch of videos)
and is replaced, never mutated, by every step.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F


def most_similar_adjacent(slots: torch.Tensor) -> torch.Tensor:
    """Index i of the adjacent pair (i, i+1) with the highest cosine similarity, per token position.

    slots: [B, S, N, C] with S >= 2. Returns [B, N] (long); ties resolve to the earliest pair.
    Measured in float32: in float16 the dot products and norms of 1408-wide features can overflow.
    """
    slots = slots.float()
    similarity = F.cosine_similarity(slots[:, :-1], slots[:, 1:], dim=-1)  # [B, S-1, N]
    return similarity.argmax(dim=1)


def _surviving_slots(num_slots: int, first: torch.Tensor) -> torch.Tensor:
    """For a merge of slot first+1 into slot first ([B, 1, N]): the source of each output slot.

    Every slot except first+1 survives, in order. Returns [B, S-1, N] (long).
    """
    kept = torch.arange(num_slots - 1, device=first.device).view(1, -1, 1)  # [1, S-1, 1]
    return kept + (kept > first).long()


def merge_adjacent(tensor: torch.Tensor, sizes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Merge slot index+1 into slot index, per batch row and token position, weighted by sizes.

    tensor: [B, S, N, *] (any trailing feature dims), sizes: [B, S, N], index: [B, N].
    Returns [B, S-1, N, *]. Because the weights sum to one, merging an affine function of the
    slots (for example their key projections) gives the same result as projecting the merged slots.
    """
    batch, num_slots, num_tokens = sizes.shape
    trailing = tensor.shape[3:]
    flat = tensor.reshape(batch, num_slots, num_tokens, -1)  # [B, S, N, F]
    features = flat.shape[-1]

    def gather_slots(slot_index: torch.Tensor) -> torch.Tensor:  # [B, K, N] -> [B, K, N, F]
        return flat.gather(1, slot_index.unsqueeze(-1).expand(-1, -1, -1, features))

    first = index.unsqueeze(1)  # [B, 1, N]
    size_a = sizes.gather(1, first).float()  # [B, 1, N]
    size_b = sizes.gather(1, first + 1).float()
    # Blend with weights in [0, 1] computed in float32: a size-weighted sum would overflow float16
    # once a slot stands for thousands of frames (an hour of video) times features of magnitude 20+.
    weight_a = (size_a / (size_a + size_b)).unsqueeze(-1).to(flat.dtype)  # [B, 1, N, 1]
    merged = gather_slots(first) * weight_a + gather_slots(first + 1) * (1 - weight_a)

    out = gather_slots(_surviving_slots(num_slots, first))
    out.scatter_(1, first.unsqueeze(-1).expand(-1, -1, -1, features), merged)
    return out.reshape(batch, num_slots - 1, num_tokens, *trailing)


def merge_sizes(sizes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Slot sizes after `merge_adjacent` with the same index: the merged slot counts both."""
    first = index.unsqueeze(1)  # [B, 1, N]
    out = sizes.gather(1, _surviving_slots(sizes.shape[1], first))
    out.scatter_(1, first, sizes.gather(1, first) + sizes.gather(1, first + 1))
    return out


@dataclass(frozen=True)
class MemoryBank:
    """Past steps of one stream.

    - `slots` [B, S, N, C]: the remembered entries; similarity for merging is measured on these.
    - `sizes` [B, S, N]: how many original frames each slot stands for.
    - `projections`: for each attention layer that reads this bank, the keys and values of the
      slots [B, S, N, 2D], kept so they are computed once per frame, never again. They are merged
      with the same weights as the slots, which equals projecting the merged slots (the
      projections are affine and the weights sum to one).
    """

    slots: torch.Tensor
    sizes: torch.Tensor
    projections: tuple[torch.Tensor, ...] = ()

    @classmethod
    def start(cls, entry: torch.Tensor, projections: tuple[torch.Tensor, ...] = ()) -> MemoryBank:
        """A bank holding one step. entry: [B, N, C]; projections: [B, N, 2D] each."""
        sizes = torch.ones(entry.shape[:2], dtype=torch.float32, device=entry.device)
        return cls(entry.unsqueeze(1), sizes.unsqueeze(1), tuple(p.unsqueeze(1) for p in projections))

    def __len__(self) -> int:
        return self.slots.shape[1]

    def append(self, entry: torch.Tensor, projections: tuple[torch.Tensor, ...] = ()) -> MemoryBank:
        """The bank with one more step at the end. entry: [B, N, C]; projections: [B, N, 2D] each."""
        if len(projections) != len(self.projections):
            raise ValueError(f"bank keeps {len(self.projections)} projections, got {len(projections)}")
        ones = torch.ones_like(self.sizes[:, :1])
        return MemoryBank(
            torch.cat([self.slots, entry.unsqueeze(1)], dim=1),
            torch.cat([self.sizes, ones], dim=1),
            tuple(
                torch.cat([old, new.unsqueeze(1)], dim=1)
                for old, new in zip(self.projections, projections, strict=True)
            ),
        )

    def compress(self, capacity: int) -> MemoryBank:
        """Merge most-similar adjacent slots until at most `capacity` slots remain."""
        bank = self
        while len(bank) > capacity:
            index = most_similar_adjacent(bank.slots)
            bank = MemoryBank(
                merge_adjacent(bank.slots, bank.sizes, index),
                merge_sizes(bank.sizes, index),
                tuple(merge_adjacent(p, bank.sizes, index) for p in bank.projections),
            )
        return bank

    def flat(self) -> torch.Tensor:
        """All remembered tokens in time order: [B, S * N, C]."""
        return _flatten_slots(self.slots)

    def flat_projection(self, layer: int) -> torch.Tensor:
        """Keys and values of all remembered tokens for one reading layer: [B, S * N, 2D]."""
        return _flatten_slots(self.projections[layer])


def _flatten_slots(tensor: torch.Tensor) -> torch.Tensor:  # [B, S, N, F] -> [B, S * N, F]
    batch, slots, tokens, features = tensor.shape
    return tensor.reshape(batch, slots * tokens, features)


def remember(
    bank: MemoryBank | None, entry: torch.Tensor, capacity: int, projections: tuple[torch.Tensor, ...] = ()
) -> MemoryBank:
    """Add one step to a bank (or start one) and compress it back to `capacity` slots."""
    grown = MemoryBank.start(entry, projections) if bank is None else bank.append(entry, projections)
    return grown.compress(capacity)


@dataclass(frozen=True)
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

    Size is bounded: after any number of frames, each bank has at most `memory_bank_length` slots.
    """

    instruction_ids: torch.Tensor
    instruction_mask: torch.Tensor
    memory_bank_length: int
    total_frames: int | None = None
    frames_seen: int = 0
    visual: MemoryBank | None = None
    queries: tuple[MemoryBank | None, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.memory_bank_length < 1:
            raise ValueError(f"memory_bank_length must be at least 1, got {self.memory_bank_length}")
        if self.total_frames is not None and self.total_frames < 1:
            raise ValueError(f"total_frames must be at least 1, got {self.total_frames}")

    @property
    def batch_size(self) -> int:
        return self.instruction_ids.shape[0]

    def advanced(self, visual: MemoryBank, queries: tuple[MemoryBank, ...]) -> MemoryState:
        """The state after one more frame, with its banks already compressed."""
        return replace(self, visual=visual, queries=queries, frames_seen=self.frames_seen + 1)

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the state holds (for measuring its size)."""
        banks = [self.visual, *self.queries]
        held = [self.instruction_ids, self.instruction_mask]
        for bank in banks:
            if bank is not None:
                held += [bank.slots, bank.sizes, *bank.projections]
        return held

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())
