"""Names are data: a file name that is not UTF-8, near the length limit, or full of terminal
control characters is read, named in its results and shown to a person like any other."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from malmm_cli.media import names
from malmm_cli.output.writers import write_atomic
from tests import media
from tests.conftest import FAST

BAD = b"bad\xff\xfename.mp4"  # not UTF-8: Python names it with lone surrogates (os.fsdecode)


def test_shown_escapes_controls_and_undecodable_bytes_visibly() -> None:
    assert names.shown("clips/esc\x1b[2Jclear.mp4") == "clips/esc\\x1b[2Jclear.mp4"
    assert names.shown("osc\x1b]0;title\x07.mp4") == "osc\\x1b]0;title\\x07.mp4"
    assert names.shown("new\nline\r\t.mp4") == "new\\nline\\r\\t.mp4"
    assert names.shown("csi\x9b2J.mp4") == "csi\\x9b2J.mp4"  # the C1 control a terminal also obeys
    assert names.shown("evil\u202egnp.mp4") == "evil\\u202egnp.mp4"  # reorders what follows it
    assert names.shown(os.fsdecode(BAD)) == "bad\\xff\\xfename.mp4"  # the byte, not \udcff
    assert names.shown(BAD) == names.shown(Path(os.fsdecode(BAD))) == "bad\\xff\\xfename.mp4"
    plain = "Vidéo café 東京 [bold] a\\b.mp4"  # printable text, brackets and backslashes stay as they are
    assert names.shown(plain) == plain
    tricky = "a\x1b\n" + os.fsdecode(b"\xff") + "\u202e"
    assert names.shown(names.shown(tricky)) == names.shown(tricky)  # shown text is shown as it is
    assert names.shown(tricky).isprintable()


def test_lossless_names_round_trip_to_their_bytes() -> None:
    assert names.lossless("clips/new\nline.mp4") == {"file": "clips/new\nline.mp4"}  # UTF-8: exact
    name = os.fsdecode(b"clips/" + BAD)
    kept = names.lossless(name)
    assert kept["file"] == "clips/bad\\xff\\xfename.mp4"
    assert base64.b64decode(kept["file_base64"]) == b"clips/" + BAD
    assert names.from_base64(kept["file_base64"]) == name


def test_long_names_are_shortened_stably_and_temporary_names_never_longer(tmp_path: Path) -> None:
    limit = names.name_max(tmp_path / "not" / "made" / "yet")  # asks the nearest folder that exists
    assert limit >= 14
    long, other = "é" * 200, "é" * 199 + "e"
    short = names.fit_stem(long, 14, 255)
    assert short == names.fit_stem(long, 14, 255) != names.fit_stem(other, 14, 255)  # stable, and told apart
    assert len(os.fsencode(short)) + 14 <= 255 and short.startswith("é") and "~" in short
    os.fsencode(short).decode("utf-8")  # cut between characters, not inside one
    assert names.fit_stem("clip", 14, 255) == "clip"
    for final in ("a.txt", "index.html", "x" * 255, os.fsdecode(BAD)):
        assert len(os.fsencode(names.temporary_name(final, "0123abcd"))) <= len(os.fsencode(final))
    longest = tmp_path / ("x" * (limit - 5) + ".json")  # a final name right at the limit is written
    write_atomic(longest, "{}\n")
    assert longest.read_text() == "{}\n" and os.listdir(tmp_path) == [longest.name]


def _malmm(model: Path, *args: str | Path) -> list[str | bytes]:
    return [str(Path(sys.executable).parent / "malmm"), *args, "--model", str(model), *FAST]


def test_a_name_that_is_not_utf8_is_read_and_named_losslessly(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """json, csv and html used to fail the video (UnicodeEncodeError) and OpenCV to crash the
    whole run; stdout and the summary replaced the bytes, so the result no longer named its file."""
    clips = tmp_path / "clips"
    clips.mkdir()
    media.make_video(clips / "normal.mp4", seconds=2, fps=8)
    bad = os.fsencode(clips) + b"/" + BAD
    media.make_video(Path(os.fsdecode(bad)), seconds=2, fps=8, seed=1)
    out = tmp_path / "out"
    formats = [arg for fmt in ("jsonl", "json", "csv", "html", "srt", "txt") for arg in ("-f", fmt)]
    command = _malmm(tiny_llama_dir, "caption", str(clips), *formats, "-o", str(out), "--frames", "3", "--no-cache")
    done = subprocess.run(command, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    stdout, stderr = done.stdout.decode("utf-8"), done.stderr.decode("utf-8")  # strict: all of it is UTF-8
    assert done.returncode == 0, stderr
    assert "bad\\xff\\xfename.mp4" in stderr and "\ufffd" not in stderr + stdout and "\\udcff" not in stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    (row,) = [r for r in rows if "file_base64" in r]
    assert row["file"] == f"{clips}/bad\\xff\\xfename.mp4" and base64.b64decode(row["file_base64"]) == bad
    saved = json.loads((out / "bad\udcff\udcfename.caption.json").read_text(encoding="utf-8"))
    assert os.fsencode(names.from_base64(saved["file_base64"])) == bad and saved["caption"] == row["caption"]
    table = list(csv.DictReader(io.StringIO((out / "bad\udcff\udcfename.caption.csv").read_text(encoding="utf-8"))))
    assert table and all(base64.b64decode(r["file_base64"]) == bad for r in table)
    assert all(r["file_base64"] == "" for r in csv.DictReader((out / "normal.caption.csv").open(encoding="utf-8")))
    for fmt in ("srt", "txt", "jsonl"):
        assert (out / f"bad\udcff\udcfename.caption.{fmt}").is_file()
    report = (out / "bad\udcff\udcfename.caption.html").read_text(encoding="utf-8")
    assert "<h1>bad\\xff\\xfename.mp4</h1>" in report
    index = (out / "index.html").read_text(encoding="utf-8")
    assert 'href="bad%FF%FEname.caption.html"' in index and "bad\\xff\\xfename" in index  # the link finds the file
    assert os.fsencode(out) + b"/bad\xff\xfename.caption.html" in [os.fsencode(p) for p in out.iterdir()]


@pytest.fixture
def long_named(tmp_path: Path) -> Path:
    """A folder with a 250-character name (its results' names would pass 255 bytes), a
    240-character one (its results fit, a `.part` beside them did not) and a normal one."""
    clips = tmp_path / "clips"
    clips.mkdir()
    media.make_video(clips / "normal.mp4", seconds=2, fps=8)
    for length in (250, 240):
        os.link(clips / "normal.mp4", clips / ("x" * (length - 4) + ".mp4"))
    return clips


def test_names_near_the_limit_are_shortened_stably_and_resume(run, long_named: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["caption", long_named, "-f", "json", "-f", "jsonl", "-o", out, "--frames", "3", "--no-cache"]
    first = run(*args)
    assert first.exit_code == 0, first.stderr
    made = sorted(p.name for p in out.iterdir() if p.is_file())
    assert len(made) == 6 and all(len(os.fsencode(name)) <= names.name_max(out) for name in made)
    assert "x" * 236 + ".caption.json" in made  # fits: kept as it is
    shortened = [name for name in made if "~" in name]  # the 250-character one: its start and a hash
    assert len(shortened) == 2 and all(name.startswith("x" * 200) for name in shortened)
    assert len({name.split(".")[0] for name in shortened}) == 1  # one stem for every format
    assert not [p for p in out.rglob("*") if p.name.startswith(".") and p.is_file()]  # no temporary left
    again = run(*args)
    assert again.exit_code == 0, again.stderr
    assert "results made with the same settings" in again.stderr and "frames in" not in again.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == made  # the same names: all three skipped


def test_control_characters_in_names_never_reach_the_terminal(run, tmp_path: Path) -> None:
    """ESC[2J cleared the screen, an OSC sequence set the terminal's title, a newline split
    messages, the summary and the txt header; a name in brackets could be read as Rich markup."""
    clips = tmp_path / "clips"
    clips.mkdir()
    media.make_video(clips / "plain.mp4", seconds=2, fps=8)
    for name in ("esc\x1b[2Jclear.mp4", "osc\x1b]0;title\x07.mp4", "new\nline.mp4", "[bold]x.mp4"):
        os.link(clips / "plain.mp4", clips / name)
    media.make_text_file(clips / "broken\x1b[31m.mp4")  # fails: its name is in an error line
    result = run("caption", clips, "-f", "txt", "--frames", "3", "--no-cache")
    assert result.exit_code == 1  # the text file failed; every video was read
    for stream in (result.stderr, result.stdout):
        assert not any(char in stream for char in "\x1b\x07\x9b")
    err = result.stderr
    for shown in ("esc\\x1b[2Jclear.mp4", "osc\\x1b]0;title\\x07.mp4", "new\\nline.mp4", "[bold]x.mp4"):
        assert f"{shown}: 3 frames" in err  # its progress line, whole
        assert any(shown in line and "done" in line for line in err.splitlines())  # its summary row
    assert "error: " in err and "broken\\x1b[31m.mp4: " in err
    headers = [line for line in result.stdout.splitlines() if line.startswith("# ")]
    assert sorted(headers) == sorted(f"# {clips}/{name}" for name in ("[bold]x.mp4", "esc\\x1b[2Jclear.mp4",
                                     "new\\nline.mp4", "osc\\x1b]0;title\\x07.mp4", "plain.mp4"))  # fmt: skip
