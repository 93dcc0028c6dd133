"""The precision policy: ViT and LLM in the load dtype, the memory path in float32 on every device.

An hour at 1 frame/s merges thousands of frames into a slot; in float16 a new frame's weight of
1/3001 rounds to 1/2048 and from ~4,000 frames on to 0, and a float16 slot near 1.0 cannot move
by less than 0.0005 at all. These tests run the loop long enough to see that.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import CAPTION, GenerationSettings, Malmm
from models.memory import MemoryBank, compress_slots

HALF = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", HALF)
def test_banks_store_half_precision_entries_in_float32(dtype: torch.dtype) -> None:
    entry = torch.randn(1, 3, 8).to(dtype)
    projection = torch.randn(1, 4, 3, 2).to(dtype)
    bank = MemoryBank(2, entry, (projection,))
    assert bank.slots.dtype == bank.projections[0].dtype == torch.float32
    assert torch.equal(bank.in_time_order()[0][:, 0], entry.float())


@pytest.mark.parametrize("dtype", [*HALF, torch.float32])
def test_a_slot_of_5000_frames_still_moves_when_a_frame_is_merged(dtype: torch.dtype) -> None:
    """A bank of one slot: every frame is merged into it. 5,000 frames of 1.0, then one of 2.0."""
    ones = torch.ones(1, 2, 4, dtype=dtype)
    bank = MemoryBank(1, ones)
    for _ in range(4999):
        bank.append(ones)
        bank.compress()
    slots, sizes = bank.in_time_order()
    assert sizes.flatten().tolist() == [5000.0, 5000.0] and torch.equal(slots, torch.ones(1, 1, 2, 4))
    bank.append(torch.full_like(ones, 2.0))
    bank.compress()
    slots, sizes = bank.in_time_order()
    expected = torch.full((1, 1, 2, 4), 1 + 1 / 5001)  # (5000 * 1 + 2) / 5001
    torch.testing.assert_close(slots, expected, atol=0, rtol=2e-7)
    assert sizes.flatten().tolist() == [5001.0, 5001.0]
    # what float16 storage would have done: the update is below half a float16 step at 1.0
    assert torch.tensor(1.0, dtype=torch.float16) + torch.tensor(1 / 5001, dtype=torch.float16) == 1.0


@pytest.mark.parametrize("dtype", HALF)
def test_memory_loop_over_5000_half_precision_frames(dtype: torch.dtype) -> None:
    """Half-precision entries cost their own rounding only: the bank equals the float64 definition
    run on the same values to 1e-5 after 5,000 frames, and its sizes (the merge weights) are exact."""
    torch.manual_seed(0)
    length, batch, tokens, width = 6, 1, 3, 8
    bank = definition = sizes = None
    for _ in range(5000):
        entry = (torch.randn(batch, tokens, width) * 4).to(dtype)  # what a half-precision ViT hands over
        if bank is None:
            bank = MemoryBank(length, entry)
            definition, sizes = entry.double().unsqueeze(1), torch.ones(batch, 1, tokens, dtype=torch.float64)
        else:
            bank.append(entry)
            definition = torch.cat([definition, entry.double().unsqueeze(1)], dim=1)
            sizes = torch.cat([sizes, torch.ones(batch, 1, tokens, dtype=torch.float64)], dim=1)
        bank.compress()
        if definition.shape[1] > length:
            definition, sizes = compress_slots(definition, sizes)
    slots, bank_sizes = bank.in_time_order()
    assert torch.equal(bank_sizes.double(), sizes) and bank_sizes.sum(1).unique().tolist() == [5000.0]
    torch.testing.assert_close(slots.double(), definition, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def positions() -> torch.Tensor:
    return torch.randn(32, 48, generator=torch.Generator().manual_seed(3)) * 0.1


def _read_frames(malmm: Malmm, pixels: torch.Tensor, table: torch.Tensor, frames: int) -> list[torch.Tensor]:
    with torch.no_grad():
        malmm.model.frame_position_embedding.weight.copy_(table)
    features = malmm.encode_frames(pixels)
    state = malmm.new_memory(CAPTION.prompt(), 6, total_frames=frames)
    outputs = []
    for index in range(frames):
        output, state = malmm.step(state, features[index % len(features)].unsqueeze(0))
        if index in (9, frames - 1):
            outputs.append(output.float())
    assert state.visual.slots.dtype == torch.float32
    assert all(bank.slots.dtype == torch.float32 for bank in state.queries)
    return outputs


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_half_precision_model_keeps_the_memory_path_in_float32(
    tiny_llama_dir: Path, tiny_malmm: Malmm, positions: torch.Tensor, dtype: torch.dtype, tolerance: float
) -> None:
    malmm = Malmm.from_pretrained(tiny_llama_dir, dtype=dtype)
    model = malmm.model
    for part in (model.qformer, model.language_projection, model.frame_position_embedding,
                 model.vision_model.post_layernorm):  # fmt: skip
        assert {p.dtype for p in part.parameters()} == {torch.float32}
    assert model.query_tokens.dtype == torch.float32
    assert model.vision_model.encoder.layers[0].mlp.fc1.weight.dtype == dtype
    assert model.language_model.get_input_embeddings().weight.dtype == dtype

    pixels = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    try:  # the shared tiny model gets a position table: zero it again even if a check fails
        expected = _read_frames(tiny_malmm, pixels, positions, 300)
        got = _read_frames(malmm, pixels, positions, 300)
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(a, b, atol=tolerance, rtol=0)
        settings = GenerationSettings(max_new_tokens=6, num_beams=1)
        text = malmm.generate(got[-1].to(torch.float32), CAPTION.prompt(), settings)
        assert text == tiny_malmm.generate(expected[-1], CAPTION.prompt(), settings) and text[0]  # as in float32
    finally:
        with torch.no_grad():
            tiny_malmm.model.frame_position_embedding.weight.zero_()
