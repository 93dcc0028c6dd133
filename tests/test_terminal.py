"""What a person sees in a terminal: animated bars, the download bar, and one-line failures."""

from __future__ import annotations

import io
import re
import socket
from pathlib import Path

import pytest
import torch
from rich.console import Console
from rich.progress import Progress

from malmm_cli.commands import progress
from malmm_cli.commands.progress import Reporter
from malmm_cli.jobs.batch import run_batch
from malmm_cli.jobs.records import Settings
from malmm_cli.media.inputs import Input
from malmm_cli.output.stdout import StdoutWriter
from malmm_cli.reading.results import VideoResult
from tests import media
from tests.fake_hub import FakeHub, fill_cache

REPO = "Salesforce/instructblip-vicuna-7b"


def test_bars_in_a_terminal(run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a terminal, stderr gets live bars (per video and overall); stdout still only results."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a", "b"):
        media.make_video(folder / f"{name}.mp4", seconds=2, fps=10)
    result = run("caption", folder, "--frames", "3", "--format", "jsonl")
    assert result.exit_code == 0, result.stderr
    assert "\x1b[" in result.stderr  # drawn, not plain lines
    assert "all videos" in result.stderr and "2/2" in result.stderr  # the overall bar, drawn to its end
    assert "\x1b[" not in result.stdout and len(result.stdout.splitlines()) == 2


def test_download_bar_counts_the_bytes(tiny_llama_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    from malmm_cli.jobs import hub

    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    reporter = Reporter(console=console)
    seen: list[Progress] = []
    original = progress._rich_tqdm

    def spy(bars: Progress, description: str) -> type:
        seen.append(bars)
        return original(bars, description)

    monkeypatch.setattr(progress, "_rich_tqdm", spy)
    with FakeHub({REPO: tiny_llama_dir}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        folder = hub.resolve(REPO, reporter.downloading)
    expected = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    (task,) = seen[0].tasks  # one bar: bytes written, of the known total
    assert task.completed == task.total == expected
    assert f"download {REPO}" in console.file.getvalue()


def test_out_of_gpu_memory_is_one_line_and_the_batch_goes_on(tmp_path: Path) -> None:
    console = Console(file=io.StringIO(), width=200)
    reporter = Reporter(console=console)
    inputs = [Input(tmp_path / "a.mp4", Path("a")), Input(tmp_path / "b.mp4", Path("b"))]
    done = []

    def process(items: list[Input], _progress, _done) -> list[VideoResult]:
        (item,) = items  # one video at a time (the default)
        if item.path.name == "a.mp4":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        done.append(item.path.name)
        return [VideoResult(str(item.path), "caption", 1.0, 1, 0.0, 0.0, caption="ok")]

    stdout = io.StringIO()
    settings = Settings("caption", {}, "model", None, "frames=3", 40, {}, {})
    outcomes = run_batch(inputs, process, reporter=reporter, formats=["txt"], output_dir=None, settings=settings,
                         stdout=StdoutWriter("txt", single=False, stream=stdout))  # fmt: skip
    assert [o.status for o in outcomes] == ["failed", "done"] and done == ["b.mp4"]
    errors = [line for line in console.file.getvalue().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "out of GPU memory: try --quantize 4bit" in errors[0]
    assert "Traceback" not in console.file.getvalue()


def test_cached_hub_model_runs_offline(run, tiny_llama_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """A hub id found in the cache is used with no network at all, HF_HUB_OFFLINE or not."""
    fill_cache(tmp_path / "hf", REPO, tiny_llama_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network used: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    clip = media.make_video(tmp_path / "clip.mp4", seconds=2, fps=10)
    result = run("caption", clip, "--frames", "3", "--device", "cpu", "--num-beams", "1", "--model", REPO,
                 model=False)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert f"Loaded {REPO}" in result.stderr


def test_a_narrow_terminal_drops_fields_rather_than_cutting_them() -> None:
    """At 60 columns Rich shrank every field alike: '2… 1… eta 0…'."""
    from rich.progress import Progress

    for width in (40, 60, 80, 120):
        console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
        with Progress(*progress._video_columns(width), console=console, auto_refresh=False) as bars:
            bars.advance(bars.add_task("/videos/a-rather-long-lecture-name.mp4", total=100), 12)
            bars.refresh()
        drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", console.file.getvalue())
        line = [part for part in re.split(r"[\r\n]", drawn) if "/100" in part][-1].rstrip()
        assert len(line) <= width and "12/100" in line and "eta -:--:--" in line, (width, line)
        assert line.count("…") <= 1, (width, line)  # the name alone may be cut
    assert "━" in line and "0:00:00 eta" in line  # at 120 columns: the bar and the elapsed time too


def test_the_summary_is_whole_lines_off_a_terminal() -> None:
    """Off a terminal the summary folded paths at 30 columns (an 80-column default); a log wants them whole."""
    path = "/archive/2024/lectures/week-07/a-long-lecture-recording-name.mp4"
    reporter = Reporter(console=Console(file=io.StringIO(), width=80, highlight=False))
    reporter.table(progress.summary_table([progress.Outcome(path, "failed", "no video stream in it"),
                                           progress.Outcome("b.mp4", "done", "80 frames", 1.5)]))  # fmt: skip
    text = reporter.console.file.getvalue()
    assert any(path in line and "no video stream in it" in line for line in text.splitlines()), text


def test_each_video_has_its_bar_among_the_batch_bars() -> None:
    """A video's bar is drawn among the batch's bars, advances by its frames and goes once it ends."""
    reporter = Reporter(console=Console(file=io.StringIO(), force_terminal=True, width=120))
    with reporter.batch(2):
        bar = reporter.video("a.mp4")
        bar.start(10)
        bar.advance(4)
        (task,) = [t for t in bar.bars.tasks if t.description == "a.mp4"]
        assert (task.completed, task.total) == (4, 10)
        bar.finish()
        assert all(t.description != "a.mp4" for t in bar.bars.tasks)
    assert reporter.video("b.mp4").bars is None  # outside a batch: a closing line only
