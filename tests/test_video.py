"""Video input: exact frames (checked by the barcode each test frame carries), damaged files, reasons, prefetch.

The media are tiny clips made by tests/media.py. A frame is "exact" when its barcode is the index of
the frame on screen at the requested time (the last one at or before it), counted from the file's
own packet timestamps.
"""

from __future__ import annotations

import errno
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from malmm_cli.media import files, plans, video
from malmm_cli.media import probe as probe_module
from malmm_cli.media.plans import VideoError, VideoInfo, plan_times, sample_times
from malmm_cli.media.prefetch import prefetch
from malmm_cli.media.probe import check_readable, probe
from malmm_cli.media.video import Frame, VideoReader
from tests import media


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every clip the tests read, made once: ~1 s in all."""
    folder = tmp_path_factory.mktemp("clips")
    cfr = media.make_video(folder / "cfr.mp4", seconds=20, fps=25, keyint=50)
    return {
        "cfr": cfr,
        "vfr": media.make_video(folder / "vfr.mp4", seconds=30, fps=30, vfr=True, keyint=60),
        "webm": media.make_video(folder / "vp9.webm", seconds=10, fps=25, codec="vp9"),
        "hevc": media.make_video(folder / "hevc.mp4", seconds=6, fps=25, codec="hevc", keyint=50),
        "rot90": media.make_video(folder / "rot90.mp4", seconds=2, fps=10, size=(96, 64), rotate=90),
        "rot270": media.make_video(folder / "rot270.mp4", seconds=2, fps=10, size=(96, 64), rotate=270),
        "gop1s": media.make_video(folder / "gop1s.mp4", seconds=20, fps=25, keyint=25),
    }


def read_all(path: Path, times: list[float]) -> tuple[list[Frame], video.ReadReport]:
    with VideoReader(path) as reader:
        frames = list(reader.frames(times))
        return frames, reader.report


def assert_exact(path: Path, frames: list[Frame], rotate: int = 0) -> None:
    """Each frame is the one on screen at its target, and its time is that frame's timestamp."""
    times = media.frame_times(path)
    for frame in frames:
        expected = media.expected_index(times, frame.target)
        stored = np.rot90(frame.image, k=rotate // 90)  # undo the clockwise display rotation
        assert media.read_barcode(stored) == expected, f"target {frame.target:.3f}s"
        assert frame.time == pytest.approx(times[expected], abs=1e-6)


# --- probe ------------------------------------------------------------------------------------------


def test_probe_reads_container_facts(clips: dict[str, Path]) -> None:
    info = probe(clips["cfr"])
    assert info == VideoInfo(clips["cfr"], 20.0, 25.0, 500, 64, 48, "h264", 0)


@pytest.mark.parametrize("layout", ["offset", "second stream"])
def test_duration_is_the_video_streams_own(clips: dict[str, Path], tmp_path: Path, layout: str) -> None:
    """A Matroska whose timestamps start at 5 s, or whose second video stream is longer, has a
    container duration that is not this stream's: every frame past 4 s was reported missing."""
    four = media.make_video(tmp_path / "four.mp4", seconds=4, fps=10)
    if layout == "offset":
        path = media.remux_with_offset(four, tmp_path / "offset.mkv", 5.0)
    else:
        nine = media.make_video(tmp_path / "nine.mp4", seconds=9, fps=10)
        path = media.mux_two_videos(four, nine, tmp_path / "two.mkv")
    with av.open(str(path)) as container:
        assert container.duration / av.time_base == pytest.approx(9.0, abs=0.1)  # what was used before
    info = probe(path)
    assert info.duration == pytest.approx(4.0, abs=0.01)
    frames, report = read_all(path, sample_times(info.duration, frames=8))
    assert len(frames) == 8 and report.missing == [] and report.ended_at is None
    assert [media.read_barcode(f.image) for f in frames] == [2, 7, 12, 17, 22, 27, 32, 37]  # shown at 0.25 + k/2


def test_mpeg_ts_and_webm_durations(clips: dict[str, Path], tmp_path: Path) -> None:
    ts = tmp_path / "clip.ts"
    media.remux(clips["gop1s"], ts, faststart=False)
    with av.open(str(ts)) as container:
        assert container.start_time > 0  # MPEG-TS timestamps start at 1.4 s
    assert probe(ts).duration == pytest.approx(20.0, abs=0.05)
    assert probe(clips["webm"]).duration == pytest.approx(10.0, abs=0.05)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_still_images_are_one_frame_with_a_note(tmp_path: Path, suffix: str) -> None:
    info = probe(media.make_still_image(tmp_path / f"photo{suffix}"))
    assert info.still and info.frames_available == 1
    plan = plan_times(info, frames=80)
    assert plan.times == [0.0] and "still image" in plan.note
    frames, _ = read_all(info.path, plan.times)
    assert len(frames) == 1 and media.read_barcode(frames[0].image) == 0


def test_plans_never_ask_for_more_frames_than_the_video_has(clips: dict[str, Path]) -> None:
    """100,000 "frames" of a short clip used to read the same frames over and over."""
    info = probe(clips["gop1s"])  # 20 s at 25 fps: 500 frames
    plan = plan_times(info, frames=100_000)
    assert len(plan.times) == 500 and "has 500" in plan.note
    plan = plan_times(info, fps=1000)
    assert len(plan.times) == 500 and "has 25" in plan.note
    assert plan_times(info, frames=80) == plans.Plan(sample_times(20.0, frames=80))
    frames, _ = read_all(info.path, plan_times(info, frames=100_000).times)
    assert [media.read_barcode(f.image) for f in frames] == list(range(500))  # each frame once


def test_as_many_frames_as_the_video_has_reads_each_once(clips: dict[str, Path], tmp_path: Path) -> None:
    """60 frames of a 60-frame video: the segment centres' frames are frames 0 to 59. Taking the
    first frame at or after each centre skipped frame 0 and read frame 59 twice."""
    path = media.make_video(tmp_path / "sixty.mp4", seconds=6, fps=10)
    info = probe(path)
    assert info.frames_available == 60
    frames, report = read_all(path, plan_times(info, frames=60).times)
    assert [media.read_barcode(f.image) for f in frames] == list(range(60)) and report.missing == []
    assert [f.time for f in frames] == pytest.approx([i / 10 for i in range(60)], abs=1e-6)


def test_a_clip_reads_its_own_frames(clips: dict[str, Path], tmp_path: Path) -> None:
    """The clip [5, 12) of a 10 fps video holds frames 50 to 119: the frame at 5.0 s is read, the one
    at 12.0 s (outside the clip) is not. Exact seeking far, and grabbing near, both find them."""
    path = media.make_video(tmp_path / "thirty.mp4", seconds=30, fps=10, keyint=20)
    plan = plans.plan_clip(probe(path), 80, 5.0, 12.0)
    frames, _ = read_all(path, plan.times)
    assert [media.read_barcode(f.image) for f in frames] == list(range(50, 120))
    frames, _ = read_all(path, plans.plan_clip(probe(path), 7, 5.0, 12.0).times)  # targets 1 s apart: seeks
    assert [media.read_barcode(f.image) for f in frames] == [55, 65, 75, 85, 95, 105, 115]
    drawn = plans.plan_clip(probe(path), 70, 5.0, 12.0, jitter=3)  # one random time per segment
    frames, _ = read_all(path, drawn.times)
    assert [media.read_barcode(f.image) for f in frames] == list(range(50, 120))


def test_check_readable_is_the_cheap_part_of_probe(clips: dict[str, Path], tmp_path: Path) -> None:
    check_readable(clips["cfr"])
    for path, reason in (
        (tmp_path / "missing.mp4", "no such file"),
        (media.make_text_file(tmp_path / "notes.mp4"), "not a video"),
        (media.make_audio_only(tmp_path / "song.m4a"), "audio only"),
    ):
        with pytest.raises(VideoError, match=reason):
            check_readable(path)


def test_probe_without_frame_count_in_the_header(clips: dict[str, Path]) -> None:
    info = probe(clips["webm"])  # WebM records no frame count, nor a stream duration
    assert info.frame_count is None
    assert info.duration == pytest.approx(10.0, abs=0.05)
    assert (info.codec, info.fps) == ("vp9", 25.0)


def test_probe_variable_frame_rate_gives_average_rate(clips: dict[str, Path]) -> None:
    info = probe(clips["vfr"])
    times = media.frame_times(clips["vfr"])
    assert info.frame_count == len(times)
    assert info.fps == pytest.approx(len(times) / info.duration, rel=0.01)
    assert times[-1] < info.duration < times[-1] + 0.2  # the last frame's display time included


@pytest.mark.parametrize(("name", "rotation"), [("rot90", 90), ("rot270", 270)])
def test_probe_reports_displayed_size_and_rotation(clips: dict[str, Path], name: str, rotation: int) -> None:
    info = probe(clips[name])
    assert (info.width, info.height, info.rotation) == (64, 96, rotation)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_tags_that_are_not_utf8_do_not_stop_a_video(clips: dict[str, Path], tmp_path: Path, suffix: str) -> None:
    """A Latin-1 title and handler name: PyAV before 19 refused the file unless told to ignore
    them, and PyAV 19 refuses that instruction (TypeError on every video)."""
    path = media.with_tags_not_utf8(clips["gop1s"], tmp_path / f"latin1{suffix}")
    assert b"caf\xe9-tag" in path.read_bytes()
    check_readable(path)
    info = probe(path)
    assert (info.duration, info.fps, info.codec) == (pytest.approx(20.0, abs=0.05), 25.0, "h264")
    frames, report = read_all(path, sample_times(info.duration, frames=4))
    assert report.missing == [] and [media.read_barcode(f.image) for f in frames] == [62, 187, 312, 437]
    with probe_module.open_input(path) as container:  # tags still readable; the bytes that are not UTF-8 never raise
        assert container.metadata["title"].startswith("malmm-caf")


@pytest.mark.parametrize(
    ("version", "arguments"),
    [
        ("14.0.1", {"metadata_errors": "ignore"}),
        ("18.1.0", {"metadata_errors": "ignore"}),
        ("19.0.0", {}),  # removed: tags are always decoded with surrogateescape
        ("19.1.0rc1", {}),
        ("20.0.0.dev3", {}),
    ],
)
def test_tag_decoding_follows_the_pyav_version(version: str, arguments: dict) -> None:
    assert probe_module._tag_decoding(version) == arguments


def test_an_unknown_pyav_version_is_said() -> None:
    with pytest.raises(ValueError, match="not a PyAV version: 'main'"):
        probe_module._tag_decoding("main")


# --- sample_times -----------------------------------------------------------------------------------


def test_sample_times_n_frames_are_centres_of_equal_parts() -> None:
    assert sample_times(10.0, frames=4) == [1.25, 3.75, 6.25, 8.75]
    assert sample_times(3.0, frames=1) == [1.5]


def test_sample_times_rate_starts_at_zero_and_stays_before_the_end() -> None:
    assert sample_times(3.0, fps=1) == [0.0, 1.0, 2.0]
    assert sample_times(3.2, fps=1) == [0.0, 1.0, 2.0, 3.0]
    assert sample_times(1.0, fps=4) == [0.0, 0.25, 0.5, 0.75]
    times = sample_times(600.0, fps=3)
    assert len(times) == 1800 and times[-1] == pytest.approx(599 + 2 / 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"duration": 10.0},
        {"duration": 10.0, "frames": 4, "fps": 1.0},
        {"duration": 0.0, "frames": 4},
        {"duration": -1.0, "fps": 1.0},
        {"duration": math.nan, "fps": 1.0},
        {"duration": 10.0, "frames": 0},
        {"duration": 10.0, "frames": 2.5},
        {"duration": 10.0, "fps": 0.0},
        {"duration": 10.0, "fps": -2.0},
        {"duration": 10.0, "fps": math.inf},
    ],
)
def test_sample_times_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        sample_times(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration": 0.0, "frames": 4}, "duration must be a positive number of seconds, got 0.0"),
        ({"duration": 10.0}, "give exactly one of frames or fps"),
        ({"duration": 10.0, "frames": 0}, "frames must be a positive integer, got 0"),
        ({"duration": 10.0, "fps": -2.0}, "fps must be a positive number, got -2.0"),
    ],
)
def test_sample_times_says_what_is_wrong(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        sample_times(**kwargs)


# --- plans ------------------------------------------------------------------------------------------


def info_of(duration: float, fps: float, frames: int | None = None) -> VideoInfo:
    """A video's facts, without a file: plans only read duration, rate and frame count."""
    return VideoInfo(Path("v.mp4"), duration, fps, frames, 64, 48, "h264", 0)


def test_plan_times_reads_each_frame_once_only_past_what_the_video_has() -> None:
    info = info_of(10.0, 10.0, 100)
    assert plan_times(info, frames=100) == plans.Plan(sample_times(10.0, frames=100))  # exactly all: centres
    assert plan_times(info, frames=101) == plans.Plan(
        sample_times(10.0, fps=10.0), "101 frames asked for, but the video has 100: reading each once"
    )
    assert plan_times(info, fps=10.0) == plans.Plan(sample_times(10.0, fps=10.0))  # the video's own rate
    assert plan_times(info, fps=10.02) == plans.Plan(
        sample_times(10.0, fps=10.0), "10.02 frames/s asked for, but the video has 10: reading at 10"
    )


def test_clip_bounds_default_to_the_whole_video() -> None:
    assert plans.clip_bounds(10.0, None, None) == (0.0, 10.0)
    assert plans.clip_bounds(10.0, -2.0, 30.0) == (0.0, 10.0)
    assert plans.clip_bounds(10.0, 0.5, 4.0) == (0.5, 4.0)


def test_plan_clip_centres_notes_and_refusals() -> None:
    info = info_of(10.0, 10.0, 100)
    assert plans.plan_clip(info, 4, 2.0, 6.0) == plans.Plan([2.5, 3.5, 4.5, 5.5])
    assert plans.plan_clip(info, 50, 2.0, 6.0) == plans.Plan(
        [2.0 + (i + 0.5) * 0.1 for i in range(40)], "50 frames asked for, but the clip has 40: reading each once"
    )
    assert plans.plan_clip(info, 3, 2.0, 2.04).times == [2.02]  # under one frame long: still one frame
    with pytest.raises(VideoError, match=r"^the clip 5-5 s is empty or past the video's end \(10 s\)$"):
        plans.plan_clip(info, 4, 5.0, 5.0)


def test_plan_clip_jitter_is_seeded_and_stays_clear_of_the_next_segment() -> None:
    info = info_of(10.0, 10.0, 100)
    drawn = plans.plan_clip(info, 40, 2.0, 6.0, jitter=3).times
    assert drawn == plans.plan_clip(info, 40, 2.0, 6.0, jitter=3).times  # the seed decides
    assert drawn != plans.plan_clip(info, 40, 2.0, 6.0, jitter=4).times
    offsets = [(t - 2.0) / 0.1 - i for i, t in enumerate(drawn)]
    latest = 1 - 2 * plans.SLACK / 0.1  # the next segment's frame is within SLACK of its start
    assert all(0 <= o <= latest + 1e-9 for o in offsets)
    assert max(offsets) == pytest.approx(latest) and min(offsets) < 0.5  # drawn, and capped where it must be


# --- exact frames -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sampling",
    [{"fps": 1.0}, {"fps": 3.3}, {"frames": 7}, {"frames": 64}],
    ids=["1fps", "3.3fps", "N7", "N64"],
)
@pytest.mark.parametrize("name", ["cfr", "vfr", "webm", "hevc", "gop1s"])
def test_frames_are_exact(clips: dict[str, Path], name: str, sampling: dict) -> None:
    times = sample_times(probe(clips[name]).duration, **sampling)
    frames, report = read_all(clips[name], times)
    assert [f.index for f in frames] == list(range(len(times)))
    assert [f.target for f in frames] == times
    assert_exact(clips[name], frames)
    assert (report.requested, report.delivered, report.missing, report.ended_at) == (len(times), len(times), [], None)
    assert all(f.image.dtype == np.uint8 and f.image.shape == (48, 64, 3) for f in frames)


def test_variable_rate_clip_defeats_unverified_seeking(clips: dict[str, Path]) -> None:
    """Guard for the test above: on this clip OpenCV's frame-number seek alone lands on wrong frames."""
    path = clips["vfr"]
    times, capture = media.frame_times(path), cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    wrong = 0
    for target in sample_times(probe(path).duration, frames=8):
        capture.set(cv2.CAP_PROP_POS_FRAMES, math.ceil(target * capture.get(cv2.CAP_PROP_FPS)))
        ok, image = capture.read()
        wrong += not ok or media.read_barcode(image) != media.expected_index(times, target)
    capture.release()
    assert wrong >= 4


def test_far_targets_on_variable_rate_clip(clips: dict[str, Path]) -> None:
    """Targets more than SEEK_AHEAD apart, forwards and backwards: every one reached by a checked seek."""
    times = [0.3 + 2.7 * k for k in range(11)] + [25.0, 13.0, 6.5]
    frames, report = read_all(clips["vfr"], times)
    assert_exact(clips["vfr"], frames)
    assert report.delivered == len(times)


def test_frame_far_from_its_target_is_not_returned(tmp_path: Path) -> None:
    """A recording paused from 2 s to 6 s: the frame on screen at 3 s was stamped 1.9 s, over 1 s
    before, so 3 s has no frame; nor has 5.5 s, though the frame after it is 0.5 s away."""
    shown = [i / 10 for i in range(20)] + [6 + i / 10 for i in range(20)]
    path = media.make_video(tmp_path / "paused.mp4", fps=10, times=shown)
    times = [1.0, 2.5, 3.0, 4.5, 5.5, 6.5]
    frames, report = read_all(path, times)
    assert [(f.target, f.time) for f in frames] == [(1.0, 1.0), (2.5, pytest.approx(1.9)), (6.5, 6.5)]
    assert_exact(path, frames)
    assert report.missing == [3.0, 4.5, 5.5] and report.ended_at is None


def test_unsorted_and_repeated_times(clips: dict[str, Path]) -> None:
    times = [12.3, 0.0, 0.01, 19.97, 5.0, 5.0, 5.02, 0.5, 11.0]
    frames, report = read_all(clips["cfr"], times)
    assert [f.index for f in frames] == list(range(len(times)))
    assert_exact(clips["cfr"], frames)
    assert report.missing == []


def test_rgb_channel_order(tmp_path: Path) -> None:
    """A red picture comes back red: the reader converts OpenCV's BGR to RGB."""
    path = tmp_path / "red.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for _ in range(5):
        writer.write(np.full((48, 64, 3), (0, 0, 255), np.uint8))  # BGR red
    writer.release()
    (frame,) = read_all(path, [0.2])[0]
    red, green, blue = frame.image.reshape(-1, 3).mean(0)
    assert red > 200 and green < 60 and blue < 60


@pytest.mark.parametrize("name", ["rot90", "rot270"])
def test_rotation_metadata_is_applied(clips: dict[str, Path], name: str) -> None:
    path = clips[name]
    rotation = probe(path).rotation
    frames, _ = read_all(path, sample_times(2.0, fps=2))
    assert all(f.image.shape == (96, 64, 3) for f in frames)  # portrait, as a player shows it
    assert_exact(path, frames, rotate=rotation)
    with av.open(str(path)) as container:  # PyAV does not rotate: turn its picture ourselves
        decoded = next(container.decode(video=0))
        stored = decoded.to_ndarray(format="rgb24")
        assert decoded.rotation % 360 == -rotation % 360  # PyAV counts counter-clockwise
    shown = np.rot90(stored, k=-rotation // 90)  # k < 0: clockwise
    first, _ = read_all(path, [0.0])
    assert np.abs(first[0].image.astype(int) - shown).mean() < 2


# --- damaged files ----------------------------------------------------------------------------------


def test_ffmpeg_complaints_about_a_damaged_file_stay_off_stderr(clips: dict[str, Path], tmp_path: Path) -> None:
    """OpenCV's FFmpeg prints a line per broken packet; malmm quiets it when it opens a file (it
    did so as a side effect of importing video.py). The same file opened by plain OpenCV shows the
    lines, so the file does make FFmpeg complain."""
    damaged = media.make_garbage_middle(clips["cfr"], tmp_path / "damaged.mp4", at_fraction=0.3, nbytes=20_000)
    read = "while capture.read()[0]: pass\n"
    plain = f"import cv2\ncapture = cv2.VideoCapture({str(damaged)!r}, cv2.CAP_FFMPEG)\n{read}"
    quiet = (f"from pathlib import Path\nfrom malmm_cli.media import probe\n"
             f"capture = probe.open_capture(Path({str(damaged)!r}))\n{read}")  # fmt: skip
    env = {key: value for key, value in os.environ.items() if key != "OPENCV_FFMPEG_LOGLEVEL"}
    outputs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
               for code in (plain, quiet)]  # fmt: skip
    assert outputs[0].stderr.strip(), "the damaged file should make OpenCV's FFmpeg complain"
    assert outputs[1].stderr == ""


def test_truncated_with_index_gives_frames_up_to_the_cut(clips: dict[str, Path], tmp_path: Path) -> None:
    path = media.make_truncated(clips["cfr"], tmp_path / "cut.mp4", keep_fraction=0.5, faststart=True)
    info = probe(path)
    assert info.duration == 20.0 and info.frame_count == 500  # the header still describes the whole video
    present = media.times_in_bytes(path, 0, path.stat().st_size)  # frames whose data starts before the cut
    tolerance = max(1.0, 2 / info.fps)
    for sampling in ({"fps": 1.0}, {"frames": 16}, {"fps": 10.0}):
        times = sample_times(info.duration, **sampling)
        frames, report = read_all(path, times)
        assert_exact(path, frames)
        assert all(abs(f.time - f.target) <= tolerance for f in frames)  # no stale frame from past the cut
        assert report.delivered == len(frames) >= 3
        delivered = [f.target for f in frames]
        assert sorted(delivered + report.missing) == times  # each target delivered or said missing
        assert all(t in report.missing for t in times if t >= max(present) + 1 / info.fps)  # none past the cut
        # Before the cut every target is delivered. At the cut the encoder's B-frames (up to 3, stored
        # after the frame they precede) can leave a frame shown earlier cut while a later one is whole:
        # whether the decoder still gives the cut one depends on its threads' timing (seen under load).
        slack = 4 / info.fps
        assert all(t in delivered for t in times if t < max(present) - slack)
        assert report.ended_at is not None and frames[-1].time <= report.ended_at <= max(present)


def test_truncated_clip_gives_stale_frames_to_naive_seeking(clips: dict[str, Path], tmp_path: Path) -> None:
    """Guard for the test above: OpenCV seeks past the cut 'succeed' and return an old frame."""
    path = media.make_truncated(clips["cfr"], tmp_path / "cut.mp4", keep_fraction=0.5, faststart=True)
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    assert capture.set(cv2.CAP_PROP_POS_FRAMES, 450)
    ok, image = capture.read()
    capture.release()
    assert ok and media.read_barcode(image) < 250


def test_truncated_without_index_is_refused(clips: dict[str, Path], tmp_path: Path) -> None:
    path = media.make_truncated(clips["cfr"], tmp_path / "cut.mp4", keep_fraction=0.5, faststart=False)
    with pytest.raises(VideoError, match=r"^damaged or incomplete file \(no index; truncated while being written\?\)$"):
        probe(path)


def test_garbage_in_the_middle_is_skipped(clips: dict[str, Path], tmp_path: Path) -> None:
    source = clips["gop1s"]  # a keyframe every second
    at, nbytes = 0.4, 3000
    path = media.make_garbage_middle(source, tmp_path / "garbage.mp4", at_fraction=at, nbytes=nbytes)
    first = int(source.stat().st_size * at)
    damaged = media.times_in_bytes(source, first, first + nbytes)
    clean_again = [k for k in media.keyframe_times(source) if k > max(damaged)][1]  # second keyframe after it
    assert min(damaged) > 2.0 and clean_again < 15.0
    intact_until = min(damaged) - 4 / 25  # B-frames shown just before a damaged frame may depend on it
    for sampling in ({"fps": 1.0}, {"frames": 16}, {"fps": 10.0}):
        times = sample_times(20.0, **sampling)
        frames, report = read_all(path, times)
        assert_exact(path, frames)  # no frame with broken content is returned
        delivered = {f.target for f in frames}
        assert all(t in delivered for t in times if t < intact_until or t >= clean_again)
        assert all(intact_until <= t < clean_again for t in report.missing)
        assert report.ended_at is None


def test_small_damage_is_crossed_by_seeking(clips: dict[str, Path], tmp_path: Path) -> None:
    """A few broken packets at 4.2 s: grabbing forward from 4 s fails there, a seek reaches 5.8 s."""
    source = clips["gop1s"]
    first, end = media.byte_offset(source, 4.2), media.byte_offset(source, 4.4)
    path = media.make_garbage_middle(source, tmp_path / "scratch.mp4", first / source.stat().st_size, end - first)
    frames, report = read_all(path, [4.0, 5.8])
    assert_exact(path, frames)
    assert report.missing == []
    frames, report = read_all(path, sample_times(20.0, fps=25))  # every frame: none with broken content
    assert_exact(path, frames)
    assert report.missing and all(4.2 - 4 / 25 <= t < 6.0 for t in report.missing)  # B-frames before 4.2 too


def test_target_in_the_last_frames_display_time(clips: dict[str, Path]) -> None:
    """No frame follows the last one (shown from 19.96 s in a 20 s clip at 25 fps): it is the frame at 19.98 s."""
    frames, report = read_all(clips["cfr"], [19.5, 19.98])
    assert [media.read_barcode(f.image) for f in frames] == [487, 499]
    assert report.missing == [] and report.ended_at is None


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return media.make_video(tmp_path_factory.mktemp("long") / "long.mp4", seconds=100, fps=5, keyint=10)


def count_opens(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    opens = [0]
    real = cv2.VideoCapture

    def counting(*args):
        opens[0] += 1
        return real(*args)

    monkeypatch.setattr(cv2, "VideoCapture", counting)
    return opens


def test_reading_stops_soon_after_a_cut(long_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """75 s missing at the end: after GIVE_UP_AFTER seconds of failures the rest is not tried one by one."""
    path = media.make_truncated(long_clip, tmp_path / "cut.mp4", keep_fraction=0.25, faststart=True)
    info = probe(path)
    opens = count_opens(monkeypatch)
    frames, report = read_all(path, sample_times(info.duration, fps=1))
    assert_exact(path, frames)
    assert 15 < len(frames) < 35 and report.missing == sample_times(info.duration, fps=1)[len(frames) :]
    assert report.ended_at is not None
    assert opens[0] < len(report.missing)  # about 2 per failure for GIVE_UP_AFTER s, then one last try


def test_long_damage_does_not_end_reading(long_clip: Path, tmp_path: Path) -> None:
    """40 s of garbage (more than GIVE_UP_AFTER) with good data after it: the frames after it are read."""
    first, end = media.byte_offset(long_clip, 20.0), media.byte_offset(long_clip, 60.0)
    path = media.make_garbage_middle(long_clip, tmp_path / "scratch.mp4", first / long_clip.stat().st_size, end - first)
    times = sample_times(100.0, fps=1)
    frames, report = read_all(path, times)
    assert_exact(path, frames)
    delivered = {f.target for f in frames}
    # OpenCV starts a seek at the keyframe before target - 16 frames: the first clean start is 60 s.
    assert all(t in delivered for t in times if t < 19 or t >= 60 + 16 / 5)
    assert report.ended_at is None


def test_no_decodable_frame(clips: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every frame's data destroyed, the index intact: probe says so, and so does a reader given the info."""
    info = probe(clips["cfr"])
    data = clips["cfr"].read_bytes()
    payload = data.index(b"mdat") + 4
    path = media.make_garbage_middle(clips["cfr"], tmp_path / "dead.mp4", payload / len(data), len(data))
    with pytest.raises(VideoError, match=r"^no frame could be decoded$"):
        probe(path)
    reopened = []
    original = video._Cursor.reopen

    def counting_reopen(cursor) -> None:
        reopened.append(1)
        original(cursor)

    monkeypatch.setattr(video._Cursor, "reopen", counting_reopen)
    for sampling in ({"fps": 1.0}, {"frames": 5}):  # grabbing from the start, or seeking first
        reopened.clear()
        times = sample_times(info.duration, **sampling)
        with VideoReader(path, info) as reader, pytest.raises(VideoError, match=r"^no frame could be decoded$"):
            list(reader.frames(times))
        assert len(reopened) <= 4 < len(times)  # gives up at the first target, not after trying them all


# --- reasons ----------------------------------------------------------------------------------------


def _directory(path: Path) -> Path:
    path.mkdir()
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _raw_h264(path: Path) -> Path:
    return media.make_video(path.with_suffix(".h264"), seconds=1)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p, "no such file"),
        (_directory, "a directory, not a file"),
        (_fifo, "not a regular file (a pipe or device?)"),
        (media.make_empty_file, "empty file (0 bytes)"),
        (media.make_text_file, "not a video file (unrecognised format)"),
        (lambda p: media.make_audio_only(p.with_suffix(".m4a")), "no video stream (audio only)"),
        (lambda p: media.make_unsupported_codec(p.with_suffix(".avi")), "unsupported video codec (unknown to FFmpeg)"),
        (_raw_h264, "no timestamps in the file (a raw stream? remux it into .mp4 or .mkv)"),
    ],
    ids=["missing", "directory", "fifo", "empty", "text", "audio-only", "unknown-codec", "raw-h264"],
)
def test_probe_reasons(tmp_path: Path, make, reason: str) -> None:
    path = make(tmp_path / "input.mp4")
    with pytest.raises(VideoError) as raised:
        probe(path)
    assert str(raised.value) == reason
    assert str(path) not in str(raised.value)


def test_codec_opencv_cannot_decode(tmp_path: Path) -> None:
    """AV1: PyAV's FFmpeg has dav1d, OpenCV's bundled FFmpeg only a hardware AV1 decoder."""
    path = media.make_video(tmp_path / "av1.mp4", seconds=1, size=(64, 64), codec="av1")
    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    decodes = capture.grab()
    capture.release()
    if decodes:
        pytest.skip("this OpenCV build decodes AV1")
    with pytest.raises(VideoError, match=r"^unsupported video codec 'av1'$"):
        probe(path)


def test_permission_denied(clips: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """As root chmod does not stop reads, so the module's open() is made to fail as it would for a user."""

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(files, "open", denied, raising=False)
    with pytest.raises(VideoError, match=r"^permission denied$"):
        probe(clips["cfr"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_by_file_mode(clips: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "locked.mp4"
    path.write_bytes(clips["cfr"].read_bytes())
    path.chmod(0)
    with pytest.raises(VideoError, match=r"^permission denied$"):
        probe(path)


def test_suffix_does_not_matter(clips: dict[str, Path], tmp_path: Path) -> None:
    path = media.copy_as(clips["cfr"], tmp_path / "holiday.txt")
    assert probe(path).frame_count == 500


def test_frames_rejects_bad_times(clips: dict[str, Path]) -> None:
    with VideoReader(clips["cfr"]) as reader, pytest.raises(ValueError):
        list(reader.frames([1.0, -0.5]))


# --- prefetch ---------------------------------------------------------------------------------------


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "malmm-prefetch"]


def test_prefetch_keeps_order() -> None:
    assert list(prefetch(iter(range(1000)), maxsize=4)) == list(range(1000))
    assert not prefetch_threads()


def test_prefetch_reraises_producer_error_after_earlier_items() -> None:
    def items():
        yield from range(5)
        raise OSError("disk gone")

    received = []
    with pytest.raises(OSError, match="disk gone"):
        for item in prefetch(items(), maxsize=2):
            received.append(item)
    assert received == [0, 1, 2, 3, 4]
    assert not prefetch_threads()


@pytest.mark.parametrize("how", ["break", "exception", "keyboard-interrupt", "close"])
def test_prefetch_early_stop_joins_the_producer(how: str) -> None:
    closed = threading.Event()

    def endless():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()  # the producer closed the source generator

    def consume() -> None:
        stream = prefetch(endless(), maxsize=3)
        try:
            for item in stream:
                if item == 10:
                    if how == "break":
                        break
                    if how == "exception":
                        raise RuntimeError("consumer failed")
                    if how == "keyboard-interrupt":
                        raise KeyboardInterrupt
                    stream.close()
        except (RuntimeError, KeyboardInterrupt):
            pass

    consumer = threading.Thread(target=consume, daemon=True)  # so that a producer that never stops fails the test
    consumer.start()
    consumer.join(timeout=10)
    assert not consumer.is_alive()
    assert not prefetch_threads()
    assert closed.is_set()


def test_prefetch_stays_bounded_while_the_consumer_is_slow() -> None:
    produced = 0

    def counted():
        nonlocal produced
        for n in range(100):
            produced += 1
            yield n

    stream = prefetch(counted(), maxsize=5)
    assert next(stream) == 0
    time.sleep(0.3)  # the producer fills the queue, then waits
    assert produced <= 5 + 2  # the queue, the item in the producer's hand, the one handed out
    assert list(stream) == list(range(1, 100))


def test_prefetch_delivers_the_same_frames(clips: dict[str, Path]) -> None:
    times = sample_times(20.0, fps=2)
    direct, _ = read_all(clips["cfr"], times)
    with VideoReader(clips["cfr"]) as reader:
        ahead = list(prefetch(reader.frames(times), maxsize=4))
        assert reader.report.delivered == len(times)
    assert [(f.index, f.time) for f in ahead] == [(f.index, f.time) for f in direct]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(ahead, direct, strict=True))


def test_without_pyav_opencv_probes_alone(clips: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    """Where PyAV cannot be installed (the project's GPU machine), malmm still reads videos."""
    from malmm_cli.media import keyframes

    with_pyav = probe(clips["cfr"])
    monkeypatch.setattr(probe_module, "av", None)
    monkeypatch.setattr(keyframes, "av", None)
    info = probe(clips["cfr"])
    assert (info.duration, info.fps, info.frame_count, info.codec) == (20.0, 25.0, 500, "h264")
    assert (info.width, info.height) == (with_pyav.width, with_pyav.height)
    assert probe(clips["hevc"]).codec == "hevc" and probe(clips["rot90"]).rotation == 90
    frames, report = read_all(clips["cfr"], sample_times(info.duration, frames=5))
    assert_exact(clips["cfr"], frames)
    assert report.missing == []
    check_readable(clips["cfr"])
    with pytest.raises(VideoError, match="not a video"):
        check_readable(media.make_text_file(tmp_path / "notes.mp4"))
    assert "needs PyAV" in keyframes.keyframes_unavailable(info)
