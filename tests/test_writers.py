"""Output formats parse back to what was written; files appear whole or not at all."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from malmm_cli.output import writers
from malmm_cli.reading.results import Answer, RankedLabel, TimedText, VideoResult

SRT_TIME = r"(\d\d):(\d\d):(\d\d),(\d\d\d)"
VTT_TIME = r"(\d\d):(\d\d):(\d\d)\.(\d\d\d)"


def _seconds(groups: tuple[str, ...]) -> float:
    hours, minutes, seconds, millis = (int(g) for g in groups)
    return hours * 3600 + minutes * 60 + seconds + millis / 1000


def parse_srt(text: str) -> list[TimedText]:
    """A strict SRT reader: numbered blocks, 'start --> end', text lines, blank line between."""
    cues = []
    for number, block in enumerate(text.strip().split("\n\n"), start=1):
        lines = block.split("\n")
        assert lines[0] == str(number), block
        match = re.fullmatch(f"{SRT_TIME} --> {SRT_TIME}", lines[1])
        assert match, lines[1]
        cues.append(TimedText(_seconds(match.groups()[:4]), _seconds(match.groups()[4:]), "\n".join(lines[2:])))
    return cues


def parse_vtt(text: str) -> list[TimedText]:
    header, *blocks = text.strip().split("\n\n")
    assert header == "WEBVTT"
    cues = []
    for block in blocks:
        lines = block.split("\n")
        match = re.fullmatch(f"{VTT_TIME} --> {VTT_TIME}", lines[0])
        assert match, lines[0]
        cues.append(TimedText(_seconds(match.groups()[:4]), _seconds(match.groups()[4:]), "\n".join(lines[1:])))
    return cues


def caption_result() -> VideoResult:
    return VideoResult(
        path="clips/cook.mp4",
        task="caption",
        duration=130.5,
        frames=40,
        first_frame=0.033,
        last_frame=129.9,
        caption="a man cooks eggs, then serves them",
        segments=[
            TimedText(0, 60, "a man cracks eggs"),
            TimedText(60, 120, "he fries them"),
            TimedText(120, 130.5, 'he says "done", smiling'),
        ],
    )


def test_srt_and_vtt_round_trip_segments() -> None:
    result = caption_result()
    for parse, render in ((parse_srt, writers.to_srt), (parse_vtt, writers.to_vtt)):
        cues = parse(render(result))
        assert cues == result.segments


def test_whole_video_cue_without_segments() -> None:
    """The cue covers the whole video, from 0 (it started at the first frame read, 0.033 s)."""
    result = caption_result()
    result.segments = []
    (cue,) = parse_srt(writers.to_srt(result))
    assert (cue.start, cue.end, cue.text) == (0.0, 130.5, result.caption)
    assert writers.csv_rows(result)[0][2:4] == ("0.000", "130.500")


def test_a_clips_results_cover_the_clip() -> None:
    """A manifest clip [5, 12) of a 30 s video: its cue and CSV row span the clip, its JSON names it.
    They used to run from the first frame read to the video's end (5.1 to 30 s)."""
    clip = VideoResult("long.mp4", "caption", 7.0, 70, 5.0, 11.9, caption="a dog", clip=(5.0, 12.0))
    (cue,) = parse_srt(writers.to_srt(clip))
    assert (cue.start, cue.end) == (5.0, 12.0)
    assert writers.csv_rows(clip)[0][2:4] == ("5.000", "12.000")
    data = clip.to_dict()
    assert data["duration"] == 7.0 and data["clip"] == {"start": 5.0, "end": 12.0}
    assert "clip" not in caption_result().to_dict()


def test_ask_and_predict_cues() -> None:
    ask = VideoResult("v.mp4", "ask", 10.0, 20, 0.25, 9.75, answers=[Answer("who?", "a dog"), Answer("where?", "park")])
    assert [c.text for c in parse_vtt(writers.to_vtt(ask))] == ["Q: who?\nA: a dog", "Q: where?\nA: park"]
    predict = VideoResult(
        "v.mp4", "predict", 90.0, 30, 0.0, 89.0, timeline=[TimedText(0, 60, "cooking"), TimedText(60, 90, "eating")]
    )
    predict.next_action = "washing dishes"
    cues = parse_srt(writers.to_srt(predict))
    assert [c.text for c in cues] == ["cooking", "eating", "Next: washing dishes"]
    assert (cues[-1].start, cues[-1].end) == (89.0, 90.0)
    predict.labels = [RankedLabel("cooking", -0.1, 0.9)]  # the label's cue spans the video: it comes first
    assert [c.text for c in parse_srt(writers.to_srt(predict))] == ["cooking (0.90)", "cooking", "eating",
                                                                     "Next: washing dishes"]  # fmt: skip
    assert writers.to_txt(predict).splitlines()[:2] == ["0.9000\tcooking", "Next: washing dishes"]  # answers first


def test_json_and_jsonl_carry_real_timestamps() -> None:
    data = json.loads(writers.to_json(caption_result()))
    assert data["file"] == "clips/cook.mp4" and data["task"] == "caption"
    assert data["segments"][2] == {"start": 120.0, "end": 130.5, "text": 'he says "done", smiling'}
    assert data["first_frame"] == 0.033 and "answers" not in data and "labels" not in data
    line = writers.to_jsonl(caption_result())
    assert line.count("\n") == 1 and json.loads(line) == data


def test_csv_quotes_and_columns() -> None:
    rows = list(csv.reader(io.StringIO(writers.to_csv(caption_result()))))
    assert tuple(rows[0]) == writers.CSV_HEADER
    assert rows[1][4:6] == ["caption", "a man cooks eggs, then serves them"]
    assert rows[-1] == ["clips/cook.mp4", "caption", "120.000", "130.500", "segment", 'he says "done", smiling', "", ""]
    labelled = VideoResult("v.mp4", "predict", 5.0, 3, 0.0, 4.0)
    labelled.labels = [RankedLabel("cooking", -1.2, 0.7), RankedLabel("eating", -2.0, 0.3)]
    rows = list(csv.reader(io.StringIO(writers.to_csv(labelled, header=False))))
    assert [(r[5], r[6]) for r in rows] == [("cooking", "0.7000"), ("eating", "0.3000")]


def test_txt_is_the_answer_first() -> None:
    assert writers.to_txt(caption_result()).splitlines()[0] == "a man cooks eggs, then serves them"
    one = VideoResult("v.mp4", "ask", 1.0, 1, 0.0, 0.0, answers=[Answer("who?", "a dog")])
    assert writers.to_txt(one) == "a dog\n"


def test_files_are_named_after_the_input_and_the_task(tmp_path: Path) -> None:
    paths = writers.output_paths(tmp_path, Path("sub/cook"), "caption", ["srt", "json"])
    assert paths == [tmp_path / "sub" / "cook.caption.srt", tmp_path / "sub" / "cook.caption.json"]
    writers.write_atomic(paths[0], writers.to_srt(caption_result()))
    assert parse_srt(paths[0].read_text()) == caption_result().segments


def test_killed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cook.json"
    target.write_text("old result\n")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writers.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        writers.write_atomic(target, "new result\n")
    assert target.read_text() == "old result\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cook.json"]  # no temporary left behind


def test_subtitle_syntax_in_a_text_stays_inside_its_cue() -> None:
    """A question with '-->' or blank lines used to end its cue and start a bogus one."""
    result = VideoResult("clip.mp4", "ask", 10.0, 4, 0.0, 9.0, answers=[
        Answer("what happens --> next?\n\nand then?", "a <b> & c"),
        Answer("second", "answer"),
    ])  # fmt: skip
    srt = parse_srt(writers.to_srt(result))
    vtt = parse_vtt(writers.to_vtt(result))
    assert len(srt) == len(vtt) == 2
    assert srt[0].text == "Q: what happens -> next?\nand then?\nA: a <b> & c"
    assert vtt[0].text == "Q: what happens -> next?\nand then?\nA: a &lt;b> &amp; c"
    assert srt[1].text == vtt[1].text == "Q: second\nA: answer"
