"""`malmm find`: moments from window scores (pure rules), a tiny model trained on the colour task
finding the red scene, several queries sharing one read, every format parsed back, resume and
the feature cache."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from malmm_cli.cli import app
from malmm_cli.output import writers
from malmm_cli.reading.find import FindRule, moments
from malmm_cli.reading.results import Found, Moment, RankedLabel, TimedText, VideoResult
from models import Malmm
from tests.media import SCENE_COLOURS, make_scene, make_scenes
from tests.test_writers import parse_srt, parse_vtt
from tests.tiny_models import build_model_folder, tiny_config

COLOURS = list(SCENE_COLOURS)
# 2 frames/s in 2 s windows: 4 frames a window, as the colour model was trained (4 frames a clip)
SMALL = ["--device", "cpu", "--fps", "2", "--window", "2", "--memory-bank-length", "2"]


def iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def malmm_cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


# --- the rules, without a model ---------------------------------------------------------------------


def test_windows_above_the_threshold_join_into_moments_best_first() -> None:
    curve = [(0, 1, 0.2), (1, 2, 0.6), (2, 3, 0.9), (3, 4, 0.3), (4, 5, 0.7), (5, 6, 0.1), (6, 7, 0.1), (7, 8, 0.55)]
    assert moments(curve, 0.5, 0.0, 5) == [Moment(1, 3, 0.9), Moment(4, 5, 0.7), Moment(7, 8, 0.55)]
    # a gap of one window (1 s) bridged: the moment keeps its best window's score
    assert moments(curve, 0.5, 1.0, 5) == [Moment(1, 5, 0.9), Moment(7, 8, 0.55)]
    assert moments(curve, 0.5, 2.0, 5) == [Moment(1, 8, 0.9)]
    assert moments(curve, 0.5, 0.0, 2) == [Moment(1, 3, 0.9), Moment(4, 5, 0.7)]  # top-k
    assert moments(curve, 0.95, 0.0, 5) == []
    assert moments(curve, 0.6, 0.0, 5)[0] == Moment(1, 3, 0.9)  # a window at the threshold is in


def test_scores_are_likelihood_against_the_whole_video_or_probability_of_yes() -> None:
    whole = [RankedLabel("red", -3.0, 0.5), RankedLabel("dog", -2.0, 0.5)]
    window = [RankedLabel("red", -1.0, 0.9), RankedLabel("dog", -2.0, 0.1)]
    rule = FindRule("likelihood")
    assert rule.window_score("red", window, whole) == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert rule.window_score("dog", window, whole) == pytest.approx(0.5)  # fits as well as the whole video
    yes = [RankedLabel("no", -0.1, 0.3), RankedLabel("yes", -0.2, 0.7)]
    assert FindRule("yes").window_score("red", yes, None) == pytest.approx(0.7)
    found = FindRule("likelihood", threshold=0.6).found(
        ["red", "dog"], [((0.0, 2.0), window), ((2.0, 4.0), whole)], whole
    )
    assert [f.query for f in found] == ["red", "dog"]
    assert found[0].moments == [Moment(0.0, 2.0, pytest.approx(0.8808, abs=1e-4))]
    assert [score for _, _, score in found[1].curve] == [0.5, 0.5]


# --- finding red ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny model trained (in a few seconds) to say a 2 s scene's colour: its folder and the run."""
    folder = tmp_path_factory.mktemp("colour")
    model = build_model_folder(folder / "steerable", tiny_config(llm_initializer_range=0.3))
    (folder / "clips").mkdir()
    rows = []
    for i in range(12):
        make_scene(folder / "clips" / f"{i}.mp4", COLOURS[i % 3], seed=i)
        rows.append(json.dumps({"video": f"clips/{i}.mp4", "caption": COLOURS[i % 3]}) + "\n")
    (folder / "captions.jsonl").write_text("".join(rows))
    trained = malmm_cli("train", folder / "captions.jsonl", "--task", "caption", "--output", folder / "run",
                        "--model", model, "--device", "cpu", "--frames", "4", "--memory-bank-length", "2",
                        "--batch-size", "4", "--warmup-steps", "5", "--lr", "2e-3", "--epochs", "10", "-q")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    return model, folder / "run"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Blue for 2 s, then red, then green (other shapes than the training clips')."""
    return make_scenes(tmp_path_factory.mktemp("scenes") / "brg.mp4", ["blue", "red", "green"], seed=7)


def test_a_model_trained_on_colours_finds_the_red_scene(colour_model: tuple[Path, Path], scenes: Path) -> None:
    """The issue's test: the top moment of "red" overlaps the red scene (2 s to 4 s) at IoU >= 0.5
    with the likelihood rule, and the curve is clearly higher there than elsewhere."""
    model, run = colour_model
    result = malmm_cli("find", scenes, "red", "--model", model, "--checkpoint", run, *SMALL, "-f", "json", "-q")
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["query"] == "red" and found["moments"], found
    assert iou((found["moments"][0]["start"], found["moments"][0]["end"]), (2.0, 4.0)) >= 0.5
    inside = [score for t, score in found["curve"] if 2.0 <= t < 4.0]
    outside = [score for t, score in found["curve"] if not 2.0 <= t < 4.0]
    assert min(inside) - max(outside) >= 0.2, found["curve"]


# --- one read, every format, resume, the cache ------------------------------------------------------


class EncodedFrames:
    """Counts the frames the vision model encodes (what a cached video never does again)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.count = 0
        original = Malmm.encode_frames

        def counting(malmm: Malmm, pixels, *args, **kwargs):
            self.count += pixels.shape[0]
            return original(malmm, pixels, *args, **kwargs)

        monkeypatch.setattr(Malmm, "encode_frames", counting)


def test_several_queries_share_one_read(run, scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    encoded = EncodedFrames(monkeypatch)
    queries = tmp_path / "queries.txt"
    queries.write_text("red\n# a comment\nblue\ngreen\nred\n")
    result = run("find", scenes, "--query-file", queries, *SMALL, "--no-cache", "-f", "jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["query"] for row in rows] == ["red", "blue", "green"]  # a query given twice is found once
    assert {row["file"] for row in rows} == {str(scenes)}
    assert encoded.count == 12  # 6 s at 2 frames/s, once for the three queries
    for row in rows:
        assert [t for t, _ in row["curve"]] == [0.0, 2.0, 4.0]
        assert set(row) >= {"file", "query", "duration", "moments", "curve", "notes", "warnings"}


def found_result() -> VideoResult:
    curve = [(0.0, 2.0, 0.2), (2.0, 4.0, 0.8), (4.0, 6.0, 0.6)]
    return VideoResult(
        "v.mp4", "find", 6.0, 12, 0.0, 5.5,
        found=[Found("red", [Moment(2.0, 4.0, 0.8), Moment(4.0, 6.0, 0.6)], curve),
               Found("a dog, <big> & small", [], [(s, e, 0.1) for s, e, _ in curve])],
    )  # fmt: skip


def test_every_format_parses_back_one_object_per_query() -> None:
    result = found_result()
    one = json.loads(writers.to_json(VideoResult("v.mp4", "find", 6.0, 12, 0.0, 5.5, found=result.found[:1])))
    assert one["query"] == "red" and one["duration"] == 6.0 and one["notes"] == one["warnings"] == []
    objects = json.loads(writers.to_json(result))
    assert [o["query"] for o in objects] == ["red", "a dog, <big> & small"]
    assert objects[0]["moments"] == [{"start": 2.0, "end": 4.0, "score": 0.8}, {"start": 4.0, "end": 6.0, "score": 0.6}]
    assert objects[0]["curve"] == [[0.0, 0.2], [2.0, 0.8], [4.0, 0.6]] and objects[1]["moments"] == []
    assert [json.loads(line) for line in writers.to_jsonl(result).splitlines()] == objects
    rows = list(csv.DictReader(io.StringIO(writers.to_csv(result))))
    moments_rows = [(r["start"], r["end"], r["text"], r["score"]) for r in rows if r["kind"] == "moment"]
    assert moments_rows == [("2.000", "4.000", "red", "0.8000"), ("4.000", "6.000", "red", "0.6000")]
    assert len([r for r in rows if r["kind"] == "window"]) == 6
    cue = [TimedText(2.0, 4.0, "red (0.80)"), TimedText(4.0, 6.0, "red (0.60)")]
    assert parse_srt(writers.to_srt(result)) == cue and parse_vtt(writers.to_vtt(result)) == cue
    assert writers.to_txt(result).splitlines() == [
        "Query: red", "[00:00:02.000 --> 00:00:04.000] 0.8000", "[00:00:04.000 --> 00:00:06.000] 0.6000", "",
        "Query: a dog, <big> & small", "(no window scored above the threshold)",
    ]  # fmt: skip


def test_find_end_to_end_resumes_and_reads_a_second_query_from_the_cache(
    run, scenes: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded = EncodedFrames(monkeypatch)
    out = tmp_path / "out"
    formats = ["-f", "json", "-f", "jsonl", "-f", "csv", "-f", "txt", "-f", "srt", "-f", "vtt"]
    first = run("find", scenes, "red", *SMALL, "--threshold", "0", "-o", out, *formats)
    assert first.exit_code == 0, first.output
    written = sorted(p.name for p in out.glob("brg.find.*"))
    assert written == [f"brg.find.{f}" for f in ("csv", "json", "jsonl", "srt", "txt", "vtt")]
    saved = json.loads((out / "brg.find.json").read_text())
    assert saved["query"] == "red" and len(saved["moments"]) == 1  # threshold 0: every window, one moment
    assert (saved["moments"][0]["start"], saved["moments"][0]["end"]) == (0.0, 6.0)
    assert parse_srt((out / "brg.find.srt").read_text())[0].start == 0.0
    assert encoded.count == 12

    again = run("find", scenes, "red", *SMALL, "--threshold", "0", "-o", out, *formats)
    assert again.exit_code == 0 and "same settings" in again.stderr, again.output
    assert encoded.count == 12  # skipped: nothing read

    other = run("find", scenes, "green", *SMALL, "-o", out, "-f", "json")
    assert other.exit_code == 0, other.output
    assert json.loads((out / "brg.find.json").read_text())["query"] == "green"
    assert encoded.count == 12  # the second query's frames came from the feature cache


def test_find_refuses_what_it_cannot_do(run, scenes: Path, tmp_path: Path) -> None:
    frames = run("find", scenes, "red", "--frames", "8")
    assert frames.exit_code == 2 and "--window" in frames.stderr
    assert run("find", scenes).exit_code == 2  # a path and no query
