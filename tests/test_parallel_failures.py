"""`--decode-workers N` when a worker fails: the reader says why, nothing hangs, nothing is left behind.

Media only (no torch): these run in the media tests' venv too (scripts/test_media.sh).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from malmm_cli.media.parallel import ParallelReader
from malmm_cli.media.plans import VideoError, sample_times
from malmm_cli.media.probe import probe
from tests import media

HANG = 30.0  # seconds after which reading counts as hung (a failure is seen within ~1 s)


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Frames of 230 KB, more than a pipe holds (64 KB): a worker is usually in the middle of
    handing one over when it dies."""
    path = media.make_video(tmp_path_factory.mktemp("parallel") / "wide.mp4", seconds=6, fps=10, size=(320, 240))
    with ParallelReader(path, workers=2) as reader:  # what multiprocessing starts once per process is started
        assert len(list(reader.frames([0.0, 1.0]))) == 2
    return path


def open_descriptors() -> int:
    """Open file descriptors of this process, the pipes to the workers among them (no garbage is
    collected first: the reader must close its pipes itself, not leave them to finalizers)."""
    return len(os.listdir("/dev/fd"))


def finishes(work: Callable[[], object]) -> object:
    """What `work` returns or raises, run in a thread; fails the test if it is still running after HANG s."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["result"] = work()
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG)
    assert not thread.is_alive(), f"reading still waits {HANG:.0f} s after a decoding worker died"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def kill_one_worker_while_reading(frames: Iterator) -> None:
    """Take a frame, let the workers fill their queues, then kill one of them outright (as the
    kernel's out-of-memory killer would: no chance to report)."""
    next(frames)
    time.sleep(1.0)
    workers = multiprocessing.active_children()
    assert len(workers) == 2
    os.kill(workers[0].pid, signal.SIGKILL)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_killed_worker_is_an_error_not_a_hang(video: Path) -> None:
    before = open_descriptors()
    with ParallelReader(video, workers=2) as reader:
        frames = reader.frames(sample_times(6.0, fps=10))
        kill_one_worker_while_reading(frames)
        with pytest.raises(VideoError, match="a decoding worker stopped unexpectedly"):
            finishes(lambda: sum(1 for _ in frames))
    assert multiprocessing.active_children() == []
    assert open_descriptors() == before


@pytest.mark.parametrize(
    ("spoil", "times", "message"),
    [
        # a bug in the worker (VideoReader refuses a negative time: ValueError, not a VideoError)
        (None, [0.0, 1.0, -1.0, 2.0], "ValueError: times must be finite and >= 0 seconds"),
        # the file deleted after probing
        (lambda path: path.unlink(), [0.0, 1.0, 2.0, 3.0], "the file can no longer be opened"),
    ],
    ids=["worker-raises", "file-gone"],
)
def test_a_worker_that_raises_says_why(video: Path, tmp_path: Path, spoil, times, message) -> None:
    path = Path(shutil.copy(video, tmp_path / "copy.mp4"))
    info = probe(path)
    if spoil is not None:
        spoil(path)
    before = open_descriptors()
    with ParallelReader(path, info, workers=2) as reader, pytest.raises(VideoError, match=message):
        finishes(lambda: list(reader.frames(times)))
    assert multiprocessing.active_children() == []
    assert open_descriptors() == before


def test_the_reader_can_read_again_after_a_failure(video: Path) -> None:
    """A failed call leaves no worker or pipe behind that a later call would trip over."""
    with ParallelReader(video, workers=2) as reader:
        with pytest.raises(VideoError):
            finishes(lambda: list(reader.frames([0.0, -1.0])))
        frames = finishes(lambda: list(reader.frames([0.0, 1.0, 2.0])))
    assert [frame.index for frame in frames] == [0, 1, 2] and reader.report.delivered == 3
    assert multiprocessing.active_children() == []
