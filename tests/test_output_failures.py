"""When what receives the results fails: stdout closed by its reader or full, a full disk under
--output-dir. Results already made are never lost, and the user gets one clear line."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from malmm_cli.commands.progress import Reporter
from malmm_cli.jobs import batch
from malmm_cli.jobs.batch import run_batch
from malmm_cli.jobs.records import Settings
from malmm_cli.media.inputs import Input
from malmm_cli.output.stdout import StdoutClosed, StdoutWriter
from malmm_cli.reading.results import VideoResult
from tests import media
from tests.conftest import FAST


def _settings() -> Settings:
    return Settings("caption", {}, "model@rev", None, "frames=4,seek=exact", 10, {"dtype": "auto"}, {"num_beams": 1})


def _result(path: str) -> VideoResult:
    return VideoResult(path, "caption", 4.0, 2, 0.0, 3.0, caption=f"caption of {path}")


def _items(folder: Path, names: str) -> list[Input]:
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for name in names:
        (folder / f"{name}.mp4").write_bytes(b"x")
        items.append(Input(folder / f"{name}.mp4", Path(name)))
    return items


def _read_all(group, _progress, done):
    results = [_result(str(item.path)) for item in group]
    for number, result in enumerate(results):
        done(number, result)
    return results


class _ClosedAfter(io.StringIO):
    """A stdout whose reader goes away after `lines` lines, as `| head -n 1` does."""

    def __init__(self, lines: int, error: OSError):
        super().__init__()
        self.lines, self.error = lines, error

    def write(self, text: str) -> int:
        if self.getvalue().count("\n") >= self.lines:
            raise self.error
        return super().write(text)


@pytest.mark.parametrize(
    ("error", "said"),
    [(BrokenPipeError(errno.EPIPE, "Broken pipe"), "closed by its reader"),
     (OSError(errno.ENOSPC, "No space left on device"), "No space left on device")],
)  # fmt: skip
def test_a_stdout_that_stops_taking_results_leaves_the_folder_whole(tmp_path: Path, error: OSError, said: str) -> None:
    items = _items(tmp_path / "in", "abcdef")
    stream = _ClosedAfter(1, error)
    stdout = StdoutWriter("jsonl", single=False, stream=stream)
    reporter = Reporter(quiet=True)
    outcomes = run_batch(items, _read_all, reporter=reporter, formats=["json"], output_dir=tmp_path / "out",
                         stdout=stdout, settings=_settings(), videos_at_once=2)  # fmt: skip
    assert [o.status for o in outcomes] == ["done"] * 6  # no video failed because stdout did
    assert sorted(p.name for p in (tmp_path / "out").glob("*.json")) == [f"{n}.caption.json" for n in "abcdef"]
    assert len(stream.getvalue().splitlines()) == 1
    assert stdout.closed is not None and said in str(stdout.closed)
    assert stdout.closed.reader_gone is isinstance(error, BrokenPipeError)


def test_without_an_output_folder_a_closed_stdout_stops_the_run(tmp_path: Path) -> None:
    items = _items(tmp_path / "in", "abcd")
    read: list[str] = []

    def read_one_by_one(group, _progress, done):
        results = []
        for number, item in enumerate(group):
            read.append(item.stem.name)
            results.append(_result(str(item.path)))
            done(number, results[-1])
        return results

    stdout = StdoutWriter("jsonl", single=False, stream=_ClosedAfter(1, BrokenPipeError(errno.EPIPE, "Broken pipe")))
    with pytest.raises(StdoutClosed) as raised:
        run_batch(items, read_one_by_one, reporter=Reporter(quiet=True), formats=["jsonl"], output_dir=None,
                  stdout=stdout, settings=_settings(), videos_at_once=1)  # fmt: skip
    assert raised.value.reader_gone
    assert read == ["a", "b"]  # nothing is read for nobody


def test_a_json_document_that_cannot_be_printed_is_said(tmp_path: Path) -> None:
    stdout = StdoutWriter("json", single=False, stream=_ClosedAfter(0, OSError(errno.ENOSPC, "No space left")))
    stdout.add(_result("a.mp4"))
    with pytest.raises(StdoutClosed, match="No space left"):
        stdout.close()


def test_results_of_a_video_that_failed_to_write_are_all_removed(tmp_path: Path, monkeypatch) -> None:
    """A full disk half-way through a video's formats: it is reported failed and leaves no json
    that looks finished."""
    items = _items(tmp_path / "in", "abc")
    original = batch.write_atomic

    def full_for_b_srt(path: Path, text: str) -> None:
        if path.name == "b.caption.srt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        original(path, text)

    monkeypatch.setattr(batch, "write_atomic", full_for_b_srt)
    out = tmp_path / "out"
    outcomes = run_batch(items, _read_all, reporter=Reporter(quiet=True), formats=["json", "srt"], output_dir=out,
                         stdout=None, settings=_settings(), videos_at_once=3)  # fmt: skip
    assert [o.status for o in outcomes] == ["done", "failed", "done"]
    assert "No space left on device" in outcomes[1].detail
    assert sorted(p.name for p in out.glob("*.caption.*")) == [
        f"{n}.caption.{f}" for n in "ac" for f in ("json", "srt")
    ]


def test_a_full_disk_for_the_index_is_one_line_and_the_summary_still_shows(run, tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a", "b"):
        media.make_video(folder / f"{name}.mp4", seconds=1, fps=8, size=(64, 48))
    original = batch.write_atomic

    def full_for_the_index(path: Path, text: str) -> None:
        if path.name == batch.INDEX_PAGE:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        original(path, text)

    monkeypatch.setattr(batch, "write_atomic", full_for_the_index)
    out = tmp_path / "out"
    result = run("caption", folder, "--frames", "4", "-f", "html", "-o", out, "--no-cache")
    assert result.exit_code == 1, result.stderr
    assert "cannot write the index of the reports: No space left on device" in result.stderr
    assert "unexpected" not in result.stderr
    assert "a.mp4" in result.stderr and "b.mp4" in result.stderr  # the summary table
    assert (out / "a.caption.html").is_file() and (out / "b.caption.html").is_file()


def _malmm(model: Path, *args: str | Path) -> list[str]:
    return [str(Path(sys.executable).parent / "malmm"), *map(str, args), "--model", str(model), *FAST]


@pytest.fixture(scope="module")
def six_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first ends at once, the others take a while: `head` goes away while they are read."""
    folder = tmp_path_factory.mktemp("six")
    for number in range(6):
        media.make_video(folder / f"clip{number}.mp4", seconds=1 if number == 0 else 8, fps=8, size=(64, 48))
    return folder


def _head_one_line(command: list[str]) -> tuple[int, str, str]:
    """`command | head -n 1`: read one line of stdout, close the pipe, wait for the end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        first = process.stdout.readline().decode()
        process.stdout.close()
        stderr = process.stderr.read().decode()
        process.wait(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, first, stderr


def test_head_on_stdout_keeps_every_result_in_the_folder(tiny_llama_dir: Path, six_clips: Path, tmp_path: Path) -> None:
    """`malmm caption clips/ -f jsonl -o OUT | head -n 1` reported every later video as failed with
    BrokenPipeError, and 2 of 6 results reached OUT."""
    out = tmp_path / "out"
    command = _malmm(tiny_llama_dir, "caption", six_clips, "-f", "jsonl", "-o", out, "--fps", "8", "--no-cache")
    status, first, stderr = _head_one_line(command)
    assert status == 0, stderr
    assert json.loads(first)["file"].endswith("clip0.mp4")
    assert len(list(out.glob("*.caption.jsonl"))) == 6
    assert "stdout was closed by its reader: results go on to" in stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr and "Exception ignored" not in stderr


def test_head_on_stdout_without_a_folder_stops_quietly(tiny_llama_dir: Path, six_clips: Path) -> None:
    command = _malmm(
        tiny_llama_dir, "caption", six_clips, "-f", "jsonl", "--fps", "8", "--no-cache", "--video-batch", "1"
    )
    status, first, stderr = _head_one_line(command)
    assert status == 0, stderr
    assert json.loads(first)["file"].endswith("clip0.mp4")
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr and "Exception ignored" not in stderr
    assert "failed" not in stderr
    assert "clip5.mp4" not in stderr  # the run stopped: nothing is read for nobody


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_stdout_is_one_line_and_exit_1(tiny_llama_dir: Path, six_clips: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = _malmm(tiny_llama_dir, "caption", six_clips, "-f", "jsonl", "-o", out, "--frames", "4", "--no-cache")
    with open("/dev/full", "w") as full:
        done = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300, check=False,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("cannot write to stdout: No space left on device") == 1
    assert len(list(out.glob("*.caption.jsonl"))) == 6
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr


@pytest.mark.parametrize(("sent", "word", "status"), [(signal.SIGINT, "Interrupted", 130),
                                                    (signal.SIGTERM, "Terminated", 143)])  # fmt: skip
def test_a_signal_right_after_a_video_ends_keeps_its_result(
    tiny_llama_dir: Path, tmp_path: Path, sent: int, word: str, status: int
) -> None:
    """SIGTERM (`kill`, a service manager) ended malmm with status 143 and no word; and Ctrl-C or
    SIGTERM right after a video's progress line lost its result (json printed `[]`)."""
    folder = tmp_path / "clips"
    folder.mkdir()
    media.make_video(folder / "a.mp4", seconds=1, fps=8, size=(64, 48))
    media.make_video(folder / "b.mp4", seconds=60, fps=10, size=(64, 48))
    command = _malmm(tiny_llama_dir, "caption", folder, "--fps", "8", "-f", "json", "--no-cache", "--video-batch", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, process_group=0,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's foreground job
    )  # fmt: skip
    stderr = ""
    try:
        while "a.mp4: " not in stderr:
            line = process.stderr.readline()
            if not line:
                break
            stderr += line
        os.killpg(process.pid, sent)  # at once: while a.mp4's results are being written
        out, rest = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    stderr += rest
    assert process.returncode == status, stderr
    assert f"{word}: results of finished videos are kept." in stderr and "Traceback" not in stderr
    assert [Path(d["file"]).name for d in json.loads(out)] == ["a.mp4"]
