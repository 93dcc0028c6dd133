"""End-to-end: the `malmm` command on generated videos with a tiny random model in HF format."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import media
from tests.conftest import FAST
from tests.test_writers import parse_srt, parse_vtt


@pytest.fixture(scope="session")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Clips of several lengths, rates, sizes and containers, and a folder of them."""
    root = tmp_path_factory.mktemp("videos")
    media.make_video(root / "short.mp4", seconds=3, fps=10, size=(64, 48))
    media.make_video(root / "five.mp4", seconds=5, fps=10, size=(96, 64))
    media.make_video(root / "vfr.mp4", seconds=4, fps=15, vfr=True)
    folder = root / "folder"
    (folder / "nested").mkdir(parents=True)
    media.make_video(folder / "a.mp4", seconds=2, fps=8, size=(64, 48))
    media.make_video(folder / "nested" / "b.mkv", seconds=3, fps=12, size=(80, 48))
    (folder / "notes.txt").write_text("not a video\n")
    return root


def test_caption_prints_one_line_and_logs_to_stderr(run, videos: Path) -> None:
    result = run("caption", videos / "short.mp4", "--frames", "4")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 and result.stdout.strip()
    assert "Loaded" in result.stderr and "4 frames" in result.stderr
    assert "\x1b[" not in result.stderr and "\r" not in result.stderr  # not a terminal: nothing animated


def test_caption_json_with_segments_and_real_timestamps(run, videos: Path) -> None:
    result = run("caption", videos / "five.mp4", "--fps", "2", "--segment", "2s", "--format", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["file"] == str(videos / "five.mp4") and data["task"] == "caption" and data["caption"]
    assert data["frames"] == 10 and data["duration"] == pytest.approx(5.0, abs=0.05)
    assert data["first_frame"] == pytest.approx(0.0, abs=0.01) and data["last_frame"] == pytest.approx(4.5, abs=0.01)
    assert [(s["start"], s["end"]) for s in data["segments"]] == [(0.0, 2.0), (2.0, 4.0), (4.0, 5.0)]


@pytest.mark.parametrize("segment", ["90", "00:00:02", "1m", "1s500ms"])
def test_duration_syntaxes(run, videos: Path, segment: str) -> None:
    result = run("caption", videos / "short.mp4", "--fps", "2", "--segment", segment, "--format", "jsonl")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["segments"]


def test_every_format_is_written_and_parses_back(run, videos: Path, tmp_path: Path) -> None:
    formats = ["txt", "json", "jsonl", "srt", "vtt", "csv"]
    args = [f for fmt in formats for f in ("--format", fmt)]
    result = run("caption", videos / "five.mp4", "--fps", "2", "--segment", "2", "--output-dir", tmp_path, *args)
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"five.{fmt}" for fmt in formats)
    data = json.loads((tmp_path / "five.json").read_text())
    assert json.loads((tmp_path / "five.jsonl").read_text()) == data
    spans = [(s["start"], s["end"], s["text"]) for s in data["segments"]]
    assert [(c.start, c.end, c.text) for c in parse_srt((tmp_path / "five.srt").read_text())] == spans
    assert [(c.start, c.end, c.text) for c in parse_vtt((tmp_path / "five.vtt").read_text())] == spans
    rows = list(csv.DictReader(io.StringIO((tmp_path / "five.csv").read_text())))
    assert [r["kind"] for r in rows] == ["caption", "segment", "segment", "segment"]
    assert (tmp_path / "five.txt").read_text().splitlines()[0] == data["caption"]
    assert result.stdout.splitlines()[0] == data["caption"]  # stdout gets the first format


def test_ask_one_question_and_a_question_file(run, videos: Path, tmp_path: Path) -> None:
    result = run("ask", videos / "short.mp4", "what is the man doing?", "--frames", "3")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1
    questions = tmp_path / "questions.txt"
    questions.write_text("who is there?\n\n# a comment\nwhat happens next?\nwhere is it?\n")
    result = run("ask", videos / "short.mp4", "--question-file", questions, "--frames", "3", "--format", "json")
    assert result.exit_code == 0, result.stderr
    answers = json.loads(result.stdout)["answers"]
    assert [a["question"] for a in answers] == ["who is there?", "what happens next?", "where is it?"]
    assert all(a["answer"] for a in answers)


def test_ask_over_a_folder(run, videos: Path) -> None:
    result = run("ask", videos / "folder", "what happens?", "--frames", "3", "--format", "jsonl")
    assert result.exit_code == 0, result.stderr
    files = [json.loads(line)["file"] for line in result.stdout.splitlines()]
    assert [Path(f).name for f in files] == ["a.mp4", "b.mkv"]


def test_predict_timeline_and_next_action(run, videos: Path) -> None:
    result = run("predict", videos / "five.mp4", "--fps", "2", "--every", "2s", "--format", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [(s["start"], s["end"]) for s in data["timeline"]] == [(0.0, 2.0), (2.0, 4.0), (4.0, 5.0)]
    assert data["next_action"] and "labels" not in data


def test_predict_ranks_labels(run, videos: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cooking\nplaying ball\nswimming\ndancing\nmaking pancakes\n")
    result = run(
        "predict", videos / "short.mp4", "--labels", labels, "--top-k", "3", "--frames", "4", "--format", "json"
    )
    assert result.exit_code == 0, result.stderr
    ranked = json.loads(result.stdout)["labels"]
    assert len(ranked) == 3
    assert [r["log_likelihood"] for r in ranked] == sorted((r["log_likelihood"] for r in ranked), reverse=True)
    assert all(0 < r["probability"] < 1 for r in ranked) and sum(r["probability"] for r in ranked) <= 1.0001
    assert {r["label"] for r in ranked} <= set(labels.read_text().split("\n"))
    text = run("predict", videos / "short.mp4", "--labels", labels, "--frames", "4").stdout.splitlines()
    assert len(text) == 5 and re.fullmatch(r"0\.\d{4}\t.+", text[0])


def test_folder_mode_mirrors_subfolders_and_resumes(run, videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run("caption", videos / "folder", "--frames", "3", "--output-dir", out, "--format", "json")
    assert first.exit_code == 0, first.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json")) == ["a.json", "nested/b.json"]
    assert "malmm summary" in first.stderr
    stamp = (out / "a.json").stat().st_mtime_ns

    again = run("caption", videos / "folder", "--frames", "3", "--output-dir", out, "--format", "json")
    assert again.exit_code == 0 and "Loading" not in again.stderr  # nothing left to do: no model load
    assert again.stderr.count("skipped") == 2 and (out / "a.json").stat().st_mtime_ns == stamp

    (out / "nested" / "b.json").unlink()
    resumed = run("caption", videos / "folder", "--frames", "3", "--output-dir", out, "--format", "json")
    assert resumed.exit_code == 0 and "b.mkv: 3 frames" in resumed.stderr and "a.mp4: 3 frames" not in resumed.stderr

    redone = run("caption", videos / "folder", "--frames", "3", "--output-dir", out, "--format", "json", "--overwrite")
    assert redone.exit_code == 0 and (out / "a.json").stat().st_mtime_ns != stamp


@pytest.fixture(scope="session")
def bad_inputs(videos: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Each bad input with the words its one-line reason must contain."""
    root = tmp_path_factory.mktemp("bad")
    source = media.make_video(root / "source.mp4", seconds=6, fps=10, faststart=False)
    (root / "empty_folder").mkdir()
    return {
        "missing": (root / "missing.mp4", "no such file"),
        "zero bytes": (media.make_empty_file(root / "zero.mp4"), "empty file"),
        "not a video": (media.make_text_file(root / "text.mp4"), "not a video"),
        "audio only": (media.make_audio_only(root / "song.m4a"), "audio only"),
        "truncated": (media.make_truncated(source, root / "cut.mp4", 0.5, faststart=False), "damaged or incomplete"),
        "unsupported codec": (media.make_unsupported_codec(root / "odd.avi"), "codec"),
        "no videos": (root / "empty_folder", "no video files"),
    }


def test_bad_inputs_never_stop_a_batch(run, videos: Path, bad_inputs) -> None:
    paths = [path for path, _ in bad_inputs.values()]
    result = run("caption", *paths[:4], videos / "short.mp4", *paths[4:], "--frames", "3", "--format", "jsonl")
    assert result.exit_code == 1
    assert [Path(json.loads(line)["file"]).name for line in result.stdout.splitlines()] == ["short.mp4"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    for name, (path, reason) in bad_inputs.items():
        matching = [line for line in errors if str(path) in line]
        assert len(matching) == 1, (name, errors)
        assert reason in matching[0], (name, matching[0])
    assert "Traceback" not in result.stderr and "malmm summary" in result.stderr
    assert result.stderr.count("failed") >= len(bad_inputs)


def test_damaged_file_gives_a_partial_result(run, tmp_path: Path) -> None:
    source = media.make_video(tmp_path / "source.mp4", seconds=8, fps=10, keyint=10)
    cut = media.make_truncated(source, tmp_path / "half.mp4", 0.5, faststart=True)
    result = run("caption", cut, "--fps", "1", "--format", "json")
    assert result.exit_code == 1, result.stderr  # written, but not all of the video could be read
    data = json.loads(result.stdout)
    assert data["caption"] and 0 < data["frames"] < 8 and data["warnings"]
    assert "warning:" in result.stderr and "partial" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["caption", "X", "--frames", "4", "--fps", "1"], "not both"),
        (["caption", "X", "--segment", "soon"], "invalid duration"),
        (["caption", "X", "--format", "docx"], "docx"),
        (["caption", "X", "--frames", "0"], "--frames"),
        (["ask", "X"], "QUESTION"),
        (["predict", "X", "--labels", "missing-labels.txt"], "cannot read"),
        (["caption", "X", "--device", "tpu"], "unknown device"),
        (["caption", "X", "--format", "json", "--format", "json"], "twice"),
    ],
)
def test_usage_errors_exit_2(run, videos: Path, args: list[str], message: str) -> None:
    args = [str(videos / "short.mp4") if a == "X" else a for a in args]
    result = run(*args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert message in result.stderr and "Traceback" not in result.stderr


def test_unloadable_model_is_one_line_and_exit_2(run, videos: Path, tmp_path: Path) -> None:
    result = run("caption", videos / "short.mp4", "--model", tmp_path / "nowhere", *FAST, model=False)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "neither a model folder nor a hub id" in result.stderr


def test_same_names_from_two_folders_are_refused_with_output_dir(run, videos: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(videos / "folder", other)
    result = run("caption", videos / "folder" / "a.mp4", other / "a.mp4", "--output-dir", tmp_path / "out")
    assert result.exit_code == 2 and "would write the same results" in result.stderr


def test_quiet_and_version(run, videos: Path) -> None:
    result = run("caption", videos / "short.mp4", "--frames", "3", "--quiet")
    assert result.exit_code == 0 and result.stderr == "" and result.stdout.strip()
    version = run("--version", model=False)
    assert version.exit_code == 0 and version.stdout.startswith("malmm ")


def test_help_reads_well(run) -> None:
    for command in ([], ["caption"], ["ask"], ["predict"], ["models"], ["doctor"]):
        result = run(*command, "--help", model=False)
        assert result.exit_code == 0, command
    assert "Exit status: 0 all inputs succeeded" in " ".join(run("--help", model=False).stdout.split())
    assert "--segment" in run("caption", "--help", model=False).stdout


def test_ctrl_c_stops_cleanly_with_130(tiny_llama_dir: Path, tmp_path: Path) -> None:
    long = media.make_video(tmp_path / "long.mp4", seconds=60, fps=10, size=(64, 48))
    command = [str(Path(sys.executable).parent / "malmm"), "caption", str(long), "--fps", "10",
               "--model", str(tiny_llama_dir), *FAST]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        stderr = ""
        while "Loaded" not in stderr and time.monotonic() < deadline:  # wait until it is reading frames
            line = process.stderr.readline()
            if not line and process.poll() is not None:
                break
            stderr += line
        time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:  # never leave it running, whatever failed above
            process.kill()
            process.communicate()
    stderr += err
    assert process.returncode == 130, stderr
    assert "Interrupted" in stderr and "Traceback" not in stderr and out == ""


def test_second_question_uses_the_feature_cache(run, videos: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MALMM_CACHE_DIR", str(tmp_path / "cache"))
    first = run("ask", videos / "five.mp4", "who is there?", "--frames", "6")
    second = run("ask", videos / "five.mp4", "what happens next?", "--frames", "6")
    assert first.exit_code == second.exit_code == 0
    assert "from the cache" not in first.stderr and "from the cache" in second.stderr
    info = run("cache", "info", model=False)
    assert "entries: 1 videos" in info.stdout and str(tmp_path / "cache") in info.stdout
    bypass = run("ask", videos / "short.mp4", "who?", "--frames", "6", "--no-cache")
    assert bypass.exit_code == 0 and "entries: 1 videos" in run("cache", "info", model=False).stdout
    cleared = run("cache", "clear", model=False)
    assert cleared.exit_code == 0 and "entries: 0 videos" in run("cache", "info", model=False).stdout
