"""The Python API: videos are independent, memory is bounded, frame positions follow the policy."""

from __future__ import annotations

import itertools

import pytest
import torch

from models import CAPTION, GenerationSettings, Malmm, frame_position
from tests.tiny_models import IMAGE_SIZE

SETTINGS = GenerationSettings(max_new_tokens=8, num_beams=2)


def video(frames: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(frames, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)


def describe(malmm: Malmm, pixels: torch.Tensor, bank: int = 3) -> tuple[torch.Tensor, str]:
    state = malmm.new_memory(CAPTION.prompt(), bank, total_frames=pixels.shape[0])
    output, _ = malmm.read(pixels, state)
    return output, malmm.generate(output, CAPTION.prompt(), SETTINGS)[0]


def test_same_video_twice_is_identical(tiny_malmm: Malmm) -> None:
    clip = video(7, seed=1)
    first, second = describe(tiny_malmm, clip), describe(tiny_malmm, clip)
    assert torch.equal(first[0], second[0])
    assert first[1] == second[1]


def test_videos_do_not_leak_into_each_other(tiny_malmm: Malmm) -> None:
    short, long = video(3, seed=2), video(11, seed=3)
    short_alone, long_alone = describe(tiny_malmm, short), describe(tiny_malmm, long)
    for order in ([short, long], [long, short]):
        results = [describe(tiny_malmm, clip) for clip in order]
        expected = [short_alone, long_alone] if order[0] is short else [long_alone, short_alone]
        for (output, text), (want_output, want_text) in zip(results, expected, strict=True):
            assert torch.equal(output, want_output)
            assert text == want_text


def test_reading_in_chunks_equals_reading_at_once(tiny_malmm: Malmm) -> None:
    clip = video(9, seed=4)
    whole, _ = tiny_malmm.read(clip, tiny_malmm.new_memory(CAPTION.prompt(), 3))
    state = tiny_malmm.new_memory(CAPTION.prompt(), 3)
    for chunk in clip.split(4):
        output, state = tiny_malmm.read(chunk, state)
    torch.testing.assert_close(output, whole, atol=1e-6, rtol=0)


def test_state_size_stops_growing_after_bank_length_plus_one(tiny_malmm: Malmm) -> None:
    bank = 4
    state = tiny_malmm.new_memory(CAPTION.prompt(), bank)
    features = tiny_malmm.encode_frames(video(1, seed=5))
    sizes = {}
    for frame in range(1, 501):
        noisy = features + 0.1 * torch.randn_like(features)
        _, state = tiny_malmm.step(state, noisy)
        if frame in (bank + 1, 500):
            sizes[frame] = (state.nbytes(), [tuple(t.shape) for t in state.tensors()])
    assert sizes[500] == sizes[bank + 1]
    assert state.frames_seen == 500
    assert len(state.visual) == bank and all(len(q) == bank for q in state.queries)
    assert torch.all(state.visual.in_time_order()[1].sum(1) == 500)


def test_batch_of_videos_equals_each_alone(tiny_malmm: Malmm) -> None:
    clips = [video(5, seed=6), video(5, seed=7)]
    prompts = ["what does the video describe ?", "what is the activity ?"]  # different lengths: padding
    alone = []
    for clip, prompt in zip(clips, prompts, strict=True):
        output, _ = tiny_malmm.read(clip, tiny_malmm.new_memory(prompt, 2))
        alone.append(output)
    state = tiny_malmm.new_memory(prompts, 2)
    features = [tiny_malmm.encode_frames(clip) for clip in clips]
    for t in range(5):
        output, state = tiny_malmm.step(state, torch.stack([f[t] for f in features]))
    torch.testing.assert_close(output, torch.cat(alone), atol=1e-5, rtol=0)


def test_read_rejects_empty_input_and_batches(tiny_malmm: Malmm) -> None:
    with pytest.raises(ValueError, match="no frames"):
        tiny_malmm.read(video(0, seed=0), tiny_malmm.new_memory("what", 2))
    with pytest.raises(ValueError, match="one video"):
        tiny_malmm.read(video(2, seed=0), tiny_malmm.new_memory(["what", "what"], 2))


TABLE = torch.arange(10, dtype=torch.float32).unsqueeze(1).repeat(1, 3)  # row r holds value r


def test_frame_positions_follow_reference_within_the_table() -> None:
    for total in (None, 1, 5, 10):
        for index in range(total or 10):
            assert torch.equal(frame_position(TABLE, index, total), TABLE[index])


def test_frame_positions_stretch_over_longer_videos() -> None:
    total = 5000
    values = [frame_position(TABLE, t, total)[0].item() for t in range(total)]
    assert values[0] == 0.0 and values[-1] == 9.0
    assert all(b >= a for a, b in itertools.pairwise(values))
    assert frame_position(TABLE, 2500, total)[0].item() == pytest.approx(2500 * 9 / 4999)


def test_frame_positions_clamp_when_length_is_unknown() -> None:
    assert torch.equal(frame_position(TABLE, 10, None), TABLE[9])
    assert torch.equal(frame_position(TABLE, 4999, None), TABLE[9])
    assert torch.equal(frame_position(TABLE, 6000, 5000), TABLE[9])  # read past its plan: the last row
    with pytest.raises(ValueError, match=r"^frame index must be >= 0, got -1$"):
        frame_position(TABLE, -1, None)


def test_model_defaults_a_caller_relies_on(tiny_malmm: Malmm) -> None:
    """The frame table has the config's rows (120 when it names none), a memory without a mask
    reads every instruction token with MA-LMM's bank of 10, and vision features are normalised."""
    from transformers import InstructBlipConfig

    from models.modeling import encode_vision, max_num_frames

    model = tiny_malmm.model
    assert max_num_frames(model.config) == model.frame_position_embedding.num_embeddings == 32
    assert max_num_frames(InstructBlipConfig()) == 120
    state = model.new_memory(torch.tensor([[2, 5, 3]]))
    assert state.memory_bank_length == 10 and state.instruction_mask.tolist() == [[1, 1, 1]] and not state.padded
    pixels = video(2, seed=20)
    with torch.no_grad():
        raw = model.vision_features(pixels, normalize=False)
        torch.testing.assert_close(model.vision_features(pixels), model.vision_model.post_layernorm(raw))
        torch.testing.assert_close(encode_vision(model.vision_model, pixels), model.vision_features(pixels))
    features = tiny_malmm.encode_frames(pixels)
    with pytest.raises(ValueError, match=r"^2 frames for a state of 1 videos$"):
        model.step(model.new_memory(torch.tensor([[2, 5, 3]])), features, 0)
    with pytest.raises(ValueError, match=r"^2 frame indices for a batch of 1 videos$"):
        model.step(model.new_memory(torch.tensor([[2, 5, 3]])), features[:1], [0, 1])


def test_qformer_step_refuses_frames_of_other_videos(tiny_malmm: Malmm) -> None:
    from models.qformer import qformer_step

    model = tiny_malmm.model
    features = tiny_malmm.encode_frames(video(2, seed=21))
    with pytest.raises(ValueError, match=r"^2 frames for a state of 1 videos$"):
        qformer_step(model.qformer, model.query_tokens, model.new_memory(torch.tensor([[2, 5, 3]])), features)


def test_long_video_runs_past_the_position_table(tiny_malmm: Malmm, monkeypatch: pytest.MonkeyPatch) -> None:
    """A video longer than the table stretches it: frame t gets row t * (R - 1) / (T - 1),
    interpolated between its neighbours, not the last row again and again (clamping)."""
    from models import modeling

    embedding = tiny_malmm.model.frame_position_embedding
    rows, total = embedding.num_embeddings, embedding.num_embeddings + 8
    added = []  # the position each step added to its frame's features
    original = modeling.qformer_step

    def spy(qformer, query_tokens, state, frame: torch.Tensor, **time) -> torch.Tensor:
        added.append(frame[0, 0].clone())
        return original(qformer, query_tokens, state, frame, **time)

    monkeypatch.setattr(modeling, "qformer_step", spy)
    with torch.no_grad():
        embedding.weight.normal_()
    try:
        clip = video(total, seed=8)
        output, state = tiny_malmm.read(clip, tiny_malmm.new_memory(CAPTION.prompt(), 3, total_frames=total))
        assert state.frames_seen == total and torch.isfinite(output).all()
        table = embedding.weight.detach().double()
        features = tiny_malmm.encode_frames(clip)[:, 0].double()
        for t, position in enumerate(added):
            where = t * (rows - 1) / (total - 1)  # fractional row, by hand
            low = int(where)
            high, weight = min(low + 1, rows - 1), where - low
            expected = table[low] * (1 - weight) + table[high] * weight
            torch.testing.assert_close(position.double() - features[t], expected, atol=1e-5, rtol=0, msg=f"frame {t}")
        assert len(added) == total
    finally:
        with torch.no_grad():
            embedding.weight.zero_()


def test_tiny_model_sees_different_frames_differently(tiny_malmm: Malmm) -> None:
    """Guards the tests above: with near-zero vision weights every frame would encode the same."""
    features = tiny_malmm.encode_frames(video(2, seed=10))
    assert (features[0] - features[1]).abs().mean() > 0.1 * features.abs().mean()


def test_copied_state_continues_independently(tiny_malmm: Malmm) -> None:
    """The state is updated in place; a copy follows its own continuation of the same video."""
    start, ending_a, ending_b = video(5, seed=11), video(4, seed=12), video(4, seed=13)
    state = tiny_malmm.new_memory(CAPTION.prompt(), 3)
    _, state = tiny_malmm.read(start, state)
    branch = state.copy()
    output_a, _ = tiny_malmm.read(ending_a, state)
    output_b, _ = tiny_malmm.read(ending_b, branch)
    alone_b, _ = tiny_malmm.read(torch.cat([start, ending_b]), tiny_malmm.new_memory(CAPTION.prompt(), 3))
    torch.testing.assert_close(output_b, alone_b, atol=1e-6, rtol=0)
    assert not torch.allclose(output_a, output_b)
