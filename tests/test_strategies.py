"""Memory strategies and shared memories: each against a case computed by hand or another way."""

from __future__ import annotations

import pytest
import torch

from models import CAPTION, Malmm, MemoryBank, MemoryState
from tests.tiny_models import IMAGE_SIZE

QUESTIONS = ["Question: who is there? Short answer:", "Question: what colour is the car? Short answer:",
             "Question: is it raining? Short answer:"]  # fmt: skip


def features(malmm: Malmm, frames: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return malmm.encode_frames(torch.randn(frames, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator))


def read(malmm: Malmm, state: MemoryState, frames: torch.Tensor) -> torch.Tensor:
    """frames [F, V, N, C]: one frame of each video per step; returns the last output."""
    output = None
    for frame in frames:
        output, state = malmm.step(state, frame)
    return output


def test_fifo_bank_keeps_the_newest_steps_unmerged() -> None:
    entries = [torch.full((1, 2, 3), float(value)) for value in (1, 2, 3, 4, 5)]
    bank = MemoryBank(2, entries[0], evict="oldest")
    for entry in entries[1:]:
        bank.append(entry)
        bank.compress()
    slots, sizes = bank.in_time_order()
    assert slots[0, :, 0, 0].tolist() == [4.0, 5.0]  # 1, 2, 3 dropped in turn, nothing averaged
    assert sizes.tolist() == [[[1.0, 1.0], [1.0, 1.0]]]


def test_merging_bank_averages_where_fifo_drops() -> None:
    # Steps 1 and 2 are the most alike: MA-LMM merges them (mean 1.5), FIFO drops step 1.
    entries = [torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[1.0, 0.1]]]), torch.tensor([[[0.0, 1.0]]])]
    merged, dropped = MemoryBank(2, entries[0]), MemoryBank(2, entries[0], evict="oldest")
    for bank in (merged, dropped):
        for entry in entries[1:]:
            bank.append(entry)
            bank.compress()
    torch.testing.assert_close(merged.in_time_order()[0][0, :, 0], torch.tensor([[1.0, 0.05], [0.0, 1.0]]))
    assert merged.in_time_order()[1][0, :, 0].tolist() == [2.0, 1.0]
    torch.testing.assert_close(dropped.in_time_order()[0][0, :, 0], torch.tensor([[1.0, 0.1], [0.0, 1.0]]))


def frame_alone(malmm: Malmm, frame: torch.Tensor, index: int, total: int) -> torch.Tensor:
    """The Q-Former output of one frame read with no past: a fresh state, that frame only."""
    state = malmm.new_memory(CAPTION.prompt(), 4, total_frames=total)
    output, _ = malmm.step(state, frame.unsqueeze(0), index)
    return output


@pytest.mark.parametrize("strategy", ["none", "avgpool", "concat"])
def test_strategies_without_banks_read_each_frame_alone(tiny_malmm: Malmm, strategy: str) -> None:
    clip = features(tiny_malmm, 5, seed=1)
    alone = [frame_alone(tiny_malmm, frame, index, 5) for index, frame in enumerate(clip)]
    state = tiny_malmm.new_memory(CAPTION.prompt(), 5, total_frames=5, strategy=strategy)
    output = read(tiny_malmm, state, clip.unsqueeze(1))
    expected = {
        "none": alone[-1],
        "avgpool": torch.stack(alone).mean(dim=0),
        "concat": torch.cat(alone, dim=1),  # [1, 5 x NQ, D]: every frame's tokens in time order
    }[strategy]
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=0)
    assert state.visual is not None and len(state.visual) == 1  # nothing of the past is attended to
    assert state.visual.slots.shape[1] == state.queries[0].slots.shape[1] == 2  # room for one frame, not a bank


def test_concat_refuses_more_frames_than_its_cap(tiny_malmm: Malmm) -> None:
    with pytest.raises(ValueError, match=r"keeps every frame, at most 4 .*; 5 frames are more"):
        tiny_malmm.new_memory(CAPTION.prompt(), 4, total_frames=5, strategy="concat")
    state = tiny_malmm.new_memory(CAPTION.prompt(), 2, strategy="concat")  # total unknown: refused at frame 3
    clip = features(tiny_malmm, 3, seed=2)
    tiny_malmm.step(state, clip[:1])
    tiny_malmm.step(state, clip[1:2])
    with pytest.raises(ValueError, match="3 frames are more"):
        tiny_malmm.step(state, clip[2:3])


def test_fifo_differs_from_merging_once_the_bank_is_full(tiny_malmm: Malmm) -> None:
    clip = features(tiny_malmm, 6, seed=3).unsqueeze(1)
    outputs = {}
    for strategy in ("malmm", "fifo"):
        state = tiny_malmm.new_memory(CAPTION.prompt(), 3, total_frames=6, strategy=strategy)
        outputs[strategy] = [tiny_malmm.step(state, frame)[0] for frame in clip]
    for frame in range(3):  # the bank holds every frame so far: no difference yet
        torch.testing.assert_close(outputs["fifo"][frame], outputs["malmm"][frame], atol=1e-6, rtol=0)
    assert not torch.allclose(outputs["fifo"][-1], outputs["malmm"][-1], atol=1e-4)


def test_unknown_strategy_is_refused(tiny_malmm: Malmm) -> None:
    with pytest.raises(ValueError, match="one of malmm, fifo"):
        tiny_malmm.new_memory(CAPTION.prompt(), 4, strategy="tome")


@pytest.mark.parametrize("strategy", ["malmm", "fifo", "avgpool"])
def test_questions_sharing_one_visual_bank_equal_separate_runs(tiny_malmm: Malmm, strategy: str) -> None:
    clip = features(tiny_malmm, 7, seed=4).unsqueeze(1)  # [F, 1, N, C]
    shared = tiny_malmm.new_memory(QUESTIONS, 3, total_frames=7, strategy=strategy, readers_per_video=3)
    together = read(tiny_malmm, shared, clip)
    assert shared.visual.slots.shape[0] == 1 and shared.queries[0].slots.shape[0] == 3
    for row, question in enumerate(QUESTIONS):
        alone = read(tiny_malmm, tiny_malmm.new_memory(question, 3, total_frames=7, strategy=strategy), clip)
        torch.testing.assert_close(together[row : row + 1], alone, atol=1e-5, rtol=0)


def test_videos_of_a_batch_with_their_questions_equal_each_alone(tiny_malmm: Malmm) -> None:
    first, second = features(tiny_malmm, 6, seed=5), features(tiny_malmm, 6, seed=6)
    both = torch.stack([first, second], dim=1)  # [F, 2, N, C]
    state = tiny_malmm.new_memory(QUESTIONS[:2] * 2, 3, total_frames=[6, 150], readers_per_video=2)
    outputs = []
    for index, frame in enumerate(both):
        output, state = tiny_malmm.step(state, frame, [index, index * 25])
        outputs.append(output)
    for video, (clip, total, stride) in enumerate(((first, 6, 1), (second, 150, 25))):
        alone = tiny_malmm.new_memory(QUESTIONS[:2], 3, total_frames=total, readers_per_video=2)
        for index, frame in enumerate(clip):
            expected, alone = tiny_malmm.step(alone, frame.unsqueeze(0), index * stride)
        torch.testing.assert_close(outputs[-1][2 * video : 2 * video + 2], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("strategy", ["malmm", "avgpool", "concat"])
def test_selecting_videos_goes_on_as_if_the_others_never_were(tiny_malmm: Malmm, strategy: str) -> None:
    """Two readers per video, the longest question in the video that ends (so the one left has
    padding to mask), its own planned total past the position table, and what avgpool and concat
    have pooled so far: all of it follows the video that goes on."""
    clip_a, clip_b = features(tiny_malmm, 5, seed=7), features(tiny_malmm, 5, seed=8)
    table = tiny_malmm.model.frame_position_embedding.weight
    bank, total_b = (5, 5) if strategy == "concat" else (2, table.shape[0] + 30)
    questions = [QUESTIONS[1], QUESTIONS[0], QUESTIONS[0], QUESTIONS[2]]  # [1] is the longest
    with torch.no_grad():
        table.normal_()
    try:
        state = tiny_malmm.new_memory(questions, bank, total_frames=[5, total_b], strategy=strategy,
                                      readers_per_video=2)  # fmt: skip
        assert state.select([1]).visual is None  # nothing read yet: nothing to select
        for index, (frame_a, frame_b) in enumerate(zip(clip_a[:3], clip_b[:3], strict=True)):
            _, state = tiny_malmm.step(state, torch.stack([frame_a, frame_b]), [index, index * 7])
        state = state.select([1])  # video a ended
        assert state.frame_totals() == [total_b] and state.padded
        for index, frame in enumerate(clip_b[3:], start=3):
            output, state = tiny_malmm.step(state, frame.unsqueeze(0), index * 7)
        alone = tiny_malmm.new_memory(questions[2:], bank, total_frames=total_b, strategy=strategy,
                                      readers_per_video=2)  # fmt: skip
        for index, frame in enumerate(clip_b):
            expected, alone = tiny_malmm.step(alone, frame.unsqueeze(0), index * 7)
        torch.testing.assert_close(output, expected, atol=1e-5, rtol=0)
    finally:
        with torch.no_grad():
            table.zero_()


@pytest.mark.parametrize("strategy", ["malmm", "avgpool", "concat"])
def test_state_size_counts_every_buffer(tiny_malmm: Malmm, strategy: str) -> None:
    """`nbytes` (the benchmarks' state_mib) is the instructions, every bank buffer and the pooled
    outputs, counted here from the state's parts."""
    state = tiny_malmm.new_memory(QUESTIONS[:2], 3, total_frames=3, strategy=strategy, readers_per_video=2)
    read(tiny_malmm, state, features(tiny_malmm, 3, seed=9).unsqueeze(1))
    parts = [state.instruction_ids, state.instruction_mask]
    for bank in [state.visual, *state.queries]:
        parts += [bank.slots, *bank.projections, bank.sizes, bank.order, bank.pair_similarity, bank.free]
    if strategy != "malmm":
        parts.append(state.pooled)
    assert state.nbytes() == sum(t.numel() * t.element_size() for t in parts)
