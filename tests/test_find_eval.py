"""`malmm eval` on the grounding benchmarks (Charades-STA, QVHighlights, ActivityNet Captions):
small files of each format over videos of coloured scenes, found with `malmm find`'s reading,
the metrics those of grounding.py over the predictions written, one read per video whatever
its queries, resume, missing and unreadable videos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from malmm_cli.jobs import find_eval
from malmm_cli.jobs.grounding import grounding_metrics, load_grounding
from tests import test_find
from tests.media import make_scenes
from tests.test_find import EncodedFrames

# 2 frames/s in 2 s windows: a 6 s video is 12 frames, 3 windows (one per scene)
SMALL = ["--device", "cpu", "--fps", "2", "--window", "2", "--memory-bank-length", "2", "--no-cache"]
FRAMES_PER_VIDEO = 12
colour_model = test_find.colour_model  # the fixture: a tiny model trained to name a scene's colour
SCENES = {"brg": ["blue", "red", "green"], "rgb": ["red", "green", "blue"]}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 6 s videos of three 2 s scenes; one under ActivityNet's `v_` name as well."""
    folder = tmp_path_factory.mktemp("grounding-videos")
    for seed, (name, colours) in enumerate(SCENES.items()):
        make_scenes(folder / f"{name}.mp4", colours, seed=seed)
    (folder / "v_anet.mp4").write_bytes((folder / "rgb.mp4").read_bytes())
    return folder


def _where(colours: list[str], colour: str) -> tuple[float, float]:
    start = 2.0 * colours.index(colour)
    return start, start + 2.0


def charades(folder: Path) -> Path:
    lines = [f"{vid} {start:g} {end:g}##{colour}" for vid, colours in SCENES.items() for colour in colours
             for start, end in [_where(colours, colour)]]  # fmt: skip
    path = folder / "charades_sta_test.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def qvhighlights(folder: Path) -> Path:
    rows = []
    for vid, colours in SCENES.items():
        for colour in ("red", "blue"):
            start, end = _where(colours, colour)
            clip = int(start // 2)
            rows.append({"qid": f"{vid}-{colour}", "query": colour, "vid": vid, "duration": 6,
                         "relevant_windows": [[start, end]], "relevant_clip_ids": [clip],
                         "saliency_scores": [[4, 3, 4]]})  # fmt: skip
    path = folder / "highlight_val_release.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def activitynet(folder: Path) -> Path:
    colours = SCENES["rgb"]
    entry = {"duration": 6.0, "timestamps": [list(_where(colours, c)) for c in colours], "sentences": colours}
    path = folder / "val_2.json"
    path.write_text(json.dumps({"anet": entry}))  # its video is v_anet.mp4
    return path


BENCHMARKS = {"charades-sta": (charades, 2), "qvhighlights": (qvhighlights, 2),
              "anet-captions-grounding": (activitynet, 1)}  # fmt: skip


def evaluate(run, tiny_llama_dir: Path, data: Path, videos: Path, output: Path, *args: object):
    return run("eval", data, "--videos", videos, "--output", output, "--model", tiny_llama_dir, *SMALL, *args,
               model=False)  # fmt: skip


def rows_of(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]


def recomputed(data: Path, output: Path) -> dict[str, float]:
    """grounding_metrics over the predictions file, as a reader of it would score it: QVHighlights'
    clip scores given as a curve sampled at each 2-second clip's middle."""
    rows = {row["id"]: row for row in rows_of(output)}
    examples = load_grounding(data)
    moments = {qid: row["moments"] for qid, row in rows.items()}
    curves = None
    if "saliency" in next(iter(rows.values())):
        curves = {qid: [(2 * k + 1, s) for k, s in enumerate(row["saliency"])] for qid, row in rows.items()}
    return grounding_metrics(examples, moments, curves=curves)


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_each_benchmark_end_to_end(
    name: str, run, colour_model: tuple[Path, Path], videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The metrics printed and written are grounding.py's over the predictions file, every query
    has its row, and each video is read once whatever its number of queries. The model is
    test_find's, trained to name a scene's colour, so the figures are not all 0."""
    make, read_videos = BENCHMARKS[name]
    data = make(tmp_path)
    encoded = EncodedFrames(monkeypatch)
    model, checkpoint = colour_model
    result = evaluate(run, model, data, videos, tmp_path / "out", "--dataset", name, "--checkpoint", checkpoint,
                      "--min-gap", "0.1")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert encoded.count == FRAMES_PER_VIDEO * read_videos  # one read per video, 2 or 3 queries each
    rows = rows_of(tmp_path / "out")
    assert [row["id"] for row in rows] == [e.qid for e in load_grounding(data)]
    for row in rows:
        assert [t for t, _ in row["curve"]] == [0.0, 2.0, 4.0]
        assert all(len(m) == 3 and m[0] < m[1] for m in row["moments"])
        assert [m[2] for m in row["moments"]] == sorted((m[2] for m in row["moments"]), reverse=True)
        if name == "qvhighlights":  # 2 s windows over 2 s clips: a clip's score is its window's
            assert row["saliency"] == pytest.approx([score for _, score in row["curve"]])
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert json.loads(result.stdout) == metrics
    assert metrics["examples"] == len(rows) and metrics["unreadable"] == 0
    assert metrics["metrics"] == pytest.approx(recomputed(data, tmp_path / "out"))
    expected = {"charades-sta": {"R1@0.5", "R5@0.7", "mIoU"}, "qvhighlights": {"MR-mAP", "HIT@1", "HL-mAP"},
                "anet-captions-grounding": {"R1@0.3", "mIoU"}}[name]  # fmt: skip
    assert expected <= set(metrics["metrics"])
    assert any(value > 0 for value in metrics["metrics"].values())
    if name != "anet-captions-grounding":  # TimeChat's figures beside ours
        assert "TimeChat-7B" in result.stderr and metrics["reference"]


def test_the_format_is_told_where_eval_tells_formats(run, tiny_llama_dir: Path, videos: Path, tmp_path: Path) -> None:
    """A .txt is Charades-STA's and a QVHighlights .jsonl is told by its rows; an ActivityNet
    Captions .json, an annotation file, needs --dataset; find's options are the grounding
    benchmarks' only."""
    result = evaluate(run, tiny_llama_dir, qvhighlights(tmp_path), videos, tmp_path / "qvh", "--limit", "1")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dataset"] == "qvhighlights"
    assert find_eval.grounding_benchmark(charades(tmp_path), None) == "charades-sta"
    anet = evaluate(run, tiny_llama_dir, activitynet(tmp_path), videos, tmp_path / "anet")
    assert anet.exit_code == 2 and "--dataset anet-captions-grounding" in anet.stderr, anet.output
    wrong = evaluate(run, tiny_llama_dir, activitynet(tmp_path), videos, tmp_path / "w", "--dataset", "charades-sta")
    assert wrong.exit_code == 2 and "charades-sta is read from its .txt file" in wrong.stderr
    own = tmp_path / "own.jsonl"
    own.write_text(json.dumps({"video": "brg.mp4", "label": "red"}) + "\n")
    fps = evaluate(run, tiny_llama_dir, own, videos, tmp_path / "own")
    assert fps.exit_code == 2 and "are for the grounding benchmarks" in fps.stderr


class Killed(BaseException):
    """Stops a run with no chance to clean up, as a kill does."""


def test_a_stopped_run_goes_on_with_the_videos_not_found_yet(
    run, tiny_llama_dir: Path, videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the first video's rows (and one row of the second, cut short), the same
    command reads the second video alone and ends with a whole run's metrics."""
    data = charades(tmp_path)
    whole = evaluate(run, tiny_llama_dir, data, videos, tmp_path / "whole")
    assert whole.exit_code == 0, whole.output

    original = find_eval.GroundingEvaluation.predict

    def killed_after_the_first(self, groups, on_predicted):
        def predicted(group, rows):
            if group[0].video_id != "brg":
                raise Killed()
            on_predicted(group, rows)

        original(self, groups, predicted)

    stopped = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        patch.setattr(find_eval.GroundingEvaluation, "predict", killed_after_the_first)
        with pytest.raises(Killed):
            evaluate(run, tiny_llama_dir, data, videos, stopped)
    assert [row["id"].split("_")[0] for row in rows_of(stopped)] == ["brg"] * 3
    planted = {**rows_of(tmp_path / "whole")[3], "moments": [[0.0, 6.0, 1.0]]}  # the second video's, one row
    with open(stopped / "predictions.jsonl", "a") as file:
        file.write(json.dumps(planted) + "\n" + '{"id": "rgb_5", "vid')
    encoded = EncodedFrames(monkeypatch)
    again = evaluate(run, tiny_llama_dir, data, videos, stopped)
    assert again.exit_code == 0, again.output
    assert "6 queries of 2 videos, 3 already in" in again.stderr
    assert encoded.count == FRAMES_PER_VIDEO  # the second video only, read whole again
    assert rows_of(stopped) == rows_of(tmp_path / "whole")
    assert json.loads(again.stdout)["metrics"] == json.loads(whole.stdout)["metrics"]
    other = evaluate(run, tiny_llama_dir, data, videos, stopped, "--score", "yes")
    assert other.exit_code == 2 and "score 'likelihood' -> 'yes'" in other.stderr


def test_missing_and_unreadable_videos_are_said_counted_and_left_out(
    run, tiny_llama_dir: Path, videos: Path, tmp_path: Path
) -> None:
    """As eval does for its other data: a missing video is warned of before the model loads, an
    unreadable one named; their queries are counted, left out of the metrics, status 1. None of
    the videos there: refused before the model loads."""
    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "brg.mp4").write_bytes((videos / "brg.mp4").read_bytes())
    data = qvhighlights(tmp_path)
    result = evaluate(run, tiny_llama_dir, data, folder, tmp_path / "out")
    assert result.exit_code == 1, result.output
    assert result.stderr.index("1 of the 2 videos do not exist") < result.stderr.index("Loading")
    metrics = json.loads(result.stdout)
    assert (metrics["examples"], metrics["unreadable"]) == (2, 2)
    scored = [row for row in rows_of(tmp_path / "out") if "error" not in row]
    examples = [e for e in load_grounding(data) if e.video_id == "brg"]
    assert metrics["metrics"] == pytest.approx(grounding_metrics(
        examples, {r["id"]: r["moments"] for r in scored},
        curves={r["id"]: [(2 * k + 1, s) for k, s in enumerate(r["saliency"])] for r in scored}))  # fmt: skip

    (folder / "rgb.mp4").write_bytes(b"not a video")
    broken = evaluate(run, tiny_llama_dir, data, folder, tmp_path / "out")
    assert broken.exit_code == 1 and "rgb.mp4: " in broken.stderr, broken.output
    assert "exist" not in broken.stderr

    none = evaluate(run, tiny_llama_dir, data, tmp_path / "nowhere", tmp_path / "none")
    assert none.exit_code == 2 and "none of the 2 videos exists" in none.stderr and "Loading" not in none.stderr
