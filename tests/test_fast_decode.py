"""The two faster ways to read frames: nearest keyframes (approximate) and parallel exact decoding."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from malmm_cli.feature_cache import FeatureCache
from malmm_cli.keyframes import KeyframeReader
from malmm_cli.parallel import ParallelReader
from malmm_cli.pipeline import Sampling, VideoStream
from malmm_cli.video import VideoError, VideoReader, probe, sample_times
from tests import media


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fast")
    source = media.make_video(folder / "source.mp4", seconds=16, fps=10, keyint=10, faststart=False)
    return {
        "gop25": media.make_video(folder / "gop25.mp4", seconds=20, fps=10, keyint=25),
        "vfr": media.make_video(folder / "vfr.mp4", seconds=12, fps=15, vfr=True),
        "rot90": media.make_video(folder / "rot90.mp4", seconds=3, fps=10, size=(96, 64), rotate=90, keyint=10),
        "vp9": media.make_video(folder / "vp9.webm", seconds=3, fps=10, codec="vp9"),
        "cut": media.make_truncated(source, folder / "cut.mp4", 0.5, faststart=True),
    }


def test_keyframes_are_the_nearest_each_delivered_once(clips) -> None:
    path = clips["gop25"]
    keyframes = media.keyframe_times(path)
    assert keyframes == [0.0, 2.5, 5.0, 7.5, 10.0, 12.5, 15.0, 17.5]
    info = probe(path)
    times = sample_times(info.duration, fps=1)  # 20 targets, 8 keyframes
    reader = KeyframeReader(path, info)
    frames = list(reader.frames(times))
    delivered = [frame.time for frame in frames]
    assert delivered == sorted(set(delivered))  # in order, each once
    for frame in frames:
        nearest = min(keyframes, key=lambda k: (abs(k - frame.target), k))
        assert frame.time == nearest  # the true timestamp of the nearest keyframe
        assert media.read_barcode(frame.image) == round(frame.time * 10)  # and its picture
    assert reader.report.requested == 20 and reader.report.delivered == len(frames) == 8


def test_times_that_share_a_keyframe_are_said(clips, tiny_malmm, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    for replay in (False, True):  # read, then from the feature cache: the note is kept with the features
        with VideoStream(tiny_malmm, clips["gop25"], Sampling(frames=20, seek="keyframe"), cache=cache) as stream:
            assert len(list(stream)) == 8 and stream.from_cache == replay  # 20 times, 8 keyframes
            assert stream.notes() == [
                "--seek keyframe read 8 distinct frames of the 20 asked for: the video has too few keyframes, so "
                "several times share their nearest one (--seek exact reads them all)"
            ]


def test_keyframe_pictures_are_rotated_like_opencv(clips) -> None:
    path = clips["rot90"]
    info = probe(path)
    (keyframe,) = KeyframeReader(path, info).frames([0.0])
    with VideoReader(path, info) as reader:
        (exact,) = reader.frames([0.0])
    assert keyframe.image.shape == exact.image.shape == (96, 64, 3)
    assert np.abs(keyframe.image.astype(int) - exact.image.astype(int)).mean() < 8  # same picture, other converter


def test_keyframes_only_for_h264(clips, tiny_malmm) -> None:
    with pytest.raises(VideoError, match=r"H\.264 only"):
        KeyframeReader(clips["vp9"])
    with VideoStream(tiny_malmm, clips["vp9"], Sampling(frames=4, seek="keyframe")) as stream:
        assert len(list(stream)) == 4  # read exactly instead
        assert stream.notes() == ["keyframe sampling supports H.264 only: exact frames read from this vp9"]
        assert stream.warnings() == []


@pytest.mark.parametrize("name", ["gop25", "vfr", "cut"])
@pytest.mark.parametrize("rate", [{"fps": 2.0}, {"frames": 7}])
def test_parallel_gives_the_frames_a_single_reader_gives(clips, name, rate) -> None:
    path = clips[name]
    info = probe(path)
    times = sample_times(info.duration, **rate)
    with VideoReader(path, info) as reader:
        single = [(f.index, f.time, media.read_barcode(f.image)) for f in reader.frames(times)]
        single_report = reader.report
    with ParallelReader(path, info, workers=3) as reader:
        parallel = [(f.index, f.time, media.read_barcode(f.image)) for f in reader.frames(times)]
        parallel_report = reader.report
    assert parallel == single and len(single) > 0
    assert (parallel_report.missing, parallel_report.ended_at) == (single_report.missing, single_report.ended_at)


def test_stopping_early_ends_the_workers(clips) -> None:
    path = clips["gop25"]
    with ParallelReader(path, workers=2) as reader:
        frames = reader.frames(sample_times(20.0, fps=5))
        next(frames)
        frames.close()
    assert multiprocessing.active_children() == []


def test_cli_options_reach_the_reader(run, clips) -> None:
    keyframe = run("caption", clips["gop25"], "--fps", "1", "--seek", "keyframe", "--format", "json", "--no-cache")
    assert keyframe.exit_code == 0, keyframe.stderr
    assert '"frames": 8' in keyframe.stdout
    exact = run("caption", clips["gop25"], "--fps", "1", "--format", "json", "--no-cache")
    parallel = run("caption", clips["gop25"], "--fps", "1", "--decode-workers", "2", "--format", "json", "--no-cache")
    assert exact.exit_code == parallel.exit_code == 0
    assert exact.stdout == parallel.stdout and '"frames": 20' in exact.stdout
