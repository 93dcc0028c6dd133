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


@pytest.mark.parametrize(
    ("segment", "spans"),
    [
        ("90", [(0.0, 3.0)]),  # longer than the 3 s clip: one segment
        ("1m", [(0.0, 3.0)]),
        ("2", [(0.0, 2.0), (2.0, 3.0)]),  # bare seconds
        ("00:00:02", [(0.0, 2.0), (2.0, 3.0)]),
        ("0:01", [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]),
        ("1s500ms", [(0.0, 1.5), (1.5, 3.0)]),
        ("1.5", [(0.0, 1.5), (1.5, 3.0)]),
    ],
)
def test_duration_syntaxes(run, videos: Path, segment: str, spans: list[tuple[float, float]]) -> None:
    """Each syntax gives segments of its length, not merely some segments."""
    result = run("caption", videos / "short.mp4", "--fps", "2", "--segment", segment, "--format", "jsonl")
    assert result.exit_code == 0, result.stderr
    got = [(s["start"], s["end"]) for s in json.loads(result.stdout)["segments"]]
    assert got == [(pytest.approx(a, abs=0.01), pytest.approx(b, abs=0.01)) for a, b in spans]


def test_every_format_is_written_and_parses_back(run, videos: Path, tmp_path: Path) -> None:
    formats = ["txt", "json", "jsonl", "srt", "vtt", "csv"]
    args = [f for fmt in formats for f in ("--format", fmt)]
    result = run("caption", videos / "five.mp4", "--fps", "2", "--segment", "2", "--output-dir", tmp_path, *args)
    assert result.exit_code == 0, result.stderr
    written = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert written == sorted(f"five.caption.{fmt}" for fmt in formats)
    data = json.loads((tmp_path / "five.caption.json").read_text())
    assert json.loads((tmp_path / "five.caption.jsonl").read_text()) == data
    spans = [(s["start"], s["end"], s["text"]) for s in data["segments"]]
    assert [(c.start, c.end, c.text) for c in parse_srt((tmp_path / "five.caption.srt").read_text())] == spans
    assert [(c.start, c.end, c.text) for c in parse_vtt((tmp_path / "five.caption.vtt").read_text())] == spans
    rows = list(csv.DictReader(io.StringIO((tmp_path / "five.caption.csv").read_text())))
    assert [r["kind"] for r in rows] == ["caption", "segment", "segment", "segment"]
    assert (tmp_path / "five.caption.txt").read_text().splitlines()[0] == data["caption"]
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
    results = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json") if ".malmm" not in p.parts)
    assert results == ["a.caption.json", "nested/b.caption.json"]
    assert "malmm summary" in first.stderr
    stamp = (out / "a.caption.json").stat().st_mtime_ns

    again = run("caption", videos / "folder", "--frames", "3", "--output-dir", out, "--format", "json")
    assert again.exit_code == 0 and "Loading" not in again.stderr  # nothing left to do: no model load
    assert again.stderr.count("skipped") == 2 and (out / "a.caption.json").stat().st_mtime_ns == stamp
    assert json.loads(again.stdout) == json.loads(first.stdout)  # stdout still has every result (it was [])

    (out / "nested" / "b.caption.json").unlink()
    resumed = run("caption", videos / "folder", "--frames", "3", "--output-dir", out, "--format", "json")
    assert resumed.exit_code == 0 and "b.mkv: 3 frames" in resumed.stderr and "a.mp4: 3 frames" not in resumed.stderr
    assert [Path(d["file"]).name for d in json.loads(resumed.stdout)] == ["a.mp4", "b.mkv"]  # in input order
    text = run("caption", videos / "folder", "--frames", "3", "--output-dir", out, "--format", "txt")
    again = run("caption", videos / "folder", "--frames", "3", "--output-dir", out, "--format", "txt")
    assert again.stdout == text.stdout and "skipped" in again.stderr and "# " in again.stdout
    redone = run("caption", videos / "folder", "--frames", "3", "--output-dir", out, "--format", "json", "--overwrite")
    assert redone.exit_code == 0 and (out / "a.caption.json").stat().st_mtime_ns != stamp


def test_a_rerun_trusts_only_the_formats_its_settings_made(run, videos: Path, tmp_path: Path) -> None:
    """An srt left by a run with other settings was kept as if the new settings had made it."""
    out, clip = tmp_path / "out", videos / "short.mp4"
    first = run("caption", clip, "--frames", "4", "--segment", "1s", "-f", "srt", "-f", "json", "-o", out)
    other = run("caption", clip, "--frames", "3", "-f", "json", "-o", out)  # another setting, json only
    assert first.exit_code == other.exit_code == 0, other.stderr
    old_subtitles = (out / "short.caption.srt").read_text()
    redo = run("caption", clip, "--frames", "3", "-f", "srt", "-o", out)
    assert redo.exit_code == 0 and "made again" in redo.stderr and "srt made with other settings" in redo.stderr
    subtitles = (out / "short.caption.srt").read_text()
    assert subtitles != old_subtitles and redo.stdout == subtitles
    skip = run("caption", clip, "--frames", "3", "-f", "srt", "-o", out)  # now it was: printed from the file
    assert skip.exit_code == 0 and "Loading" not in skip.stderr and skip.stdout == redo.stdout
    assert "results made with the same settings are in" in skip.stderr


def test_a_rerun_with_other_settings_redoes_and_other_tasks_keep_their_files(run, videos: Path, tmp_path: Path) -> None:
    """`caption -o out`, then `ask -o out` used to print [] and skip every video."""
    out = tmp_path / "out"
    folder = videos / "folder"
    captions = run("caption", folder, "--frames", "3", "-o", out, "-f", "json")
    asked = run("ask", folder, "what colour is the car?", "--frames", "3", "-o", out, "-f", "json")
    assert captions.exit_code == asked.exit_code == 0, asked.stderr
    assert [Path(d["file"]).name for d in json.loads(asked.stdout)] == ["a.mp4", "b.mkv"]
    assert json.loads((out / "a.caption.json").read_text())["caption"]  # the captions are still there
    assert json.loads((out / "a.ask.json").read_text())["answers"][0]["question"] == "what colour is the car?"

    other = run("ask", folder, "who drives?", "--frames", "3", "-o", out, "-f", "json")
    assert other.exit_code == 0 and "2 of 2 videos have results" in other.stderr and "questions" in other.stderr
    assert json.loads((out / "a.ask.json").read_text())["answers"][0]["question"] == "who drives?"
    for changed in (["--frames", "4"], ["--memory-bank-length", "3"], ["--max-new-tokens", "3"]):
        redo = run("ask", folder, "who drives?", "--frames", "3", *changed, "-o", out, "-f", "json")
        assert redo.exit_code == 0 and "made again" in redo.stderr, changed
    same = run("ask", folder, "who drives?", "--frames", "3", "--max-new-tokens", "3", "-o", out, "-f", "json")
    assert same.exit_code == 0 and same.stderr.count("skipped") == 2 and "Loading" not in same.stderr


@pytest.fixture(scope="session")
def bad_inputs(videos: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Each bad input with the words its one-line reason must contain."""
    root = tmp_path_factory.mktemp("bad")
    source = media.make_video(root / "source.mp4", seconds=6, fps=10, faststart=False)
    (root / "empty_folder").mkdir()
    (root / "loop.mp4").symlink_to(root / "loop.mp4")
    return {
        "symlink loop": (root / "loop.mp4", "points back to itself"),
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
    assert "warning:" in result.stderr and "malmm summary" not in result.stderr  # the table is for batches


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


def _interrupted(command: list[str], ready: str, timeout: float = 120, after: float = 0.5) -> tuple[int, str, str]:
    """Run malmm, press Ctrl-C `after` seconds once `ready` appears on stderr; (status, stdout, stderr).

    The child gets its own process group with SIGINT at its default, as a shell's foreground job
    has: a background job of a non-interactive shell (CI) starts with SIGINT ignored, and would
    then never see the Ctrl-C.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, process_group=0,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    stderr = ""
    try:
        deadline = time.monotonic() + timeout
        while ready not in stderr and time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line and process.poll() is not None:
                break
            stderr += line
        time.sleep(after)
        os.killpg(process.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:  # never leave it running, whatever failed above
            process.kill()
            process.communicate()
    return process.returncode, out, stderr + err


def _malmm(tiny_llama_dir: Path, *args: str | Path) -> list[str]:
    return [str(Path(sys.executable).parent / "malmm"), *map(str, args), "--model", str(tiny_llama_dir), *FAST]


def test_ctrl_c_stops_cleanly_with_130(tiny_llama_dir: Path, tmp_path: Path) -> None:
    long = media.make_video(tmp_path / "long.mp4", seconds=60, fps=10, size=(64, 48))
    status, out, err = _interrupted(_malmm(tiny_llama_dir, "caption", long, "--fps", "10"), "Loaded")
    assert status == 130, err
    assert "Interrupted" in err and "Traceback" not in err and out == ""


def test_ctrl_c_keeps_the_finished_videos_json_on_stdout(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Interrupted folder runs with -f json used to print nothing at all."""
    folder = tmp_path / "clips"
    folder.mkdir()
    media.make_video(folder / "a.mp4", seconds=2, fps=10)
    media.make_video(folder / "b.mp4", seconds=60, fps=10)
    command = _malmm(tiny_llama_dir, "caption", folder, "--fps", "10", "--format", "json", "--no-cache")
    status, out, err = _interrupted(command, "a.mp4: 20 frames")
    assert status == 130, err
    assert [Path(d["file"]).name for d in json.loads(out)] == ["a.mp4"]


def test_second_question_uses_the_feature_cache(run, videos: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MALMM_CACHE_DIR", str(tmp_path / "cache"))
    first = run("ask", videos / "five.mp4", "who is there?", "--frames", "6")
    second = run("ask", videos / "five.mp4", "what happens next?", "--frames", "6")
    assert first.exit_code == second.exit_code == 0
    assert "from the cache" not in first.stderr and "from the cache" in second.stderr
    info = run("cache", "info", model=False)
    assert "entries: 1 video," in info.stdout and str(tmp_path / "cache") in info.stdout
    bypass = run("ask", videos / "short.mp4", "who?", "--frames", "6", "--no-cache")
    assert bypass.exit_code == 0 and "entries: 1 video," in run("cache", "info", model=False).stdout
    from malmm_cli.reading.feature_cache import _this_host

    (tmp_path / "cache" / f".{'a' * 40}.{_this_host()}-999999999-0a1b.partial").mkdir()  # left by a killed run
    assert (
        "unfinished: 1 (0.00 GiB): 0 being written, 1 left by runs that stopped"
        in run("cache", "info", model=False).stdout
    )
    cleared = run("cache", "clear", model=False)
    assert cleared.exit_code == 0 and "entries: 0 videos" in run("cache", "info", model=False).stdout


def test_inputs_and_output_folder_are_checked_before_the_model_loads(run, videos: Path, tmp_path: Path) -> None:
    """`malmm caption typo.mp4` used to report the missing model (and download 32 GB first)."""
    missing_model = ["--model", str(tmp_path / "no-model")]
    typo = run("caption", tmp_path / "typo.mp4", *missing_model)
    assert typo.exit_code == 1 and "typo.mp4: no such file" in typo.stderr
    assert "Loading" not in typo.stderr and "no-model" not in typo.stderr
    text = media.make_text_file(tmp_path / "notes.mp4")
    assert "not a video" in run("caption", text, *missing_model).stderr
    a_file = tmp_path / "results.txt"
    a_file.write_text("")
    result = run("caption", videos / "short.mp4", "-o", a_file, *missing_model)
    assert result.exit_code == 2 and f"{a_file} exists and is not a folder" in result.stderr
    assert "Loading" not in result.stderr


def test_a_text_file_as_checkpoint_is_one_line(run, videos: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "notes.pth"
    checkpoint.write_text("not a checkpoint\n")
    result = run("caption", videos / "short.mp4", "--frames", "2", "--checkpoint", checkpoint)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "not a PyTorch checkpoint" in result.stderr


def test_a_checkpoint_that_is_not_there_says_what_it_is(run, videos: Path, tmp_path: Path) -> None:
    """A missing path is not called a folder, and a run folder without weights yet says why."""
    said = lambda result: " ".join(result.stderr.replace("│", " ").split())  # noqa: E731 (the usage panel wraps)
    missing = run("caption", videos / "short.mp4", "--checkpoint", tmp_path / "nonexist")
    assert missing.exit_code == 2 and "nonexist: no such file or folder" in said(missing)
    (tmp_path / "run" / "resume").mkdir(parents=True)
    unfinished = run("caption", videos / "short.mp4", "--checkpoint", tmp_path / "run")
    assert (
        unfinished.exit_code == 2
        and "is a folder without model.safetensors: its run has not finished an epoch" in said(unfinished)
    )
    assert "Loading" not in unfinished.stderr


def test_subtitles_of_several_videos_need_an_output_folder(run, videos: Path, tmp_path: Path) -> None:
    """Several videos as one SRT/VTT stream used to give several headers players read as one cue."""
    refused = run("caption", videos / "folder", "--frames", "2", "-f", "vtt")
    assert refused.exit_code == 2 and "--output-dir" in refused.stderr and refused.stdout == ""
    written = run("caption", videos / "folder", "--frames", "2", "-f", "srt", "-o", tmp_path / "out")
    assert written.exit_code == 0 and written.stdout == ""
    assert len(parse_srt((tmp_path / "out" / "a.caption.srt").read_text())) == 1
    single = run("caption", videos / "short.mp4", "--frames", "2", "-f", "srt")
    assert single.exit_code == 0 and len(parse_srt(single.stdout)) == 1


def test_same_stem_other_extension_in_one_folder(run, tmp_path: Path) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    media.make_video(folder / "clip.mp4", seconds=2, fps=10)
    media.make_video(folder / "clip.mkv", seconds=2, fps=10, seed=1)
    result = run("caption", folder, "--frames", "2", "-f", "json", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out").glob("*.json")) == [
        "clip.mkv.caption.json",
        "clip.mp4.caption.json",
    ]


def test_empty_segments_are_named_in_a_note(run, tmp_path: Path) -> None:
    """--segment 60s on a 2-hour video at 80 frames gave 80 cues, not 120, without a word."""
    clip = media.make_video(tmp_path / "ten.mp4", seconds=10, fps=10)
    result = run("caption", clip, "--frames", "2", "--segment", "2s", "-f", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [(s["start"], s["end"]) for s in data["segments"]] == [(2.0, 4.0), (6.0, 8.0)]
    (note,) = [note for note in data["notes"] if "3 of 5 segments have no sampled frame" in note]
    assert "3 of 5 segments have no sampled frame" in result.stderr
    assert "a frame every 2 s (--fps 0.5)" in note  # it said every 0.5 s (--fps 2), 4 times what is needed
    result = run("caption", clip, "--fps", "0.5", "--segment", "2s", "-f", "json")
    assert len(json.loads(result.stdout)["segments"]) == 5 and "notes" not in json.loads(result.stdout)


def test_more_frames_than_the_clip_has_and_still_images(run, videos: Path, tmp_path: Path) -> None:
    many = run("caption", videos / "short.mp4", "--frames", "100000", "-f", "json")
    assert many.exit_code == 0 and json.loads(many.stdout)["frames"] == 30  # 3 s at 10 fps, each once
    assert "has 30: reading each once" in many.stderr
    photo = media.make_still_image(tmp_path / "photo.png")
    still = run("caption", photo, "-f", "json")
    assert still.exit_code == 0 and json.loads(still.stdout)["frames"] == 1
    assert "still image" in still.stderr


def test_duplicate_labels_are_ranked_once(run, videos: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("cooking\nswimming\ncooking\n")
    result = run("predict", videos / "short.mp4", "--labels", labels, "--frames", "2", "-f", "json")
    assert result.exit_code == 0 and "ranked once: cooking" in result.stderr
    ranked = json.loads(result.stdout)["labels"]
    assert sorted(r["label"] for r in ranked) == ["cooking", "swimming"]
    assert sum(r["probability"] for r in ranked) == pytest.approx(1.0, abs=1e-3)


def test_a_question_past_the_qformer_limit_gets_a_note(run, videos: Path) -> None:
    question = "what " * 140 + "happens?"
    result = run("ask", videos / "short.mp4", question, "--frames", "2", "-f", "json")
    assert result.exit_code == 0, result.stderr
    (note,) = json.loads(result.stdout)["notes"]
    assert "more than the Q-Former's 64" in note and note in result.stderr  # the tiny model's 64 positions


def test_help_and_errors_speak_plainly(run) -> None:
    """Help used to show {paths}..., <list[Path]>, <int range>, [x>=0.0001]; errors 'Value error, ...'."""
    for command in (["caption"], ["ask"], ["predict"], ["models"], ["models", "download"], ["cache"], ["doctor"]):
        text = run(*command, "--help", model=False).stdout
        for internal in ("<list[", "<int", "<float", "<str>", "<path>", "[x>=", "{paths}", "{path}"):
            assert internal not in text, (command, internal)
    listing = run("--help", model=False).stdout
    commands = listing[listing.index("Commands:") :]
    assert "..." not in commands  # no summary cut mid-sentence
    for args, message in (
        (["--fps", "inf"], "must be a positive number of frames per second, not inf"),
        (["--fps", "0"], "must be a positive number"),
        (["--frames", "x"], "'x' is not a whole number"),
        (["--quantize", "bogus"], "'bogus' is not one of: auto, none, 8bit, 4bit"),
        (["--seek", "fast"], "'fast' is not one of: exact, keyframe"),
    ):
        result = run("caption", "x.mp4", *args)
        assert result.exit_code == 2 and message in result.stderr, args
        assert "Value error" not in result.stderr and "Input should be" not in result.stderr


def test_an_unforeseen_error_is_one_line(monkeypatch, capsys) -> None:
    from malmm_cli import cli

    def explode() -> None:
        raise RuntimeError("something nobody expected\nwith a second line")

    monkeypatch.setattr(cli, "app", explode)
    monkeypatch.delenv("MALMM_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err == "error: unexpected: RuntimeError: something nobody expected (MALMM_DEBUG=1 shows where)\n"


def test_a_folder_read_several_at_once_gives_the_same_files(run, videos: Path, tmp_path: Path) -> None:
    outputs = {}
    for batch in ("1", "3"):
        out = tmp_path / f"batch{batch}"
        result = run("predict", videos / "folder", videos / "short.mp4", "--fps", "3", "--every", "1",
                     "--video-batch", batch, "-o", out, "-f", "json", "-f", "srt")  # fmt: skip
        assert result.exit_code == 0, result.stderr
        outputs[batch] = {p.relative_to(out): p.read_text() for p in out.rglob("*.*") if ".malmm" not in p.parts}
    assert len(outputs["1"]) == 6 and outputs["3"] == outputs["1"]
    again = run("predict", videos / "folder", videos / "short.mp4", "--fps", "3", "--every", "1",
                "--video-batch", "2", "-o", tmp_path / "batch3", "-f", "json", "-f", "srt")  # fmt: skip
    assert again.exit_code == 0 and again.stderr.count("skipped") == 3  # how many at once is not a setting of results


def test_memory_strategy_is_a_setting_of_the_results(run, videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = run("caption", videos / "short.mp4", "--frames", "4", "--memory", "fifo", "-o", out, "-f", "json")
    assert first.exit_code == 0, first.stderr
    redo = run("caption", videos / "short.mp4", "--frames", "4", "--memory", "avgpool", "-o", out, "-f", "json")
    assert redo.exit_code == 0 and "made differently (memory)" in redo.stderr


def test_concat_asks_for_a_frame_cap_before_loading(run, videos: Path) -> None:
    result = run("caption", videos / "short.mp4", "--memory", "concat")  # 80 frames by default, bank 40
    assert result.exit_code == 2 and "--frames 40 or --memory-bank-length 80" in result.stderr
    assert "Loading" not in result.stderr
    capped = run("caption", videos / "short.mp4", "--memory", "concat", "--frames", "6", "-b", "6", "-f", "json")
    assert capped.exit_code == 0, capped.stderr
    assert json.loads(capped.stdout)["frames"] == 6
    unknown = run("caption", videos / "short.mp4", "--memory", "tome")
    assert unknown.exit_code == 2 and "'tome' is not one of: malmm, fifo, avgpool, concat, none" in unknown.stderr


def test_every_task_command_declares_the_shared_options_alike() -> None:
    """Each task command lists RunOptions' fields itself; they must not drift apart."""
    import dataclasses

    import typer.main

    from malmm_cli.cli import app
    from malmm_cli.jobs.model import RunOptions

    group = typer.main.get_command(app)
    shared = {f.name: f.default for f in dataclasses.fields(RunOptions)}
    for name in ("caption", "ask", "predict"):
        params = {p.name: p for p in group.commands[name].params}
        assert set(shared) <= set(params), (name, set(shared) - set(params))
        for field, default in shared.items():
            assert params[field].default == default, (name, field)
        helps = {field: params[field].help for field in shared}
        assert f"clip.mp4 -> clip.{name}." in helps.pop("output_dir"), name  # its own results as the example
        if name == "caption":
            caption_helps = helps
        assert helps == caption_helps, name


def test_manifest_clips_cover_their_own_span(run, videos: Path, tmp_path: Path) -> None:
    """Two clips of one 5 s video: each result's duration, segments and cues are the clip's, and
    the summary tells them apart. Segments were cut on the video's grid (from 0), cues ran to the
    video's end and both summary rows read just `five.mp4`."""
    shutil.copy(videos / "five.mp4", tmp_path / "five.mp4")
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text('{"video": "five.mp4", "start": 1, "end": 4}\n{"video": "five.mp4", "start": 2.5}\n')
    result = run("caption", f"@{manifest}", "--frames", "6", "--segment", "2s", "--format", "json")
    assert result.exit_code == 0, result.stderr
    first, second = json.loads(result.stdout)
    assert first["duration"] == 3.0 and first["clip"] == {"start": 1.0, "end": 4.0}
    assert [(s["start"], s["end"]) for s in first["segments"]] == [(1.0, 3.0), (3.0, 4.0)]
    assert first["first_frame"] >= 1.0 and first["last_frame"] < 4.0 and "notes" not in first
    assert second["duration"] == pytest.approx(2.5, abs=0.05) and second["clip"]["start"] == 2.5
    assert second["segments"][0]["start"] == 2.5
    video = tmp_path / "five.mp4"
    assert f"{video} [1-4 s]" in result.stderr and f"{video} [2.5-end s]" in result.stderr
    out = tmp_path / "out"
    result = run("caption", f"@{manifest}", "--frames", "6", "--format", "srt", "--output-dir", out)
    assert result.exit_code == 0, result.stderr
    (cue,) = parse_srt((out / "five_1-4.caption.srt").read_text())
    assert (cue.start, cue.end) == (1.0, 4.0)


def test_fps_with_manifest_clips_is_a_usage_error_before_loading(run, videos: Path, tmp_path: Path) -> None:
    """--fps cannot sample a clip: it failed each clip with exit 1, after the model had loaded."""
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text(f'{{"video": "{videos / "five.mp4"}", "start": 1, "end": 4}}\n')
    result = run("caption", f"@{manifest}", "--fps", "2", "-f", "json")
    assert result.exit_code == 2 and "Loading" not in result.stderr
    assert "--fps" in result.stderr and "give --frames N instead" in result.stderr and "[1-4 s]" in result.stderr


def test_usage_lines_name_arguments_plainly(run) -> None:
    """Typer wrote required arguments in braces ({PATH}..., {DATA}), like a template to fill in."""
    expected = {
        ("caption",): "Usage: malmm caption [OPTIONS] PATH...",
        ("ask",): "Usage: malmm ask [OPTIONS] PATH [QUESTION]",
        ("predict",): "Usage: malmm predict [OPTIONS] PATH...",
        ("watch",): "Usage: malmm watch [OPTIONS] SOURCE",
        ("train",): "Usage: malmm train [OPTIONS] DATA",
        ("eval",): "Usage: malmm eval [OPTIONS] DATA",
        ("models", "download"): "Usage: malmm models download [OPTIONS] NAME",
    }
    for command, usage in expected.items():
        text = run(*command, "--help", model=False).stdout
        assert text.splitlines()[0] == usage, command
    missing = run("caption", model=False)
    assert missing.exit_code == 2 and "Usage: malmm caption [OPTIONS] PATH..." in missing.stderr


def test_help_examples_and_defaults_read_right(run) -> None:
    """ask's help named a caption file, --lora's help left a parenthesis open, watch showed 10.0."""
    flat = {command: " ".join(run(command, "--help", model=False).stdout.split()) for command in ("ask", "train")}
    assert "clip.mp4 -> clip.ask." in flat["ask"] and "caption.srt" not in flat["ask"]
    lora = flat["train"][flat["train"].index("--lora") : flat["train"].index("--temporal ")]
    assert lora.count("(") == lora.count(")"), lora
    watch = " ".join(run("watch", "--help", model=False).stdout.split())
    assert "[default: 10s]" in watch and "10.0" not in watch


def test_every_command_that_writes_takes_o(run, tmp_path: Path) -> None:
    """-o is the output in each command (watch had only --output); train and eval, which write one
    folder each, also take the folder spelling --output-dir, unlisted."""
    for command, spelling in (("caption", "-o, --output-dir DIR"), ("ask", "-o, --output-dir DIR"),
                              ("predict", "-o, --output-dir DIR"), ("watch", "-o, --output FILE"),
                              ("train", "-o, --output RUN"), ("eval", "-o, --output DIR")):  # fmt: skip
        assert spelling in run(command, "--help", model=False).stdout, command
    missing = tmp_path / "missing.jsonl"
    for command in (["train", missing, "--task", "caption"], ["eval", missing]):
        result = run(*command, "--output-dir", tmp_path / "out", model=False)
        assert result.exit_code == 2 and "missing.jsonl" in result.stderr and "No such option" not in result.stderr
        both = run(*command, "--output-dir", tmp_path / "a", "-o", tmp_path / "b", model=False)
        assert both.exit_code == 2 and "not both" in both.stderr
    unnamed = run("train", missing, "--task", "caption", model=False)
    assert unnamed.exit_code == 2 and "-o RUN" in unnamed.stderr


def test_counts_agree_with_their_words(run, videos: Path) -> None:
    """'1 frames' read as a bug; each count printed says its word in the number it has."""
    from malmm_cli.wording import counted, plural

    assert [counted(n, "frame") for n in (0, 1, 2)] == ["0 frames", "1 frame", "2 frames"]
    assert (plural(1, "has"), plural(3, "has"), plural(2, "entry")) == ("has", "have", "entries")
    result = run("caption", videos / "short.mp4", "--frames", "1")
    assert result.exit_code == 0, result.stderr
    assert ": 1 frame in " in result.stderr and "1 frames" not in result.stderr


def test_a_labels_file_that_is_not_utf8_names_its_line(run, videos: Path, tmp_path: Path) -> None:
    """Python's words ('utf-8' codec can't decode byte 0xe9 in position 17) said neither what to do nor where."""
    labels = tmp_path / "labels.txt"
    labels.write_bytes("cooking\nwalking\ncaf\u00e9 talk\n".encode("latin-1"))
    result = run("predict", videos / "short.mp4", "--labels", labels)
    assert result.exit_code == 2 and "is not UTF-8 text (line 3)" in result.stderr
    assert "codec" not in result.stderr and "position" not in result.stderr and "Loading" not in result.stderr
    labels.write_bytes("\ufeffcooking\nwalking\n".encode())  # a byte-order mark, as Windows editors write
    assert run("predict", videos / "short.mp4", "--labels", labels, "--frames", "2").exit_code == 0


def test_standard_input_points_to_watch(run) -> None:
    """`malmm caption -` said '-: no such file' after the checks, without saying where stdin is read."""
    for command in (["caption", "-"], ["ask", "-", "what happens?"], ["predict", "-"]):
        result = run(*command)
        assert result.exit_code == 2 and "malmm watch -" in result.stderr, command
        assert "no such file" not in result.stderr and "Loading" not in result.stderr


def test_the_same_note_for_another_video_is_still_said(run, tmp_path: Path) -> None:
    """Notes repeated word for word were shown for the first video only: the second video's own
    empty segments went unsaid on stderr."""
    folder = tmp_path / "two"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4"):
        media.make_video(folder / name, seconds=10, fps=10)
    result = run("caption", folder, "--frames", "2", "--segment", "2s", "-f", "jsonl")
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "segments have no sampled frame" in line]
    assert len(lines) == 1 and "a.mp4" in lines[0]
    assert re.search(r"b\.mp4: the same note as for \S*a\.mp4", result.stderr), result.stderr


def test_more_decode_workers_than_cpus_are_capped_with_a_note(run, videos: Path, monkeypatch) -> None:
    """--decode-workers 64 on 2 CPUs took 60 s instead of 0.5 s, without a word."""
    from malmm_cli.jobs import videos as video_job

    monkeypatch.setattr(video_job, "available_cpus", lambda: 2)
    result = run("caption", videos / "short.mp4", "--frames", "4", "--decode-workers", "64", "-f", "json")
    assert result.exit_code == 0, result.stderr
    assert "--decode-workers 64: this process may use 2 CPUs, so frames are decoded in 2 processes" in result.stderr
    assert json.loads(result.stdout)["frames"] == 4
    within = run("caption", videos / "short.mp4", "--frames", "4", "--decode-workers", "2")
    assert within.exit_code == 0 and "--decode-workers" not in within.stderr


def test_ray_options_without_the_ray_engine_are_a_usage_error(run, videos: Path) -> None:
    """--workers, --address and --gpus-per-worker were accepted and ignored by the local engine."""
    for args in (["--workers", "2"], ["--address", "auto"], ["--gpus-per-worker", "0.5", "--workers", "2"]):
        result = run("caption", videos / "short.mp4", *args)
        assert result.exit_code == 2 and "for --engine ray" in result.stderr, args
        assert "Loading" not in result.stderr
