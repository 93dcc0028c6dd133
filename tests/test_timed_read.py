"""Reading answers that carry times (issue 30): `caption --dense` and `ask --timed` parse what the
model generates (reading/timed_text.py) into spans on the video's clock, shown as timed cues in
every format; an answer that does not parse keeps its raw text and says so everywhere.

The model's answers are put in its mouth (Malmm.generate_beams replaced) and written from the
times its frames were told (Malmm.time_tokens spied), so a cue at the right place is one on the
same clock as the time-aware frames: a frame's decoded timestamp, whatever the frame rate and
wherever the clip starts."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from malmm_cli.reading.results import TimedText
from malmm_cli.reading.timed_text import on_video_clock, parse_timed
from models import Malmm, MemoryState
from models.presets import DENSE, GROUND
from tests.media import frame_times, make_video
from tests.test_writers import parse_srt, parse_vtt

FORMATS = ("txt", "json", "jsonl", "srt", "vtt", "csv", "html")
TXT_SPAN = re.compile(r"\[(\d\d):(\d\d):(\d\d\.\d{3}) --> (\d\d):(\d\d):(\d\d\.\d{3})\] ?(.*)")


def test_spans_move_to_the_clip_and_stop_at_the_end_of_what_was_read() -> None:
    answer = parse_timed("0.0 - 2.5 seconds, a dog runs. 2.5 - 40.0 seconds, it sleeps. 50 - 60 seconds, gone.")
    timed, notes = on_video_clock(answer, 60.0, 90.0)
    assert [(s.start, s.end, s.text) for s in timed.spans] == [(60.0, 62.5, "a dog runs"), (62.5, 90.0, "it sleeps")]
    assert len(notes) == 1 and "cut" in notes[0] and "2.5 - 40.0 seconds" in notes[0]
    assert len(timed.problems) == 1 and "50.0 - 60.0 seconds" in timed.problems[0]
    assert on_video_clock(parse_timed("nothing timed"), 60.0, 90.0)[0].problems == parse_timed("nothing timed").problems


def test_a_span_starting_at_the_end_of_what_was_read_is_dropped() -> None:
    """Exactly at the end, and a hair before it where adding the clip's start rounds (0.7 + 0.1 is
    0.7999999999999999): it names nothing that was read."""
    for said, start, end in (("30.0 - 35.0 seconds, after.", 60.0, 90.0), ("0.1 - 0.5 seconds, after.", 0.7, 0.8)):
        timed, notes = on_video_clock(parse_timed(said), start, end)
        assert timed.spans == () and notes == []
        assert len(timed.problems) == 1 and "starts after the end of what was read" in timed.problems[0]
    kept, _ = on_video_clock(parse_timed("29.5 - 30.0 seconds, last."), 60.0, 90.0)
    assert [(s.start, s.end) for s in kept.spans] == [(89.5, 90.0)]


class Mouth:
    """The model's generation replaced: `say(told)` writes each answer from the frame times the
    model was told (seconds from the start of what its memory read); `prompts` records what it was asked."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, say: Callable[[list[float]], str]):
        self.told: list[float] = []
        self.prompts: list[str] = []
        time_tokens = Malmm.time_tokens

        def recording(malmm: Malmm, state: MemoryState, times: Sequence[float] | None):
            self.told += list(times or [])
            return time_tokens(malmm, state, times)

        def generate_beams(malmm: Malmm, tokens, prompts, settings, on_text=None) -> list[list[str]]:
            prompts = [prompts] if isinstance(prompts, str) else list(prompts)
            self.prompts += prompts
            return [[say(self.told)] for _ in prompts]

        monkeypatch.setattr(Malmm, "time_tokens", recording)
        monkeypatch.setattr(Malmm, "generate_beams", generate_beams)


def outputs(folder: Path, stem: str, task: str) -> dict[str, str]:
    return {fmt: (folder / f"{stem}.{task}.{fmt}").read_text() for fmt in FORMATS}


def cue_times(files: dict[str, str], kind: str) -> dict[str, list[tuple[float, float, str]]]:
    """The timed cues each format shows (times to the millisecond; text as the format writes it).
    kind: the csv rows and json field holding them (event, span)."""

    def rounded(spans) -> list[tuple[float, float, str]]:
        return [(round(s.start, 3), round(s.end, 3), s.text) for s in spans]

    data = json.loads(files["json"])
    json_spans = data["events"] if kind == "event" else [s for a in data["answers"] for s in a["spans"]]
    lines = [TXT_SPAN.fullmatch(line) for line in files["txt"].splitlines()]
    txt = [(_clock(m.groups()[:3]), _clock(m.groups()[3:6]), m.group(7)) for m in lines if m]
    rows = [row for row in csv.DictReader(io.StringIO(files["csv"])) if row["kind"] == kind]
    html = re.findall(r'<li class="band" id="band-\d+" data-start="([\d.]+)" data-end="([\d.]+)">', files["html"])
    return {
        "json": rounded(TimedText(s["start"], s["end"], s["text"]) for s in json_spans),
        "jsonl": rounded(TimedText(s["start"], s["end"], s["text"]) for s in
                         (json.loads(files["jsonl"])["events"] if kind == "event" else
                          json.loads(files["jsonl"])["answers"][0]["spans"])),
        "txt": rounded(TimedText(*span) for span in txt),
        "srt": rounded(parse_srt(files["srt"])),
        "vtt": rounded(parse_vtt(files["vtt"])),
        "csv": rounded(TimedText(float(r["start"]), float(r["end"]), r["text"]) for r in rows),
        "html": [(float(start), float(end), "") for start, end in html],
    }  # fmt: skip


def _clock(parts: Sequence[str]) -> float:
    hours, minutes, seconds = parts
    return round(int(hours) * 3600 + int(minutes) * 60 + float(seconds), 3)


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A variable-rate video: a frame's timestamp is not where a fixed rate would put it."""
    return make_video(tmp_path_factory.mktemp("timed") / "vfr.mp4", seconds=4.0, fps=10.0, vfr=True)


@pytest.fixture(params=["whole", "clip"])
def source(request: pytest.FixtureRequest, vfr_video: Path, tmp_path: Path) -> tuple[str, float, str]:
    """What is read: the whole video, or a manifest clip of it from 1.3 s to 3.6 s (its spans count
    from 1.3); (the argument, where the clip starts, the stem of its results)."""
    if request.param == "whole":
        return str(vfr_video), 0.0, "vfr"
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text(json.dumps({"video": str(vfr_video), "start": 1.3, "end": 3.6}) + "\n")
    return f"@{manifest}", 1.3, "vfr_1.3-3.6"


def test_dense_events_are_cues_at_the_frames_timestamps_in_every_format(
    run, source: tuple[str, float, str], vfr_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model says a span from its 2nd to its 4th frame's time, then one running past the end:
    every format shows the first at those frames' decoded timestamps (a clip's at its start plus
    the model's seconds), the second cut at the end of what was read, with a note."""
    path, start, stem = source
    mouth = Mouth(monkeypatch, lambda t: f"{t[1]:.3f} - {t[3]:.3f} seconds, a dog runs. "
                                         f"{t[3]:.3f} - {t[3] + 30:.3f} seconds, it sleeps.")  # fmt: skip
    out = tmp_path / "out"
    formats = [arg for fmt in FORMATS for arg in ("-f", fmt)]
    result = run("caption", path, "--dense", "--frames", "6", *formats, "-o", out)
    assert result.exit_code == 0, result.output
    assert mouth.prompts == [DENSE.prompt()]
    told = mouth.told
    pts = frame_times(vfr_video)
    first = (round(start + told[1], 3), round(start + told[3], 3))
    assert all(min(abs(time - p) for p in pts) < 1e-3 for time in first)  # on the decoder's clock
    data = json.loads((out / f"{stem}.dense.json").read_text())
    end = round(max(start + data["duration"], data["last_frame"]), 3)  # the clip's end, or the video's
    expected = [(*first, "a dog runs"), (first[1], end, "it sleeps")]
    shown = cue_times(outputs(out, stem, "dense"), "event")
    for fmt, cues in shown.items():
        assert [cue[:2] for cue in cues] == [cue[:2] for cue in expected], fmt
        if fmt != "html":
            assert [cue[2] for cue in cues] == [cue[2] for cue in expected], fmt
    assert data["problems"] == [] and any("cut there" in note for note in data["notes"])
    assert data["caption"].startswith(f"{told[1]:.3f} - ")  # the answer as generated, kept


def test_ask_timed_asks_in_grounds_wording_and_shows_the_span_in_every_format(
    run, source: tuple[str, float, str], vfr_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, start, stem = source
    mouth = Mouth(monkeypatch, lambda t: f"From {t[2]:.3f} to {t[4]:.3f} seconds.")
    out = tmp_path / "out"
    formats = [arg for fmt in FORMATS for arg in ("-f", fmt)]
    result = run("ask", path, "the dog runs", "--timed", "--frames", "6", *formats, "-o", out)
    assert result.exit_code == 0, result.output
    assert mouth.prompts == [GROUND.prompt("the dog runs")]
    span = (round(start + mouth.told[2], 3), round(start + mouth.told[4], 3))
    shown = cue_times(outputs(out, stem, "ask"), "span")
    for fmt, cues in shown.items():
        assert [cue[:2] for cue in cues] == [span], fmt
    assert shown["srt"][0][2] == shown["vtt"][0][2] == "the dog runs"
    assert shown["csv"][0][2] == "the dog runs"
    answer = json.loads((out / f"{stem}.ask.json").read_text())["answers"][0]
    assert answer["problems"] == [] and answer["answer"] == f"From {mouth.told[2]:.3f} to {mouth.told[4]:.3f} seconds."


def test_without_timed_an_answer_with_times_is_an_ordinary_answer(
    run, vfr_video: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mouth = Mouth(monkeypatch, lambda t: "1.0 - 2.0 seconds")
    result = run("ask", vfr_video, "when does the dog run?", "--frames", "6", "-f", "json")
    assert result.exit_code == 0, result.output
    assert mouth.prompts == ["Question: when does the dog run? Short answer:"]
    assert json.loads(result.stdout)["answers"] == [{"question": "when does the dog run?",
                                                     "answer": "1.0 - 2.0 seconds"}]  # fmt: skip
    srt = run("ask", vfr_video, "when does the dog run?", "--frames", "6", "-f", "srt")
    (cue,) = parse_srt(srt.stdout)
    assert cue.start == 0.0 and cue.text == "Q: when does the dog run?\nA: 1.0 - 2.0 seconds"


@pytest.mark.parametrize("command", [["caption", "--dense"], ["ask", "--timed"]])
def test_an_answer_that_does_not_read_says_so_in_every_format(
    run, command: list[str], vfr_video: Path, tmp_path: Path
) -> None:
    """The tiny random model's answer names no span: its raw text is kept, and every format says
    why there is no cue at a time (exit 0, as find with no moment)."""
    out = tmp_path / "out"
    formats = [arg for fmt in FORMATS for arg in ("-f", fmt)]
    task, *rest = command
    args = [task, vfr_video, *(["the dog runs"] if task == "ask" else []), *rest, "--frames", "4"]
    result = run(*args, *formats, "-o", out)
    assert result.exit_code == 0, result.output
    name = "dense" if task == "caption" else "ask"
    files = outputs(out, "vfr", name)
    data = json.loads(files["json"])
    said = data if task == "caption" else data["answers"][0]
    problem = parse_timed(said["caption" if task == "caption" else "answer"]).problems[-1]
    assert said["problems"] and said["problems"][-1] == problem and not said.get("events", said.get("spans"))
    assert any(problem in note for note in data["notes"])
    assert json.loads(files["jsonl"]) == data
    for fmt in ("txt", "srt", "vtt"):
        assert f"(not read as times: {problem})" in files[fmt].replace("&lt;", "<"), fmt
    assert [row["text"] for row in csv.DictReader(io.StringIO(files["csv"])) if row["kind"] == "problem"] == [
        problem if task == "caption" else f"the dog runs -> {problem}"
    ]
    assert "Not read as times: " in files["html"]
    assert "not read as times" in result.stderr or "does not all read as times" in result.stderr


def test_dense_and_segments_are_one_or_the_other(run, vfr_video: Path) -> None:
    result = run("caption", vfr_video, "--dense", "--segment", "2s")
    assert result.exit_code == 2 and "--segment" in result.output


def test_several_timed_answers_each_show_their_spans_or_why_not() -> None:
    """Built by hand: two questions read as times, one answered with a span, one without."""
    from malmm_cli.output.writers import to_csv, to_txt, to_vtt
    from malmm_cli.reading.results import Answer, VideoResult

    result = VideoResult("v.mp4", "ask", 30.0, 10, 60.0, 89.0, clip=(60.0, 90.0), answers=[
        Answer("red", "0 - 2 seconds", spans=(TimedText(60.0, 62.0, ""),)),
        Answer("blue", "no idea", spans=(), problems=("no time span",)),
    ])  # fmt: skip
    assert to_txt(result).splitlines() == [
        "Q: red", "A: 0 - 2 seconds", "[00:01:00.000 --> 00:01:02.000]",
        "Q: blue", "A: no idea", "(not read as times: no time span)",
    ]  # fmt: skip
    assert [(c.start, c.end, c.text) for c in parse_vtt(to_vtt(result))] == [
        (60.0, 90.0, "Q: blue\nA: no idea\n(not read as times: no time span)"), (60.0, 62.0, "red"),
    ]  # fmt: skip
    rows = [(r["start"], r["end"], r["kind"], r["text"]) for r in csv.DictReader(io.StringIO(to_csv(result)))]
    assert rows == [("60.000", "90.000", "answer", "red -> 0 - 2 seconds"), ("60.000", "62.000", "span", "red"),
                    ("60.000", "90.000", "answer", "blue -> no idea"),
                    ("60.000", "90.000", "problem", "blue -> no time span")]  # fmt: skip
