"""The vision feature cache: hits skip decoding, anything that changes the features misses."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from malmm_cli import pipeline
from malmm_cli.feature_cache import FeatureCache, default_cache_dir
from malmm_cli.pipeline import Sampling, VideoStream, answer_questions
from tests import media


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    return media.make_video(tmp_path / "clip.mp4", seconds=3, fps=10, size=(64, 48))


def read(malmm, path: Path, cache: FeatureCache | None, frames: int = 6, batch_size: int = 4):
    with VideoStream(malmm, path, Sampling(frames=frames), batch_size, cache) as stream:
        samples, features = zip(*stream, strict=True)
        return stream.from_cache, [s.time for s in samples], torch.cat(features)


def test_second_read_comes_from_the_cache_without_decoding(tiny_malmm, clip, tmp_path, monkeypatch) -> None:
    cache = FeatureCache(tmp_path / "cache")
    hit, times, features = read(tiny_malmm, clip, cache)
    assert not hit and len(cache.entries()) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(pipeline, "probe", no_decoding)
    monkeypatch.setattr(tiny_malmm, "encode_frames", no_decoding)
    hit, cached_times, cached = read(tiny_malmm, clip, cache)
    assert hit and cached_times == times
    assert torch.equal(cached, features)  # identical: the first run already used the float16 values


def test_changed_file_settings_or_weights_miss(tiny_malmm, clip, tmp_path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    read(tiny_malmm, clip, cache)
    assert read(tiny_malmm, clip, cache, frames=5)[0] is False  # other sampling
    changed = tmp_path / "changed.mp4"
    shutil.copy2(clip, changed)
    assert read(tiny_malmm, changed, cache)[0] is True  # same content and time: same key, wherever it lives
    os.utime(changed, ns=(1, 1))
    assert read(tiny_malmm, changed, cache)[0] is False  # modification time is part of the key
    with torch.no_grad():
        weight = tiny_malmm.model.vision_model.post_layernorm.weight
        weight.add_(0.5)
        try:
            other = FeatureCache(tmp_path / "cache")  # fresh fingerprint memo, as in a new run
            assert read(tiny_malmm, clip, other)[0] is False
        finally:
            weight.sub_(0.5)


def test_least_recently_used_entries_are_evicted(tiny_malmm, tmp_path) -> None:
    clips = [media.make_video(tmp_path / f"c{i}.mp4", seconds=2, fps=10, seed=i) for i in range(3)]
    cache = FeatureCache(tmp_path / "cache")
    read(tiny_malmm, clips[0], cache)
    one_entry = cache.entries()[0][1]
    cache.limit = int(2.5 * one_entry)
    read(tiny_malmm, clips[1], cache)
    os.utime(cache.entries()[0][0], (1, 1))  # make c0's entry the oldest...
    assert read(tiny_malmm, clips[0], cache)[0] is True  # ...then use it: c1 becomes the oldest
    read(tiny_malmm, clips[2], cache)
    assert len(cache.entries()) == 2
    assert read(tiny_malmm, clips[0], cache)[0] is True
    assert read(tiny_malmm, clips[2], cache)[0] is True


def test_damaged_entries_are_ignored_and_rebuilt(tiny_malmm, clip, tmp_path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    _, _, features = read(tiny_malmm, clip, cache)
    (entry,) = [folder for folder, _, _ in cache.entries()]
    (entry / "chunk-00000.safetensors").write_bytes(b"not safetensors")
    hit, _, rebuilt = read(tiny_malmm, clip, cache)
    assert hit is False and torch.equal(rebuilt, features)
    (entry / "meta.json").write_text("{broken")
    assert read(tiny_malmm, clip, cache)[0] is False
    assert read(tiny_malmm, clip, cache)[0] is True


def test_unfinished_read_leaves_nothing(tiny_malmm, clip, tmp_path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    with VideoStream(tiny_malmm, clip, Sampling(frames=6), 2, cache) as stream:
        next(iter(stream))  # stop after one frame
    assert cache.entries() == [] and list((tmp_path / "cache").iterdir()) == []


def test_batched_encoding_equals_one_at_a_time(tiny_malmm, clip) -> None:
    _, _, batched = read(tiny_malmm, clip, None, frames=7, batch_size=4)
    _, _, single = read(tiny_malmm, clip, None, frames=7, batch_size=1)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_answers_from_cache_equal_answers_from_the_video(tiny_malmm, clip, tmp_path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    first = answer_questions(tiny_malmm, clip, ["what happens?"], cache=cache)
    second = answer_questions(tiny_malmm, clip, ["what happens?"], cache=cache)
    assert first.answers == second.answers and first.to_dict() == second.to_dict()


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MALMM_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("MALMM_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if os.name == "posix" and os.uname().sysname != "Darwin":
        assert default_cache_dir() == tmp_path / "xdg" / "malmm"
