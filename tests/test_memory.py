"""The memory bank: weighted merging of adjacent slots, and a state whose size does not grow."""

from __future__ import annotations

import pytest
import torch

from models.memory import MemoryBank, MemoryState, merge_adjacent, merge_sizes, most_similar_adjacent, remember


def test_merge_is_size_weighted_mean_of_most_similar_pair() -> None:
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([0.9, 0.1])  # closest to a
    c = torch.tensor([0.0, 1.0])
    slots = torch.stack([a, b, c]).view(1, 3, 1, 2)
    sizes = torch.tensor([3.0, 1.0, 1.0]).view(1, 3, 1)
    bank = MemoryBank(slots, sizes).compress(2)
    torch.testing.assert_close(bank.slots[0, :, 0], torch.stack([(3 * a + b) / 4, c]))
    assert bank.sizes.flatten().tolist() == [4.0, 1.0]


def test_each_token_position_merges_its_own_pair() -> None:
    torch.manual_seed(1)
    slots = torch.randn(2, 5, 7, 16)
    sizes = torch.randint(1, 4, (2, 5, 7)).float()
    index = most_similar_adjacent(slots)
    merged = merge_adjacent(slots, sizes, index)
    merged_sizes = merge_sizes(sizes, index)
    for b in range(2):
        for n in range(7):
            i = int(index[b, n])
            expected = list(slots[b, :, n].unbind())
            weight = sizes[b, i, n], sizes[b, i + 1, n]
            expected[i] = (expected[i] * weight[0] + expected[i + 1] * weight[1]) / (weight[0] + weight[1])
            del expected[i + 1]
            torch.testing.assert_close(merged[b, :, n], torch.stack(expected))
    torch.testing.assert_close(merged_sizes.sum(1), sizes.sum(1))  # no frame is lost or counted twice


def test_ties_merge_the_earliest_pair() -> None:
    slots = torch.ones(1, 4, 1, 3)  # all pairs equally similar
    index = most_similar_adjacent(slots)
    assert index.item() == 0


def test_merging_commutes_with_affine_maps() -> None:
    """Why projected keys/values can be merged like the raw bank (used to avoid recomputation)."""
    torch.manual_seed(2)
    slots = torch.randn(1, 6, 4, 8)
    sizes = torch.randint(1, 5, (1, 6, 4)).float()
    layer = torch.nn.Linear(8, 5)
    index = most_similar_adjacent(slots)
    with torch.no_grad():
        torch.testing.assert_close(
            layer(merge_adjacent(slots, sizes, index)), merge_adjacent(layer(slots), sizes, index)
        )


def test_bank_never_exceeds_capacity_and_counts_every_frame() -> None:
    torch.manual_seed(3)
    bank = None
    for frames in range(1, 60):
        bank = remember(bank, torch.randn(2, 5, 8), capacity=4)
        assert len(bank) == min(frames, 4)
        assert torch.all(bank.sizes.sum(1) == frames)


def test_state_validates_its_settings() -> None:
    ids = torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="memory_bank_length"):
        MemoryState(ids, ids, memory_bank_length=0)
    with pytest.raises(ValueError, match="total_frames"):
        MemoryState(ids, ids, memory_bank_length=2, total_frames=0)


def test_merging_large_slots_stays_finite_in_float16() -> None:
    """An hour of video at 1 frame/s into 10 slots: slots of ~1000 frames, features of magnitude 50."""
    slots = torch.full((1, 3, 2, 4), 50.0, dtype=torch.float16)
    slots[:, 2] = -50.0
    sizes = torch.tensor([[[2000.0, 2000.0], [1500.0, 1500.0], [1.0, 1.0]]])
    merged = MemoryBank(slots, sizes).compress(2)
    assert torch.isfinite(merged.slots).all()
    torch.testing.assert_close(merged.slots[0, 0], torch.full((2, 4), 50.0, dtype=torch.float16))
    assert merged.sizes[0, 0].tolist() == [3500.0, 3500.0]


def test_similarity_is_measured_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU kernels accumulate float16 sums in float32 anyway; GPU ones may not. Guard the dtype."""
    from models import memory

    seen = []
    original = memory.F.cosine_similarity

    def spy(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
        seen.append((a.dtype, b.dtype))
        return original(a, b, dim=dim)

    monkeypatch.setattr(memory.F, "cosine_similarity", spy)
    wide = torch.full((1, 3, 1, 1408), 20.0, dtype=torch.float16)
    wide[0, 0, 0, ::2] = -20.0  # slot 0 differs from slots 1 and 2, which are equal
    assert most_similar_adjacent(wide).item() == 1
    assert seen == [(torch.float32, torch.float32)]
