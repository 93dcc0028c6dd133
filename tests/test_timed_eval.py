"""`malmm eval` for answers that carry times (jobs/timed_eval.py): dense captioning on YouCook2's
and ActivityNet Captions' annotation files, and grounding by generation (--by generate) on the
grounding files `malmm find` reads. The tiny model's text is replaced by scripted answers (what a
checkpoint trained with --task dense/ground would say), so that the figures are known: the
metrics must be dense_metrics'/grounding_metrics' over those answers, parsed as timed_text
parses them, with the answers that give no span counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from malmm_cli.jobs.dense_metrics import dense_caption_metrics
from malmm_cli.jobs.grounding import grounding_metrics, load_grounding
from malmm_cli.reading.results import TimedText
from models import Malmm
from models.presets import DENSE, GROUND
from tests import test_find_eval
from tests.test_find import EncodedFrames

SMALL = ["--device", "cpu", "--frames", "4", "--memory-bank-length", "2", "--no-cache"]
videos = test_find_eval.videos  # the fixture: brg.mp4, rgb.mp4 (three 2 s scenes), v_anet.mp4
SCENES = test_find_eval.SCENES
# what the scripted model answers a grounding question, by the colour asked about
SPANS = {
    "red": "It happens at 2.0 - 4.0 seconds.",
    "blue": "from 0 to 2 seconds, or 3 - 5 seconds, or 5 -",  # cut off inside a third span: partly parsed
    "green": "I cannot tell.",
}
DENSE_ANSWER = "0.0 - 2.0 seconds, a red screen. 2.0 - 4.0 seconds, a blue screen."


class Scripted:
    """Malmm.generate_beams replaced: each prompt's answer from `answer(prompt)`; the prompts and
    the generation settings asked are kept."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answer):
        self.prompts: list[str] = []
        self.settings = []

        def generate(malmm, tokens, prompts, settings, told=None):
            self.prompts += prompts
            self.settings.append(settings)
            return [[answer(prompt)] for prompt in prompts]

        monkeypatch.setattr(Malmm, "generate_beams", generate)


def grounding_answer(prompt: str) -> str:
    return next(text for colour, text in SPANS.items() if f"'{colour}'" in prompt)


def evaluate(run, model: Path, data: Path, videos: Path, output: Path, *args: object):
    return run("eval", data, "--videos", videos, "--output", output, "--model", model, *SMALL, *args, model=False)


def rows_of(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "predictions.jsonl").read_text().splitlines()]


def test_grounding_by_generation_scores_the_spans_said(
    run, tiny_llama_dir: Path, videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = test_find_eval.charades(tmp_path)
    scripted = Scripted(monkeypatch, grounding_answer)
    encoded = EncodedFrames(monkeypatch)
    result = evaluate(run, tiny_llama_dir, data, videos, tmp_path / "out", "--by", "generate")
    assert result.exit_code == 0, result.output
    assert encoded.count == 4 * len(SCENES)  # one read per video, its three queries asked together
    assert sorted(scripted.prompts) == sorted(GROUND.prompt(c) for colours in SCENES.values() for c in colours)
    assert {s.max_new_tokens for s in scripted.settings} == {GROUND.generation.max_new_tokens}
    rows = rows_of(tmp_path / "out")
    examples = load_grounding(data)
    assert [row["id"] for row in rows] == [e.qid for e in examples]
    # the spans in the order said, the first ranked first; green: no span, a miss
    said = {"red": [(2.0, 4.0, 1.0)], "blue": [(0.0, 2.0, 1.0), (3.0, 5.0, 0.5)], "green": []}
    assert [[row_event[:2] for row_event in row["events"]] for row in rows] == [
        [[s, e] for s, e, _ in said[x.query]] for x in examples
    ]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["metrics"] == pytest.approx(grounding_metrics(examples, [said[e.query] for e in examples]))
    assert metrics["metrics"]["R1@0.5"] == pytest.approx(100 * 2 / 6)  # brg's red and blue are right
    assert metrics["unparsed"] == 2 and metrics["examples"] == 6
    assert metrics["partly_parsed"] == 2  # blue's, in both videos: its two spans scored
    assert all(bool(row["problems"]) == (row["query"] != "red") for row in rows)
    assert "gave no time span" in result.stderr and "malmm generate" in result.stderr
    assert "TimeChat-7B" in result.stderr
    again = evaluate(run, tiny_llama_dir, data, videos, tmp_path / "out", "--by", "generate")  # all there: nothing read
    assert again.exit_code == 0 and encoded.count == 4 * len(SCENES)


def test_dense_captioning_on_activitynet_captions(
    run, tiny_llama_dir: Path, videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = test_find_eval.activitynet(tmp_path)  # v_anet: red 0-2, green 2-4, blue 4-6
    scripted = Scripted(monkeypatch, lambda prompt: DENSE_ANSWER)
    result = evaluate(run, tiny_llama_dir, data, videos, tmp_path / "out", "--dataset", "anet-captions-dense")
    assert result.exit_code == 0, result.output
    assert scripted.prompts == [DENSE.prompt()]
    assert {s.max_new_tokens for s in scripted.settings} == {DENSE.generation.max_new_tokens}
    (row,) = rows_of(tmp_path / "out")
    assert row["events"] == [[0.0, 2.0, "a red screen"], [2.0, 4.0, "a blue screen"]]
    assert row["references"] == [[0.0, 2.0, "red"], [2.0, 4.0, "green"], [4.0, 6.0, "blue"]]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    expected = dense_caption_metrics({"anet": [TimedText(*e) for e in row["events"]]},
                                     {"anet": [TimedText(*e) for e in row["references"]]})  # fmt: skip
    assert metrics["metrics"] == pytest.approx(expected)
    assert metrics["metrics"]["Precision"] == 100.0 and metrics["metrics"]["Recall"] == pytest.approx(100 * 2 / 3)
    assert metrics["unparsed"] == 0 and metrics["partly_parsed"] == 0 and metrics["method"] == "malmm dense"


def youcook2(folder: Path) -> Path:
    """YouCook2's annotation file: one validation video (in its SUBSET/RECIPE_TYPE folder, as
    YouCook2 ships them), one training video that is not read."""
    database = {
        "rgb": {"subset": "validation", "recipe_type": "101", "duration": 6.0,
                "annotations": [{"segment": [0, 2], "id": 0, "sentence": "a red screen"},
                                {"segment": [2, 4], "id": 1, "sentence": "a green screen"}]},
        "brg": {"subset": "training", "recipe_type": "101", "duration": 6.0,
                "annotations": [{"segment": [0, 2], "id": 0, "sentence": "blue"}]},
    }  # fmt: skip
    path = folder / "youcookii_annotations_trainval.json"
    path.write_text(json.dumps({"database": database}))
    return path


def test_dense_captioning_on_youcook2_counts_answers_without_times(
    run, tiny_llama_dir: Path, videos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = tmp_path / "videos" / "validation" / "101"
    shipped.mkdir(parents=True)
    (shipped / "rgb.mp4").write_bytes((videos / "rgb.mp4").read_bytes())
    Scripted(monkeypatch, lambda prompt: "a video of colours")
    data = youcook2(tmp_path)
    result = evaluate(run, tiny_llama_dir, data, tmp_path / "videos", tmp_path / "out", "--dataset", "youcook2-dense")
    assert result.exit_code == 0, result.output
    (row,) = rows_of(tmp_path / "out")
    assert row["id"] == "rgb" and row["events"] == [] and row["problems"]
    metrics = json.loads(result.stdout)
    assert metrics["unparsed"] == 1 and metrics["partly_parsed"] == 0 and metrics["examples"] == 1
    assert metrics["metrics"]["F1"] == 0.0 and metrics["metrics"]["CIDEr"] == 0.0
    assert metrics["reference"] == {"SODA_c": 1.2, "CIDEr": 3.4, "F1": 12.6}
    assert "SODA_c" in result.stderr and "gave no time span" in result.stderr


def test_what_generated_times_refuse(run, tiny_llama_dir: Path, videos: Path, tmp_path: Path) -> None:
    data = test_find_eval.charades(tmp_path)
    window = evaluate(run, tiny_llama_dir, data, videos, tmp_path / "a", "--by", "generate", "--window", "2")
    assert window.exit_code != 0 and "--window" in window.output
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"video": "rgb.mp4", "question": "what?", "answer": "red"}) + "\n")
    not_grounding = evaluate(run, tiny_llama_dir, rows, videos, tmp_path / "b", "--by", "generate")
    assert not_grounding.exit_code != 0 and "--by is for the grounding benchmarks" in not_grounding.output
    wrong_file = evaluate(run, tiny_llama_dir, data, videos, tmp_path / "c", "--dataset", "youcook2-dense")
    assert wrong_file.exit_code != 0 and "annotation .json" in wrong_file.output
    training_only = youcook2(tmp_path)
    subset = evaluate(
        run, tiny_llama_dir, training_only, videos, tmp_path / "d", "--dataset", "youcook2-dense", "--split", "test"
    )
    assert subset.exit_code != 0 and "no 'test' split" in subset.output
    by_find = evaluate(run, tiny_llama_dir, training_only, videos, tmp_path / "e", "--dataset", "youcook2-dense",
                       "--by", "find")  # fmt: skip
    assert by_find.exit_code == 2 and "scored on generated captions" in by_find.output
