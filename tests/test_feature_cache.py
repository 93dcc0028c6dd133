"""The vision feature cache: hits skip decoding, anything that changes the features misses."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from malmm_cli.reading import stream as stream_module
from malmm_cli.reading.feature_cache import FeatureCache, default_cache_dir
from malmm_cli.reading.pipeline import Sampling, VideoStream, answer_questions
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

    monkeypatch.setattr(stream_module, "probe", no_decoding)
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
    assert read(tiny_malmm, changed, cache)[0] is True  # same content: same key, wherever it lives
    os.utime(changed, ns=(1, 1))
    assert read(tiny_malmm, changed, cache)[0] is True  # touched, not changed
    with torch.no_grad():
        weight = tiny_malmm.model.vision_model.post_layernorm.weight
        weight.add_(0.5)
        try:
            other = FeatureCache(tmp_path / "cache")  # fresh fingerprint memo, as in a new run
            assert read(tiny_malmm, clip, other)[0] is False
        finally:
            weight.sub_(0.5)


def test_an_in_place_change_with_the_same_size_and_time_misses(tiny_malmm, tmp_path) -> None:
    """The old key hashed a few byte ranges: a change elsewhere, with size and mtime kept, hit."""
    path = media.make_video(tmp_path / "clip.mp4", seconds=6, fps=10, size=(320, 240), noise=60)
    cache = FeatureCache(tmp_path / "cache")
    read(tiny_malmm, path, cache)
    status = path.stat()
    data = bytearray(path.read_bytes())
    offset = len(data) // 9 - 1000  # the old key hashed 64 KiB at 0, then at size/9, 2 size/9...
    assert offset > 64 * 1024, len(data)
    data[offset] ^= 0xFF
    path.write_bytes(data)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))
    assert path.stat().st_size == status.st_size and path.stat().st_mtime_ns == status.st_mtime_ns
    assert read(tiny_malmm, path, cache)[0] is False


def test_any_vision_weight_and_the_exact_rate_are_in_the_key(tiny_malmm, clip, tmp_path) -> None:
    """The old fingerprint hashed five small tensors: a checkpoint changing a deep ViT weight hit."""
    cache = FeatureCache(tmp_path / "cache")
    vision = cache.vision_key(tiny_malmm.model, tiny_malmm.image_processor)
    weight = tiny_malmm.model.vision_model.encoder.layers[0].mlp.fc1.weight
    with torch.no_grad():
        weight[3, 5] += 1e-3
        try:
            assert FeatureCache(tmp_path / "cache").vision_key(tiny_malmm.model, tiny_malmm.image_processor) != vision
        finally:
            weight[3, 5] -= 1e-3
    assert FeatureCache(tmp_path / "cache").vision_key(tiny_malmm.model, tiny_malmm.image_processor) == vision
    assert Sampling(fps=1 / 3).describe() != Sampling(fps=0.333333).describe()  # was rounded to 6 digits
    assert cache.key(clip, Sampling(fps=1 / 3).describe(), vision) != cache.key(clip, "fps=0.333333,seek=exact", vision)


def test_features_read_under_the_old_frame_rule_are_not_reused(clip, tmp_path) -> None:
    """Exact sampling took the first frame at or after each time, now the frame shown at it: an
    entry (or a result record) made with the old rule names the same settings without the rule."""
    cache = FeatureCache(tmp_path / "cache")
    for sampling, old in ((Sampling(frames=20), "frames=20,seek=exact"), (Sampling(fps=1.0), "fps=1.0,seek=exact")):
        assert "frame=shown" in sampling.describe()
        assert cache.key(clip, sampling.describe(), "vision") != cache.key(clip, old, "vision")


def test_the_cache_owns_only_what_it_made(tiny_malmm, clip, tmp_path) -> None:
    """MALMM_CACHE_DIR=~/work used to make `cache clear` delete the user's folders."""
    folder = tmp_path / "work"
    mine = [folder / "thesis", folder / ("a" * 40), folder / ".config", folder / f".{'b' * 40}.notes.partial"]
    for path in mine:
        path.mkdir(parents=True)
        (path / "meta.json").write_text("{}")  # even a file named like the cache's own
    (folder / "notes.txt").write_text("keep me")
    cache = FeatureCache(folder)
    read(tiny_malmm, clip, cache)
    assert len(cache.entries()) == 1
    cache.limit = 0
    cache.evict()
    cache.limit = 10**12
    read(tiny_malmm, clip, cache)
    assert cache.clear() > 0 and cache.entries() == []
    assert all((path / "meta.json").read_text() == "{}" for path in mine)
    assert (folder / "notes.txt").read_text() == "keep me"


def test_killed_runs_leave_partials_that_info_counts_and_eviction_removes(tiny_malmm, clip, tmp_path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    dead = cache.writer("c" * 40)
    dead.add(0, 0.0, 0.0, torch.zeros(17, 48))
    dead._flush()
    dead_name = dead.partial.name.replace(f"-{os.getpid()}-", "-999999999-")  # as if its process had died
    dead.partial.rename(cache.folder / dead_name)
    live = cache.writer("d" * 40)  # this process: still writing
    old = cache.writer("e" * 40)
    os.utime(old.partial, (1, 1))  # untouched for decades: stale whoever wrote it
    names = {p.folder.name for p in cache.partials()}
    assert names == {dead_name, live.partial.name, old.partial.name}
    assert sum(p.size for p in cache.partials()) > 0
    cache.evict()
    assert {p.folder.name for p in cache.partials()} == {live.partial.name}
    live.abandon()


def test_a_broken_cache_folder_costs_one_warning_and_no_video(tiny_malmm, clip, tmp_path, monkeypatch) -> None:
    problems: list[str] = []
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("MALMM_CACHE_DIR points at a file")
    cache = FeatureCache(not_a_folder, on_problem=problems.append)
    for _ in range(2):
        hit, _, features = read(tiny_malmm, clip, cache)
        assert not hit and features.shape[0] == 6
    assert len(problems) == 1 and "cannot write" in problems[0]

    problems.clear()
    cache = FeatureCache(tmp_path / "full", on_problem=problems.append)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("malmm_cli.reading.feature_cache.save_file", disk_full)
    for _ in range(2):
        assert read(tiny_malmm, clip, cache)[0] is False
    assert len(problems) == 1 and "No space left on device" in problems[0]
    assert cache.entries() == [] and cache.partials() == []


def test_concurrent_writers_of_one_entry_never_fail(tiny_malmm, clip, tmp_path) -> None:
    """Two runs read the same video at once: the second to finish finds the entry written."""
    problems: list[str] = []
    first, second = (FeatureCache(tmp_path / "cache", on_problem=problems.append) for _ in range(2))
    streams = [VideoStream(tiny_malmm, clip, Sampling(frames=6), 4, cache) for cache in (first, second)]
    assert not any(stream.from_cache for stream in streams)
    features = [torch.cat([f for _, f in stream]) for stream in streams]  # both write, one after the other
    for stream in streams:
        stream.__exit__(None, None, None)
    assert problems == [] and torch.equal(features[0], features[1])
    assert len(first.entries()) == 1 and first.partials() == []
    assert read(tiny_malmm, clip, first)[0] is True


def test_an_entry_removed_while_replayed_is_decoded_instead(tiny_malmm, clip, tmp_path, monkeypatch) -> None:
    """Another run's `malmm cache clear` (or eviction) while a video is replayed from the cache."""
    monkeypatch.setattr("malmm_cli.reading.feature_cache.CHUNK_FRAMES", 8)  # 30 frames: 4 chunks
    problems: list[str] = []
    cache = FeatureCache(tmp_path / "cache", on_problem=problems.append)
    _, times, features = read(tiny_malmm, clip, cache, frames=30)
    with VideoStream(tiny_malmm, clip, Sampling(frames=30), 4, cache) as stream:
        assert stream.from_cache
        replayed = []
        for sample, feature in stream:
            replayed.append((sample, feature))
            if len(replayed) == 1:
                FeatureCache(tmp_path / "cache").clear()
        assert stream.warnings() == []
    assert [s.index for s, _ in replayed] == list(range(30)) and [s.time for s, _ in replayed] == times
    torch.testing.assert_close(torch.cat([f for _, f in replayed]), features, atol=2e-3, rtol=0)
    assert len(problems) == 1 and "the rest of the video is decoded" in problems[0]


def test_least_recently_used_entries_are_evicted(tiny_malmm, tmp_path) -> None:
    clips = [media.make_video(tmp_path / f"c{i}.mp4", seconds=2, fps=10, seed=i) for i in range(3)]
    cache = FeatureCache(tmp_path / "cache")
    read(tiny_malmm, clips[0], cache)
    one_entry = cache.entries()[0].size
    cache.limit = int(2.5 * one_entry)
    read(tiny_malmm, clips[1], cache)
    os.utime(cache.entries()[0].folder, (1, 1))  # make c0's entry the oldest...
    assert read(tiny_malmm, clips[0], cache)[0] is True  # ...then use it: c1 becomes the oldest
    read(tiny_malmm, clips[2], cache)
    assert len(cache.entries()) == 2
    assert read(tiny_malmm, clips[0], cache)[0] is True
    assert read(tiny_malmm, clips[2], cache)[0] is True


def test_damaged_entries_are_ignored_and_rebuilt(tiny_malmm, clip, tmp_path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    _, _, features = read(tiny_malmm, clip, cache)
    (entry,) = [e.folder for e in cache.entries()]
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
    assert cache.entries() == [] and cache.partials() == []


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
