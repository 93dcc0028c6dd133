"""The memory bank: weighted merging of adjacent slots, in place, bounded, equal to the definition."""

from __future__ import annotations

import pytest
import torch

from models.memory import MemoryBank, MemoryState, compress_slots, most_similar_adjacent


def test_merge_is_size_weighted_mean_of_most_similar_pair() -> None:
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([0.9, 0.1])  # closest to a
    c = torch.tensor([0.0, 1.0])
    slots = torch.stack([a, b, c]).view(1, 3, 1, 2)
    sizes = torch.tensor([3.0, 1.0, 1.0]).view(1, 3, 1)
    merged, merged_sizes = compress_slots(slots, sizes)
    torch.testing.assert_close(merged[0, :, 0], torch.stack([(3 * a + b) / 4, c]))
    assert merged_sizes.flatten().tolist() == [4.0, 1.0]


def test_each_token_position_merges_its_own_pair() -> None:
    torch.manual_seed(1)
    slots = torch.randn(2, 5, 7, 16)
    sizes = torch.randint(1, 4, (2, 5, 7)).float()
    index = most_similar_adjacent(slots)
    merged, merged_sizes = compress_slots(slots, sizes)
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
    assert most_similar_adjacent(torch.ones(1, 4, 1, 3)).item() == 0  # all pairs equally similar


@pytest.mark.parametrize("length", [1, 2, 3, 6])
def test_bank_in_place_equals_the_definition(length: int) -> None:
    """The in-place bank (any physical order) and compress_slots (time order) agree exactly."""
    torch.manual_seed(length)
    batch, tokens = 2, 5
    project = torch.nn.Linear(8, 6)
    reference_slots = reference_sizes = None
    bank = None
    for step in range(40):
        entry = torch.randn(batch, tokens, 8)
        if step % 7 == 3:  # exact ties: a repeated frame
            entry = reference_slots[:, -1].clone()
        with torch.no_grad():  # per head, as attention reads them: [B, 2 groups, N, 3]
            projection = project(entry).view(batch, tokens, 2, 3).transpose(1, 2)
        if bank is None:
            bank = MemoryBank(length, entry, (projection,))
            reference_slots, reference_sizes = entry.unsqueeze(1), torch.ones(batch, 1, tokens)
        else:
            bank.append(entry, (projection,))
            reference_slots = torch.cat([reference_slots, entry.unsqueeze(1)], dim=1)
            reference_sizes = torch.cat([reference_sizes, torch.ones(batch, 1, tokens)], dim=1)
        context = bank.context(0)  # what attention reads: every remembered step and this one
        assert context.shape == (batch, 2, len(bank) * tokens, 3)
        # a view of the bank, not a copy, with each head's keys one contiguous block of rows
        assert context.untyped_storage().data_ptr() == bank.projections[0].untyped_storage().data_ptr()
        assert context.stride()[-2:] == (3, 1)
        bank.compress()
        if reference_slots.shape[1] > length:
            reference_slots, reference_sizes = compress_slots(reference_slots, reference_sizes)
        slots, sizes = bank.in_time_order()
        assert torch.equal(slots, reference_slots), f"step {step}"
        assert torch.equal(sizes, reference_sizes), f"step {step}"
        assert len(bank) == min(step + 1, length)
    with torch.no_grad():  # projections were merged like the slots: affine maps and weights summing to one
        order = bank.order[:, : len(bank)]  # [B, S, N]
        projected_in_order = bank.projections[0].gather(2, order[:, None, :, :, None].expand(-1, 2, -1, -1, 3))
        expected = project(reference_slots).view(batch, len(bank), tokens, 2, 3).permute(0, 3, 1, 2, 4)
        torch.testing.assert_close(projected_in_order, expected, atol=1e-5, rtol=1e-5)


def test_bank_never_exceeds_its_length_and_counts_every_frame() -> None:
    torch.manual_seed(3)
    bank = None
    for frames in range(1, 60):
        entry = torch.randn(2, 5, 8)
        if bank is None:
            bank = MemoryBank(4, entry)
        else:
            bank.append(entry)
        bank.compress()
        assert len(bank) == min(frames, 4)
        assert torch.all(bank.in_time_order()[1].sum(1) == frames)
    # fixed buffers of length + 1 slots (the current step, until compressed): a frame costs no memory
    assert bank.slots.shape[1] == bank.sizes.shape[1] == bank.order.shape[1] == 5
    assert bank.pair_similarity.shape[1] == 4


def test_bank_refuses_a_second_step_before_compressing() -> None:
    bank = MemoryBank(1, torch.zeros(1, 2, 3))
    bank.append(torch.ones(1, 2, 3))
    with pytest.raises(RuntimeError, match=r"^compress the bank before adding another step$"):
        bank.append(torch.ones(1, 2, 3))
    with pytest.raises(ValueError, match=r"^memory bank length must be at least 1, got 0$"):
        MemoryBank(0, torch.zeros(1, 2, 3))
    with pytest.raises(ValueError, match=r"^evict must be 'merge' or 'oldest', got 'lru'$"):
        MemoryBank(2, torch.zeros(1, 2, 3), evict="lru")
    with pytest.raises(ValueError, match=r"^bank keeps 0 projections, got 1$"):
        MemoryBank(2, torch.zeros(1, 2, 3)).append(torch.ones(1, 2, 3), (torch.ones(1, 2, 2, 1),))


def test_state_validates_its_settings() -> None:
    ids = torch.ones(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^memory_bank_length must be at least 1, got 0$"):
        MemoryState(ids, ids, memory_bank_length=0)
    with pytest.raises(ValueError, match=r"^total_frames must be at least 1, got 0$"):
        MemoryState(ids, ids, memory_bank_length=2, total_frames=0)
    MemoryState(ids, ids, memory_bank_length=1, total_frames=1)  # the smallest bank and video are fine
    three = torch.ones(3, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^3 instructions do not split into videos of 2$"):
        MemoryState(three, three, memory_bank_length=2, readers_per_video=2)
    with pytest.raises(ValueError, match=r"^2 frame totals for 3 videos$"):
        MemoryState(three, three, memory_bank_length=2, total_frames=[4, 5])


def test_merging_float16_slots_weighs_sizes_in_float32() -> None:
    """A frame merged into a slot of 3,000 frames moves it by 1/3001 of the gap. In float16 the
    weight 3000/3001 rounds to 1.0 (3001 is not a float16) and the frame would vanish; slots of
    unequal values and sizes show it. Float16 sums of 3,500 frames stay finite too."""
    slots = torch.tensor([[0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]], dtype=torch.float16).view(1, 3, 1, 2)
    sizes = torch.tensor([3000.0, 1.0, 1.0]).view(1, 3, 1)  # slots 0 and 1 are the most alike
    merged, merged_sizes = compress_slots(slots, sizes)
    assert merged.dtype == torch.float16
    expected = torch.tensor([[1 / 3001, 1.0], [-1.0, 0.0]], dtype=torch.float64).to(torch.float16)
    assert torch.equal(merged[0, :, 0], expected)
    assert merged_sizes.flatten().tolist() == [3001.0, 1.0]

    large = torch.full((1, 3, 2, 4), 50.0, dtype=torch.float16)
    large[:, 1] = 30.0
    large[:, 2] = -50.0
    sizes = torch.tensor([[[2000.0, 2000.0], [1500.0, 1500.0], [1.0, 1.0]]])
    merged, merged_sizes = compress_slots(large, sizes)
    expected_value = (50.0 * 2000 + 30.0 * 1500) / 3500  # 41.428..., float16 rounds to 41.4375
    assert torch.equal(merged[0, 0], torch.full((2, 4), expected_value, dtype=torch.float64).to(torch.float16))
    assert torch.equal(merged[0, 1], large[0, 2])
    assert merged_sizes[0, 0].tolist() == [3500.0, 3500.0]


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
