"""The fast readers as the model's stream and the CLI use them: keyframe notes, the feature cache,
the options. Needs torch; the readers themselves are tested in test_fast_decode.py (media only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from malmm_cli.reading.feature_cache import FeatureCache
from malmm_cli.reading.pipeline import Sampling, VideoStream
from tests import media


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("fast-stream")
    return {
        "gop25": media.make_video(folder / "gop25.mp4", seconds=20, fps=10, keyint=25),
        "vp9": media.make_video(folder / "vp9.webm", seconds=3, fps=10, codec="vp9"),
    }


def test_times_that_share_a_keyframe_are_said(clips, tiny_malmm, tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    for replay in (False, True):  # read, then from the feature cache: the note is kept with the features
        with VideoStream(tiny_malmm, clips["gop25"], Sampling(frames=20, seek="keyframe"), cache=cache) as stream:
            assert len(list(stream)) == 8 and stream.from_cache == replay  # 20 times, 8 keyframes
            assert stream.notes() == [
                "--seek keyframe read 8 distinct frames of the 20 asked for: the video has too few keyframes, so "
                "several times share their nearest one (--seek exact reads them all)"
            ]


def test_keyframe_sampling_reads_other_codecs_exactly(clips, tiny_malmm) -> None:
    with VideoStream(tiny_malmm, clips["vp9"], Sampling(frames=4, seek="keyframe")) as stream:
        assert len(list(stream)) == 4  # read exactly instead
        assert stream.notes() == ["keyframe sampling supports H.264 only: exact frames read from this vp9"]
        assert stream.warnings() == []


def test_cli_options_reach_the_reader(run, clips) -> None:
    keyframe = run("caption", clips["gop25"], "--fps", "1", "--seek", "keyframe", "--format", "json", "--no-cache")
    assert keyframe.exit_code == 0, keyframe.stderr
    assert '"frames": 8' in keyframe.stdout
    exact = run("caption", clips["gop25"], "--fps", "1", "--format", "json", "--no-cache")
    parallel = run("caption", clips["gop25"], "--fps", "1", "--decode-workers", "2", "--format", "json", "--no-cache")
    assert exact.exit_code == parallel.exit_code == 0
    assert exact.stdout == parallel.stdout and '"frames": 20' in exact.stdout
