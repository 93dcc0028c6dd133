"""`malmm eval`: MA-LMM's annotation formats, its scoring rules, caption metrics against
pycocoevalcap's own pipeline, and resuming a stopped evaluation."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from malmm_cli.cli import app
from malmm_cli.jobs import benchmarks, eval_run
from malmm_cli.jobs import evaluate as evaluation
from malmm_cli.jobs.dataset import DatasetError, read_examples
from malmm_cli.jobs.errors import SetupError, UsageError
from malmm_cli.jobs.eval_run import EvalRequest, evaluate_data, missing_videos
from malmm_cli.jobs.grounding import GROUNDING_BENCHMARKS
from malmm_cli.jobs.model import RunOptions
from malmm_cli.jobs.reporting import Silent
from malmm_cli.jobs.scoring import caption_scores, java_available, ranked_accuracy, simple_tokens, top_k_accuracy
from tests.media import SCENE_COLOURS, make_scene

COLOURS = list(SCENE_COLOURS)
SMALL = ["--device", "cpu", "--frames", "4", "--memory-bank-length", "2"]


def _write(path: Path, content: object) -> Path:
    path.write_text(json.dumps(content))
    return path


def test_the_command_line_offers_the_benchmark_table() -> None:
    """--dataset takes exactly the benchmarks the job knows, in the table's order."""
    result = CliRunner().invoke(app, ["eval", "data.jsonl", "--dataset", "nope"])
    assert result.exit_code == 2
    choices = [*benchmarks.BENCHMARKS, *GROUNDING_BENCHMARKS]
    assert f"'nope' is not one of: {', '.join(choices)}" in " ".join(result.output.split())


def test_each_annotation_format(tmp_path: Path) -> None:
    """MA-LMM's annotation files, as in its repository's data/*/annotation, become scored items."""
    qa = {"0": {"question": "what is the man doing?", "answer": "cooking", "question_id": "q0", "video": "v1"},
          "1": {"question": "who is talking?", "answer": "woman", "question_id": "q1", "video": "v1"}}  # fmt: skip
    benchmark, items = benchmarks.load_items(_write(tmp_path / "qa.json", qa), "msvd-qa", tmp_path, None)
    assert benchmark.first_word and [i.id for i in items] == ["q0", "q1"] and items[1].references == ("woman",)
    assert len(evaluation.Evaluation(None, benchmark, items, None, tmp_path).clips(set())) == 1  # one read, 2 questions

    captions = {
        str(n): {"image_id": video, "caption": caption, "video": video, "frame_length": 150}
        for n, (video, caption) in enumerate(
            [("video7010", "a man is cooking"), ("video7010", "someone cooks"), ("video7011", "a dog runs")]
        )
    }
    annotation = _write(tmp_path / "cap.json", captions)
    benchmark, items = benchmarks.load_items(annotation, "msrvtt-caption", None, None)
    assert benchmark.task == "caption" and [(i.id, i.references) for i in items] == [
        ("video7010", ("a man is cooking", "someone cooks")), ("video7011", ("a dog runs",))]  # fmt: skip

    youcook = {"GLd3aX16zBg_0": {"video": "GLd3aX16zBg", "start_time": 90, "end_time": 102, "caption": "add oil"}}
    _, (item,) = benchmarks.load_items(_write(tmp_path / "yc.json", youcook), "youcook2", None, None)
    assert (item.start, item.end, item.references) == (90.0, 102.0, ("add oil",))

    lvu = {
        "0xWMqsZOYWg": {"duration": 150, "num_frames": 1500, "director": "steven", "director_answer": "(a)"},
        "ZZZ": {"duration": 120, "num_frames": 1200, "scene": "office", "scene_answer": "(b)"},
    }  # no director
    benchmark, items = benchmarks.load_items(_write(tmp_path / "lvu.json", lvu), "lvu-director", None, None)
    assert benchmark.prompt == "what is the director of the movie?" and benchmark.generation().max_new_tokens == 5
    assert [(i.id, i.start, i.end) for i in items] == [("0xWMqsZOYWg_0", 0, 99), ("0xWMqsZOYWg_20", 20, 119),
                                                       ("0xWMqsZOYWg_40", 40, 139)]  # fmt: skip

    with pytest.raises(DatasetError, match="no examples with a 'year' field"):
        benchmarks.load_items(tmp_path / "lvu.json", "lvu-year", None, None)

    breakfast = {"P03_cereals": {"duration": 56, "class_name": "cereal", "class_label": 0}}
    _, (item,) = benchmarks.load_items(_write(tmp_path / "bf.json", breakfast), "breakfast", None, None)
    assert item.references == ("cereal",)
    coin = {"-0og5HDGGMc": {"video": "-0og5HDGGMc", "target": "make french fries"}}
    _, (item,) = benchmarks.load_items(_write(tmp_path / "coin.json", coin), "coin", None, None)
    assert item.references == ("make french fries",)

    twice = tmp_path / "twice.jsonl"
    twice.write_text('{"id": "q1", "video": "a.mp4", "label": "x"}\n{"id": "q1", "video": "b.mp4", "label": "y"}\n')
    with pytest.raises(DatasetError, match="two examples have the id 'q1'"):
        benchmarks.load_items(twice, None, None, None)
    same_name = tmp_path / "same-name.jsonl"
    same_name.write_text('{"video": "x/clip.mp4", "caption": "a"}\n{"video": "y/clip.mp4", "caption": "b"}\n')
    _, items = benchmarks.load_items(same_name, None, None, None)
    assert [item.id for item in items] == [str(tmp_path / "x" / "clip.mp4"), str(tmp_path / "y" / "clip.mp4")]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(f'{{"video": "{n}.mp4", "label": "{label}"}}\n' for n, label in enumerate("bab")))
    benchmark, items = benchmarks.load_items(labels, None, None, None)
    assert benchmarks.label_set(benchmark, items) == ("a", "b")

    own = tmp_path / "own.jsonl"  # malmm train's format: the task follows from the columns
    own.write_text('{"video": "a.mp4", "question": "what colour?", "answer": "red"}\n' * 3)
    benchmark, items = benchmarks.load_items(own, None, None, None)
    assert benchmark.task == "ask" and not benchmark.first_word and benchmark.ignore_case and len(items) == 3


def test_coin_is_scored_on_its_val_split(tmp_path: Path) -> None:
    """COIN.json holds every split, each entry naming its `subset`: eval reads the val split (as
    MA-LMM evaluates), or the one --split names; train reads train and --val the val split."""
    from malmm_cli.jobs.training.data import read_data

    coin = _write(tmp_path / "COIN.json", {
        "a": {"subset": "train", "target": "make french fries", "duration": 9},
        "b": {"subset": "val", "target": "change a tire", "duration": 9},
        "c": {"subset": "train", "target": "paint a wall", "duration": 9},
    })  # fmt: skip
    _, items = benchmarks.load_items(coin, "coin", tmp_path, None)
    assert [(i.id, i.references) for i in items] == [("b", ("change a tire",))]
    _, items = benchmarks.load_items(coin, "coin", tmp_path, None, split="train")
    assert [i.id for i in items] == ["a", "c"]
    with pytest.raises(DatasetError, match=r"COIN\.json has no 'test' split: its subsets are train, val"):
        benchmarks.load_items(coin, "coin", tmp_path, None, split="test")
    train, val = read_data(coin, "classify", coin, None, 0, tmp_path)
    assert [e.label for e in train] == ["make french fries", "paint a wall"] and [e.label for e in val] == [
        "change a tire"]  # fmt: skip
    with pytest.raises(DatasetError, match="holds several splits \\(train, val\\): choose one with --split"):
        read_examples(coin, "classify")
    lvu = _write(tmp_path / "lvu.json", {"0Ij2veeSsE4": {"subset": "test", "duration": 162, "director": "steven"}})
    _, items = benchmarks.load_items(lvu, "lvu-director", tmp_path, None)  # one split ("test"): read whole
    assert [i.id for i in items] == ["0Ij2veeSsE4_0", "0Ij2veeSsE4_20", "0Ij2veeSsE4_40", "0Ij2veeSsE4_60"]
    breakfast = _write(tmp_path / "bf.json", {"P03_cereals": {"class_name": "cereal"}})
    with pytest.raises(DatasetError, match=r"--split val: bf\.json holds one split"):
        benchmarks.load_items(breakfast, "breakfast", tmp_path, None, split="val")


def test_annotation_names_and_videos_as_the_datasets_name_them(tmp_path: Path) -> None:
    """YouCook2 clips are named by the annotation's segment (its ground truth's ids), and
    ActivityNet's videos are found under their usual `v_<id>` file names."""
    youcook = {"xHr8X2Wpmno_0047_0060": {"video": "xHr8X2Wpmno", "segment": "xHr8X2Wpmno_0047_0060",
                                         "start_time": 47, "end_time": 60, "caption": "pick the ends off"}}  # fmt: skip
    _, (item,) = benchmarks.load_items(_write(tmp_path / "yc.json", youcook), "youcook2", tmp_path, None)
    assert (item.id, item.start, item.end) == ("xHr8X2Wpmno_0047_0060", 47.0, 60.0)
    (tmp_path / "v_1QIUV7WYKXg.mp4").touch()
    activitynet = {"v_1QIUV7WYKXg_3": {"answer": "no", "question": "is the athlete wearing trousers",
                                       "question_id": "v_1QIUV7WYKXg_3", "video": "1QIUV7WYKXg"}}  # fmt: skip
    _, (item,) = benchmarks.load_items(_write(tmp_path / "qa.json", activitynet), "activitynet-qa", tmp_path, None)
    assert item.video == tmp_path / "v_1QIUV7WYKXg.mp4" and missing_videos([item]) == ([], 1)


def test_an_annotation_file_needs_its_benchmark(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Without --dataset an MA-LMM annotation file would be scored by the own-data rule (whole
    answers) instead of its benchmark's (MSVD-QA: first words): refused before the model loads,
    naming the benchmarks that fit."""
    qa = _write(tmp_path / "qa_test.json", {"0": {"question": "who?", "answer": "man", "video": "v1"}})
    result = _eval(qa, "--model", tiny_llama_dir, *SMALL, "--videos", tmp_path, "--output", tmp_path / "out")
    assert result.exit_code == 2 and "Loading" not in result.output
    assert "qa_test.json is an MA-LMM annotation file" in result.output
    assert "--dataset (msrvtt-qa, msvd-qa, activitynet-qa)" in result.output


def test_missing_videos_are_said_before_the_model_loads(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """None there: a usage error before loading. Some missing: a warning before loading, then
    the run scores the rest and ends with status 1."""
    gone = _write_rows(tmp_path / "gone.jsonl", [{"video": "a.mp4", "label": "red"}, {"video": "b.mp4", "label": "x"}])
    result = _eval(gone, "--model", tiny_llama_dir, *SMALL, "--output", tmp_path / "out")
    assert result.exit_code == 2 and "none of the 2 videos exists" in result.output, result.output
    assert "Loading" not in result.output and not (tmp_path / "out" / "predictions.jsonl").exists()
    make_scene(tmp_path / "good.mp4", "red", seed=0)
    some = _write_rows(tmp_path / "some.jsonl", [{"video": "good.mp4", "label": "red"},
                                                 {"video": "b.mp4", "label": "blue"}])  # fmt: skip
    result = _eval(some, "--model", tiny_llama_dir, *SMALL, "--output", tmp_path / "out2")
    assert result.exit_code == 1, result.output
    warning = result.output.index("1 of the 2 videos do not exist")
    assert warning < result.output.index("Loading")
    (tmp_path / "good.mp4").unlink()  # a run's predicted clips need no video: scored again all the same
    predictions = tmp_path / "out2" / "predictions.jsonl"
    rows = [json.loads(line) for line in predictions.read_text().splitlines() if "error" not in line]
    predicted = {"prediction": "blue", "beams": ["blue"], "ranked": ["blue", "red"]}
    _write_rows(predictions, [*rows, {"id": "line 2", "video": "b.mp4", "references": ["blue"], **predicted}])
    again = _eval(some, "--model", tiny_llama_dir, *SMALL, "--output", tmp_path / "out2")
    assert again.exit_code == 0 and "exist" not in again.output, again.output


def test_scoring_rules() -> None:
    """Top-1 from the first beam, top-5 from any; MSVD/MSRVTT-QA by the first word only."""
    beams = [["a dog", "dog", "cat"], ["cat", "dog"], ["bird"]]
    assert top_k_accuracy(beams, ["dog", "dog", "cat"]) == pytest.approx({"top1": 0.0, "top5": 200 / 3})
    assert top_k_accuracy(beams, ["a", "cat", "cat"], first_word=True) == pytest.approx({"top1": 200 / 3,
                                                                                          "top5": 200 / 3})  # fmt: skip
    assert top_k_accuracy([["x"] * 6 + ["dog"]], ["dog"]) == {"top1": 0.0, "top5": 0.0}  # the 7th beam is not top-5
    assert top_k_accuracy([[" Dog"]], ["dog"]) == {"top1": 0.0, "top5": 0.0}  # MA-LMM's: exact
    assert top_k_accuracy([[" Dog"]], ["dog"], ignore_case=True) == {"top1": 100.0, "top5": 100.0}  # your own data
    assert ranked_accuracy([["b", "a"], ["a", "b"]], ["a", "a"]) == {"ranked_top1": 50.0, "ranked_top5": 100.0}
    assert benchmarks.windows(99, 100, 20) == [(0.0, 99)]  # shorter than a window: the whole video
    assert benchmarks.windows(None, 100, 20) == [(0.0, 99)]  # no duration given: the first window


REFERENCES = {
    "v1": ["A man is slicing a tomato.", "Someone cuts a tomato on a board.", "a person slices vegetables"],
    "v2": ["A dog runs across the park.", "The dog is running on grass."],
    "v3": ["Two women are dancing on a stage.", "women dance"],
}
PREDICTIONS = {"v1": "a man is cutting a tomato", "v2": "a dog is running in a park", "v3": "a woman is singing"}


@pytest.mark.skipif(not java_available(), reason="pycocoevalcap's tokenizer and METEOR need Java (.ci/run installs it)")
def test_caption_metrics_are_pycocoevalcaps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our four scores are those of pycocoevalcap's own COCOEvalCap pipeline (SPICE left out)."""
    import pycocoevalcap.eval as coco_eval

    class NoSpice:
        def compute_score(self, gts: dict, res: dict) -> tuple[float, list[float]]:
            return 0.0, [0.0] * len(gts)

        def method(self) -> str:
            return "SPICE"

    monkeypatch.setattr(coco_eval, "Spice", NoSpice)

    def coco(captions: dict[str, list[str]]) -> SimpleNamespace:
        annotations = {k: [{"image_id": k, "caption": c} for c in v] for k, v in captions.items()}
        return SimpleNamespace(imgToAnns=annotations, getImgIds=lambda: list(captions))

    official = coco_eval.COCOEvalCap(coco(REFERENCES), coco({k: [v] for k, v in PREDICTIONS.items()}))
    official.evaluate()
    ours = caption_scores(PREDICTIONS, REFERENCES)
    for name in ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
        assert ours[name] == pytest.approx(official.eval[name], abs=1e-12), name
    assert ours["aggregate"] == pytest.approx(sum(official.eval[n] for n in ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr")))
    without_java = caption_scores(PREDICTIONS, REFERENCES, use_java=False)
    assert without_java["METEOR"] is None and without_java["aggregate"] is None
    for name in ("Bleu_4", "ROUGE_L", "CIDEr"):  # plain captions tokenize alike
        assert without_java[name] == pytest.approx(ours[name], abs=1e-12), name


def test_simple_tokens() -> None:
    assert simple_tokens('A man, "slicing" a tomato... (fast)!') == "a man slicing a tomato fast"


def test_eval_resumes_where_it_stopped(tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed after some clips (its last line cut short) goes on with the same command and
    ends with the metrics of a run never stopped; other settings on the same folder are refused."""
    (tmp_path / "clips").mkdir()
    rows = []
    for i in range(5):
        make_scene(tmp_path / "clips" / f"{i}.mp4", COLOURS[i % 3], seed=i)
        rows += [{"video": f"clips/{i}.mp4", "question": q, "answer": a}
                 for q, a in (("what colour is the room?", COLOURS[i % 3]), ("what is it?", "a room"))]  # fmt: skip
    data = tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = ["eval", data, "--model", tiny_llama_dir, *SMALL, "-q"]
    whole = CliRunner().invoke(app, [str(a) for a in [*args, "--output", tmp_path / "whole"]], catch_exceptions=False)
    assert whole.exit_code == 0, whole.output
    expected = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    predicted = [json.loads(line) for line in (tmp_path / "whole" / "predictions.jsonl").read_text().splitlines()]
    assert len(predicted) == 10 and all(len(row["beams"]) == 5 for row in predicted)
    assert json.loads(whole.stdout)["metrics"] == expected["metrics"]

    original = evaluation.Evaluation.predict
    calls = []

    def killed_on_the_third(self, clips, on_predicted):
        def predicted(clip, rows):
            calls.append(clip)
            if len(calls) == 3:
                raise Killed()
            on_predicted(clip, rows)

        original(self, clips, predicted)

    stopped = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        patch.setattr(evaluation.Evaluation, "predict", killed_on_the_third)
        with pytest.raises(Killed):
            CliRunner().invoke(app, [str(a) for a in [*args, "--output", stopped]], catch_exceptions=False)
    assert len((stopped / "predictions.jsonl").read_text().splitlines()) == 4  # two clips of two questions
    with open(stopped / "predictions.jsonl", "a") as file:  # a kill while the third clip's rows were written:
        planted = {**predicted[4], "prediction": "planted", "beams": ["planted"]}  # must not survive
        file.write(json.dumps(planted) + "\n" + '{"id": "line 6", "vid')  # one whole row, one cut short
    again = CliRunner().invoke(app, [str(a) for a in [*args, "--output", stopped]], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    lines = (stopped / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 10 and len({json.loads(line)["id"] for line in lines}) == 10 and "planted" not in str(lines)
    assert json.loads((stopped / "metrics.json").read_text())["metrics"] == expected["metrics"]

    other = CliRunner().invoke(app, [str(a) for a in [*args, "--output", stopped, "--memory", "fifo"]])
    assert other.exit_code == 2 and "memory 'malmm' -> 'fifo'" in other.output

    def interrupted(self, clips, on_predicted):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(evaluation.Evaluation, "predict", interrupted)
        ctrl_c = CliRunner().invoke(app, [str(a) for a in [*args[:-1], "--output", tmp_path / "ctrl-c"]])
    assert ctrl_c.exit_code == 130 and "the same command goes on" in ctrl_c.output


class Killed(BaseException):
    """Stops a run with no chance to clean up, as a kill does."""


def test_unreadable_videos_are_named_counted_and_read_again(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """An unreadable video gets one line naming it and the run ends with status 1, its metrics
    those of the rest; once the video is fixed, the same command reads that video only."""
    make_scene(tmp_path / "good.mp4", "red", seed=0)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    data = tmp_path / "labels.jsonl"
    data.write_text('{"video": "good.mp4", "label": "red"}\n{"video": "broken.mp4", "label": "blue"}\n')
    args = [data, "--model", tiny_llama_dir, *SMALL, "--output", tmp_path / "out"]
    result = _eval(*args)
    assert result.exit_code == 1, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert "broken.mp4: " in line
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (metrics["examples"], metrics["unreadable"]) == (1, 1)
    assert "1 example could not be read and is left out" in result.output and json.loads(result.stdout) == metrics
    assert {"top1", "top5", "ranked_top1", "ranked_top5"} == set(metrics["metrics"])
    make_scene(tmp_path / "broken.mp4", "blue", seed=1)
    again = _eval(*args)
    assert again.exit_code == 0, again.output
    assert "2 examples, 1 already in" in again.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["line 1", "line 2"] and not any("error" in row for row in rows)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert (metrics["examples"], metrics["unreadable"]) == (2, 0)


def _scene_labels(folder: Path, count: int) -> Path:
    """`count` coloured scenes and a labels file naming them (the colour is the label)."""
    (folder / "clips").mkdir(exist_ok=True)
    for i in range(count):
        make_scene(folder / "clips" / f"{i}.mp4", COLOURS[i % 3], seed=i)
    rows = [{"video": f"clips/{i}.mp4", "label": COLOURS[i % 3]} for i in range(count)]
    return _write_rows(folder / "labels.jsonl", rows)


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _eval(*args: object):
    return CliRunner().invoke(app, ["eval", *(str(a) for a in args)], catch_exceptions=False)


def test_a_run_folder_checkpoint_is_identified_by_content(tiny_llama_dir: Path, tiny_malmm, tmp_path: Path) -> None:
    """`--checkpoint RUN` is the file RUN/model.safetensors by content: other weights in the same
    run folder are refused on a rerun rather than scored with the old predictions."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from malmm_cli.reading.fingerprint import content_hash
    from models.checkpoint import save_trained

    data = _scene_labels(tmp_path, 1)
    run = tmp_path / "run"
    run.mkdir()
    weights = run / "model.safetensors"
    save_trained(tiny_malmm.model, weights, str(tiny_llama_dir))
    args = [data, "--model", tiny_llama_dir, *SMALL, "--checkpoint", run, "--output", tmp_path / "out", "-q"]
    assert _eval(*args).exit_code == 0
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["checkpoint"] == content_hash(weights)
    tensors = load_file(str(weights))
    with safe_open(str(weights), framework="pt") as file:
        metadata = file.metadata()
    tensors["query_tokens"] = tensors["query_tokens"] + 1
    save_file(tensors, str(weights), metadata=metadata)  # the run trained on: other weights
    again = _eval(*args)
    assert again.exit_code == 2 and "holds predictions made otherwise (checkpoint" in again.output


def test_an_edited_data_file_is_not_scored_with_old_predictions(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """The data file is identified by content: reordered or relabelled rows on the same path would
    otherwise be scored against the old rows' videos and references."""
    data = _scene_labels(tmp_path, 2)
    args = [data, "--model", tiny_llama_dir, *SMALL, "--output", tmp_path / "out", "-q"]
    assert _eval(*args).exit_code == 0
    data.write_text("".join(reversed(data.read_text().splitlines(keepends=True))))
    again = _eval(*args)
    assert again.exit_code == 2 and "holds predictions made otherwise (data_content 'sha256:" in again.output


def test_output_that_is_a_file_is_a_usage_error(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Refused before the model loads, as caption's --output-dir is."""
    data = _write_rows(tmp_path / "labels.jsonl", [{"video": "a.mp4", "label": "red"}])
    (tmp_path / "afile").touch()
    result = _eval(data, "--model", tiny_llama_dir, *SMALL, "--output", tmp_path / "afile")
    assert result.exit_code == 2 and "exists and is not a folder" in result.output
    assert "Loading" not in result.output


# Runs `malmm eval` with each argument list given, in a fresh interpreter, and says whether torch got loaded.
REFUSALS = """
import json, sys
from typer.testing import CliRunner
from malmm_cli.cli import app
said = [CliRunner().invoke(app, ["eval", *args]) for args in json.loads(sys.argv[1])]
print(json.dumps({"said": [[r.exit_code, " ".join(r.output.split())] for r in said], "torch": "torch" in sys.modules}))
"""


def test_checks_that_need_no_model_run_before_torch_is_imported(tmp_path: Path) -> None:
    """A data file that needs --dataset, a --split it does not hold, videos not there, an output
    that is a file, a checkpoint not there: each is refused, and torch is still not imported."""
    qa = _write(tmp_path / "qa_test.json", {"0": {"question": "who?", "answer": "man", "video": "v1"}})
    coin = _write(tmp_path / "COIN.json", {"a": {"subset": "val", "target": "x", "duration": 9}})
    gone = _write_rows(tmp_path / "gone.jsonl", [{"video": "gone.mp4", "label": "red"}])
    there = _write_rows(tmp_path / "there.jsonl", [{"video": "there.mp4", "label": "red"}])
    (tmp_path / "there.mp4").touch()
    (tmp_path / "afile").touch()
    out = tmp_path / "out"
    cases = {
        "is an MA-LMM annotation file": [qa, "--videos", tmp_path, "--output", out],
        "COIN.json has no 'test' split": [coin, "--dataset", "coin", "--split", "test", "--output", out],
        "none of the 1 videos exists": [gone, "--output", out],
        "afile exists and is not a folder": [there, "--output", tmp_path / "afile"],
        "nothere: no such file or folder": [there, "--checkpoint", tmp_path / "nothere", "--output", out],
    }
    argv = json.dumps([[str(arg) for arg in args] for args in cases.values()])
    ran = subprocess.run([sys.executable, "-c", REFUSALS, argv], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    told = json.loads(ran.stdout)
    for expected, (status, output) in zip(cases, told["said"], strict=True):
        assert status == 2 and expected in output, (expected, output)
    assert not told["torch"]


def test_the_job_runs_from_python(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """evaluate_data needs no terminal: it refuses with the option to blame, tells its progress
    of each clip, and returns the metrics it wrote; run again, it starts where it ended."""
    data = _scene_labels(tmp_path, 2)
    options = RunOptions(model=str(tiny_llama_dir), device="cpu", frames=4, memory_bank_length=2)
    (tmp_path / "afile").touch()
    with pytest.raises(UsageError) as refused:
        evaluate_data(EvalRequest(data, output=tmp_path / "afile"), options, Silent())
    assert refused.value.option == "--output"
    with pytest.raises(SetupError, match="none of the 1 videos exists"):
        evaluate_data(EvalRequest(_write_rows(tmp_path / "gone.jsonl", [{"video": "gone.mp4", "label": "x"}])),
                      options, Silent())  # fmt: skip

    spans: list[tuple[int, int]] = []
    clips: list[int] = []

    @contextmanager
    def progress(total: int, done: int) -> Iterator[SimpleNamespace]:
        spans.append((total, done))
        yield SimpleNamespace(advance=lambda items, seconds: clips.append(items))

    request = EvalRequest(data, output=tmp_path / "out")
    metrics = evaluate_data(request, options, Silent(), progress)
    assert json.loads(json.dumps(metrics)) == json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["examples"] == 2 and spans == [(2, 0)] and clips == [1, 1]
    assert evaluate_data(request, options, Silent(), progress) == metrics
    assert spans == [(2, 0), (2, 2)] and clips == [1, 1]


def test_captions_that_could_not_be_scored_are_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without pycocoevalcap the caption metrics cannot be computed: said before the model loads."""

    def not_installed(name: str, *args: object) -> object:
        return None if name == "pycocoevalcap" else found(name, *args)

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    found = eval_run.importlib.util.find_spec
    monkeypatch.setattr(eval_run.importlib.util, "find_spec", not_installed)
    monkeypatch.setattr(eval_run, "load_model", no_loading)
    (tmp_path / "a.mp4").touch()
    data = _write_rows(tmp_path / "captions.jsonl", [{"video": "a.mp4", "caption": "a red room"}])
    with pytest.raises(SetupError, match="caption metrics need pycocoevalcap"):
        evaluate_data(EvalRequest(data, output=tmp_path / "out"), RunOptions(device="cpu"), Silent())
