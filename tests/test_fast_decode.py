"""The two faster ways to read frames: nearest keyframes (approximate) and parallel exact decoding.

Media only (no torch): these run in the media tests' venv too (scripts/test_media.sh). How the
model's stream and the CLI use the readers is in test_fast_decode_stream.py.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from malmm_cli.media.keyframes import KeyframeReader
from malmm_cli.media.parallel import ParallelReader
from malmm_cli.media.plans import VideoError, sample_times
from malmm_cli.media.probe import probe
from malmm_cli.media.video import VideoReader
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


def test_keyframes_of_a_video_whose_tags_are_not_utf8(clips, tmp_path: Path) -> None:
    """The keyframe reader opened the file itself without ignoring such tags: with PyAV before 19 a
    Latin-1 title that probing let through stopped it with UnicodeDecodeError."""
    path = media.with_tags_not_utf8(clips["gop25"], tmp_path / "latin1.mp4")
    info = probe(path)
    frames = list(KeyframeReader(path, info).frames([0.0, 5.0, 10.0]))
    assert [(frame.time, media.read_barcode(frame.image)) for frame in frames] == [(0.0, 0), (5.0, 50), (10.0, 100)]


def test_keyframe_pictures_are_rotated_like_opencv(clips) -> None:
    path = clips["rot90"]
    info = probe(path)
    (keyframe,) = KeyframeReader(path, info).frames([0.0])
    with VideoReader(path, info) as reader:
        (exact,) = reader.frames([0.0])
    assert keyframe.image.shape == exact.image.shape == (96, 64, 3)
    assert np.abs(keyframe.image.astype(int) - exact.image.astype(int)).mean() < 8  # same picture, other converter


def test_keyframe_reader_is_for_h264_only(clips) -> None:
    with pytest.raises(VideoError, match=r"H\.264 only"):
        KeyframeReader(clips["vp9"])


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
