"""Frame positions follow the plan: a frame's position row comes from its sample index, whatever
was skipped (keyframe sampling), lost (damaged files), decoded elsewhere (parallel) or replayed
from the feature cache. Before, the n-th frame read took row n, so 6 keyframes of a 60-frame plan
were squeezed into the first rows of the table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from malmm_cli.reading.feature_cache import FeatureCache
from malmm_cli.reading.pipeline import Sampling, VideoStream, answer_questions, caption_video, predict_actions
from models import CAPTION, Malmm, frame_position
from tests import media


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("positions")
    gop1s = media.make_video(folder / "gop1s.mp4", seconds=20, fps=25, keyint=25)
    return {
        "gop25": media.make_video(folder / "gop25.mp4", seconds=20, fps=10, keyint=25),  # keyframes every 2.5 s
        "damaged": media.make_garbage_middle(gop1s, folder / "damaged.mp4", at_fraction=0.4, nbytes=3000),
    }


def plan_indices(malmm: Malmm, path: Path, sampling: Sampling, cache: FeatureCache | None = None) -> list[int]:
    with VideoStream(malmm, path, sampling, 4, cache) as stream:
        samples = [sample for sample, _ in stream]
        assert all(stream.times[s.index] == s.target for s in samples)  # the index names the planned time
        return [s.index for s in samples]


def test_step_takes_the_row_of_the_plan_index(tiny_malmm: Malmm) -> None:
    model = tiny_malmm.model
    features = torch.randn(1, 17, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.frame_position_embedding.weight.normal_()
    try:
        for index in (0, 7, 31):
            by_index, _ = tiny_malmm.step(tiny_malmm.new_memory(CAPTION.prompt(), 3, total_frames=32), features, index)
            table = model.frame_position_embedding.weight
            state = tiny_malmm.new_memory(CAPTION.prompt(), 3)
            by_hand, _ = tiny_malmm.step(state, features + (frame_position(table, index) - table[0]), 0)
            torch.testing.assert_close(by_index, by_hand, atol=1e-5, rtol=0)
        batch = tiny_malmm.new_memory([CAPTION.prompt()] * 2, 3, total_frames=32)
        two, _ = tiny_malmm.step(batch, features.expand(2, -1, -1), [0, 7])  # one index per video
        one, _ = tiny_malmm.step(tiny_malmm.new_memory(CAPTION.prompt(), 3, total_frames=32), features, 7)
        torch.testing.assert_close(two[1:], one, atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="indices for a batch"):
            tiny_malmm.step(tiny_malmm.new_memory(CAPTION.prompt(), 3), features, [0, 1])
    finally:
        with torch.no_grad():
            model.frame_position_embedding.weight.zero_()


def test_keyframes_keep_their_place_in_the_plan(tiny_malmm: Malmm, clips) -> None:
    indices = plan_indices(tiny_malmm, clips["gop25"], Sampling(fps=3, seek="keyframe"))
    keyframes = media.keyframe_times(clips["gop25"])  # 0, 2.5, ... 17.5: 8 for 60 planned times
    nearest = [min(keyframes, key=lambda k: (abs(k - i / 3), k)) for i in range(60)]
    assert indices == [nearest.index(k) for k in keyframes]  # each at its first planned time: 0, 4, 12 ... 49


def test_missing_frames_leave_their_indices_unused(tiny_malmm: Malmm, clips) -> None:
    with VideoStream(tiny_malmm, clips["damaged"], Sampling(fps=2), 4) as stream:
        indices = [sample.index for sample, _ in stream]
        missing = stream._reader.report.missing
        times = stream.times
    assert missing and len(indices) == len(times) - len(missing)
    assert indices == [i for i, t in enumerate(times) if t not in missing]


def test_parallel_and_cached_readers_give_the_same_indices(tiny_malmm: Malmm, clips, tmp_path: Path) -> None:
    sampling = Sampling(fps=2)
    exact = plan_indices(tiny_malmm, clips["damaged"], sampling)
    assert plan_indices(tiny_malmm, clips["damaged"], Sampling(fps=2, decode_workers=2)) == exact
    cache = FeatureCache(tmp_path / "cache")
    assert plan_indices(tiny_malmm, clips["damaged"], sampling, cache) == exact  # written
    with VideoStream(tiny_malmm, clips["damaged"], sampling, 4, cache) as stream:
        assert stream.from_cache
        assert [s.index for s, _ in stream] == exact  # replayed
        assert stream.warnings() == [f"{40 - len(exact)} of 40 sampled frames could not be decoded"]


@pytest.fixture
def recorded_steps(tiny_malmm: Malmm, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int | None, int]]:
    """(state, total_frames, index) of every step the tasks take."""
    calls = []
    original = tiny_malmm.step

    def spy(state, features, index=None, **times):  # one video: its total and index (a batch of one gives lists)
        (total,) = state.frame_totals()
        (step_index,) = [index] if isinstance(index, int) or index is None else index
        calls.append((id(state), total, step_index))
        return original(state, features, index, **times)

    monkeypatch.setattr(tiny_malmm, "step", spy)
    return calls


def test_every_task_steps_with_plan_indices(tiny_malmm: Malmm, clips, recorded_steps) -> None:
    sampling = Sampling(fps=3, seek="keyframe")
    expected = plan_indices(tiny_malmm, clips["gop25"], sampling)
    for task in (
        lambda: caption_video(tiny_malmm, clips["gop25"], sampling=sampling),
        lambda: answer_questions(tiny_malmm, clips["gop25"], ["what?"], sampling=sampling),
        lambda: predict_actions(tiny_malmm, clips["gop25"], sampling=sampling, labels=["a", "b"]),
    ):
        recorded_steps.clear()
        task()
        assert [(total, index) for _, total, index in recorded_steps] == [(60, i) for i in expected]


def test_segments_restart_positions_at_their_first_planned_frame(tiny_malmm: Malmm, clips, recorded_steps) -> None:
    caption_video(tiny_malmm, clips["gop25"], sampling=Sampling(fps=1), segment=5.0)  # 20 frames, 4 segments
    whole = recorded_steps[0][0]
    assert [index for state, _, index in recorded_steps if state == whole] == list(range(20))
    segments = [(total, index) for state, total, index in recorded_steps if state != whole]
    assert segments == [(5, i) for i in range(5)] * 4
