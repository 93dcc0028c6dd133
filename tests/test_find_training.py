"""`malmm train --task find`: labelled moments read from rows and the grounding formats, find's
windows labelled from them, the loss's likelihoods, and a tiny model whose held-out R@1 at IoU 0.5
rises with training; resume and validation."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from malmm_cli.cli import app
from malmm_cli.jobs.dataset import DatasetError
from malmm_cli.jobs.grounding import GroundingExample, recall_metrics
from malmm_cli.jobs.training.data import read_files
from malmm_cli.jobs.training.moments import LabelledMoment, label_windows, windows
from malmm_cli.jobs.training.trainer import Trainer
from models import Malmm
from models.training import answer_log_likelihoods, answer_loss
from tests.media import make_scenes
from tests.tiny_models import build_model_folder, tiny_config

ORDERS = list(itertools.permutations(["blue", "red", "green"]))  # each video: three 2 s scenes
# 2 s windows of 4 frames (find reads them at --fps 2 --window 2), a bank shorter than a window
TRAIN = ["--device", "cpu", "--frames", "4", "--window", "2", "--memory-bank-length", "2", "--batch-size", "4",
         "--warmup-steps", "5", "--lr", "2e-3", "--negatives", "2", "-q"]  # fmt: skip
FIND = ["--device", "cpu", "--fps", "2", "--window", "2", "--memory-bank-length", "2"]


def malmm_cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- data -------------------------------------------------------------------------------------------


def test_rows_and_each_grounding_format_become_labelled_moments(tmp_path: Path) -> None:
    rows = _write(tmp_path / "moments.jsonl", json.dumps({"video": "a.mp4", "query": "red", "start": 2, "end": 4})
                  + "\n\n" + json.dumps({"video": "b.mp4", "query": " a dog ", "start": "0", "end": 1.5,
                                         "id": "dog"}) + "\n")  # fmt: skip
    (first, second), _ = read_files(rows, "find", None)
    assert isinstance(first, LabelledMoment)
    assert (first.id, first.video, first.query, first.spans) == ("moments.jsonl line 1", tmp_path / "a.mp4", "red",
                                                                 ((2.0, 4.0),))  # fmt: skip
    assert (second.id, second.query, second.spans) == ("moments.jsonl dog", "a dog", ((0.0, 1.5),))
    table = _write(tmp_path / "moments.csv", "video,query,start,end\na.mp4,red,2,4\n")
    assert [(m.query, m.spans) for m in read_files(table, "find", None)[0]] == [("red", ((2.0, 4.0),))]

    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "3MSZA.mp4").write_bytes(b"")
    (videos / "v_abc.mp4").write_bytes(b"")
    charades = _write(tmp_path / "charades.txt", "3MSZA 24.3 30.4##person turn a light on.\n")
    (moment,), _ = read_files(charades, "find", None, videos)
    assert (moment.video, moment.query, moment.spans) == (videos / "3MSZA.mp4", "person turn a light on.",
                                                          ((24.3, 30.4),))  # fmt: skip
    qvh = _write(tmp_path / "qvh.jsonl", json.dumps({"qid": 7, "query": "a man talks", "vid": "3MSZA", "duration": 150,
                                                     "relevant_windows": [[0, 10], [20, 30]]}) + "\n")  # fmt: skip
    (moment,), _ = read_files(qvh, "find", None, videos)
    assert (moment.id, moment.video, moment.spans, moment.duration) == ("qvh.jsonl 7", videos / "3MSZA.mp4",
                                                                        ((0.0, 10.0), (20.0, 30.0)), 150.0)  # fmt: skip
    anet = _write(tmp_path / "anet.json", json.dumps({"abc": {"duration": 20.0, "timestamps": [[1, 5], [4, 25]],
                                                              "sentences": ["a dog runs", "it sits"]}}))  # fmt: skip
    moments, _ = read_files(anet, "find", None, videos)
    expected = [("v_abc.mp4", "a dog runs", ((1.0, 5.0),)), ("v_abc.mp4", "it sits", ((4.0, 20.0),))]
    assert [(m.video.name, m.query, m.spans) for m in moments] == expected


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        ("m.jsonl", '{"video": "a.mp4", "start": 1, "end": 2}\n', "m.jsonl line 1: no query"),
        ("m.jsonl", '{"video": "a.mp4", "query": "red", "start": 1}\n', "m.jsonl line 1: no end"),
        ("m.jsonl", '{"video": "a.mp4", "query": "red", "start": 3, "end": 2}\n', "end (2) must be after start (3)"),
        ("m.jsonl", '{"video": "a.mp4", "query": "red", "start": "soon", "end": 2}\n', "start must be a number"),
        ("m.jsonl", '{"video": "a.mp4", "query": "red", "start": -1, "end": 2}\n', "start must be a number"),
        ("m.jsonl", '{"video": "a.mp4", "query": "red", "start": 1, "end": 2}\n{"video"\n', "m.jsonl line 2: not JSON"),
        ("m.csv", "video,query,start\na.mp4,red,1\n", "m.csv line 2: no end"),
        ("m.jsonl", "", "m.jsonl has no moments"),
        ("m.txt", "3MSZA 24.3##person\n", "expected 'VIDEO START END##SENTENCE'"),
        ("m.srt", "1\n", "give rows of video, query, start, end"),
    ],
)
def test_bad_rows_are_refused_with_where_and_why(tmp_path: Path, name: str, text: str, says: str) -> None:
    with pytest.raises(DatasetError) as refused:
        read_files(_write(tmp_path / name, text), "find", None)
    assert says in str(refused.value)


def test_the_cli_refuses_bad_moments_and_find_options_elsewhere(tmp_path: Path) -> None:
    data = _write(tmp_path / "m.jsonl", '{"video": "a.mp4", "query": "red", "start": 3, "end": 2}\n')
    refused = malmm_cli("train", data, "--task", "find", "-o", tmp_path / "run")
    assert refused.exit_code == 2 and "m.jsonl line 1: end (2) must be after start (3)" in refused.stderr
    clips = _write(tmp_path / "c.jsonl", '{"video": "a.mp4", "caption": "red"}\n')
    other = malmm_cli("train", clips, "--task", "caption", "-o", tmp_path / "run", "--window", "2")
    assert other.exit_code == 2 and "--window" in other.stderr and "--task find only" in other.stderr


def test_windows_inside_the_span_are_positives_and_those_that_miss_it_negatives() -> None:
    assert windows(6.0, 2.0) == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)]
    assert windows(5.0, 2.0) == [(0.0, 2.0), (2.0, 4.0), (4.0, 5.0)]  # the last one shorter
    assert label_windows(windows(6.0, 2.0), ((2.0, 4.0),)) == ([1], [0, 2])
    # half of window 1 in the span: positive; window 2 grazed (a quarter): neither
    assert label_windows(windows(8.0, 2.0), ((3.0, 4.5),)) == ([1], [0, 3])
    assert label_windows(windows(8.0, 4.0), ((1.0, 2.0),)) == ([0], [1])  # shorter than half: the best window
    assert label_windows(windows(6.0, 2.0), ((0.0, 2.0), (4.0, 6.0))) == ([0, 2], [1])  # QVHighlights: several
    assert label_windows(windows(6.0, 2.0), ((7.0, 9.0),)) == ([], [0, 1, 2])  # past the end: no positive


@pytest.mark.parametrize("llm", ["llama", "t5"])
def test_answer_log_likelihoods_are_what_find_ranks(llm: str, tiny_malmm: Malmm, tiny_malmm_t5: Malmm) -> None:
    """The loss's per-window log-likelihoods are score_labels' (find's scores), and their sum per
    token is answer_loss."""
    malmm = tiny_malmm if llm == "llama" else tiny_malmm_t5
    output = torch.randn(3, 8, 64, generator=torch.Generator().manual_seed(1))
    prompts, targets = ["what does the video describe?"] * 3, ["red", "a dog runs", "red"]
    with torch.no_grad():
        ll, tokens = answer_log_likelihoods(malmm.model, malmm.tokenizer, output, prompts, targets)
        ranked = malmm.score_labels(output, prompts, ["red", "a dog runs"])
        loss = answer_loss(malmm.model, malmm.tokenizer, output, prompts, targets)
    torch.testing.assert_close(ll, torch.stack([ranked[0, 0], ranked[1, 1], ranked[2, 0]]), rtol=1e-4, atol=1e-4)
    assert (-ll.sum() / tokens.sum()).item() == pytest.approx(loss.item(), rel=1e-4)


# --- training ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose random LLM a soft prompt can steer (tiny_config's docstring says why)."""
    return build_model_folder(tmp_path_factory.mktemp("models") / "steerable", tiny_config(llm_initializer_range=0.3))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six training videos (every order of blue, red and green, 2 s each) with a moment per colour,
    and three held-out videos of other seeds (other shapes and motion)."""
    folder = tmp_path_factory.mktemp("scenes")
    rows, held = [], []
    for i, order in enumerate(ORDERS):
        make_scenes(folder / f"{i}.mp4", list(order), seed=i)
        rows += [{"video": f"{i}.mp4", "query": c, "start": 2.0 * k, "end": 2.0 * k + 2} for k, c in enumerate(order)]
    (folder / "held").mkdir()
    for i, order in enumerate(ORDERS[1:4]):
        make_scenes(folder / "held" / f"{i}.mp4", list(order), seed=100 + i)
        held += [{"video": f"held/{i}.mp4", "query": c, "start": 2.0 * k, "end": 2.0 * k + 2}
                 for k, c in enumerate(order)]  # fmt: skip
    _write(folder / "moments.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    _write(folder / "held.jsonl", "".join(json.dumps(row) + "\n" for row in held))
    _write(folder / "colours.txt", "blue\nred\ngreen\n")
    return folder


def held_out_recall(model: Path, scenes: Path, *checkpoint: object) -> float:
    """R@1 at IoU 0.5 of `malmm find` (its defaults: the likelihood rule) on the held-out videos."""
    result = malmm_cli("find", scenes / "held", "--query-file", scenes / "colours.txt", "--model", model, *FIND,
                       *checkpoint, "-f", "jsonl", "-q")  # fmt: skip
    assert result.exit_code == 0, result.output
    found = {(Path(r["file"]).name, r["query"]): r["moments"] for r in map(json.loads, result.stdout.splitlines())}
    truth = [json.loads(line) for line in (scenes / "held.jsonl").read_text().splitlines()]
    examples = [
        GroundingExample(str(i), t["video"], t["query"], ((t["start"], t["end"]),)) for i, t in enumerate(truth)
    ]
    moments = [[(m["start"], m["end"], m["score"]) for m in found[(Path(t["video"]).name, t["query"])]] for t in truth]
    assert len(moments) == 9
    return recall_metrics(examples, moments, at=(1,), ious=(0.5,))["R1@0.5"]


def test_training_find_raises_held_out_recall(model: Path, scenes: Path, tmp_path: Path) -> None:
    """The issue's test: `malmm train --task find` on videos of scenes at known times raises the
    held-out R@1 at IoU 0.5 of `malmm find` above the untrained model's."""
    before = held_out_recall(model, scenes)
    trained = malmm_cli("train", scenes / "moments.jsonl", "--task", "find", "-o", tmp_path / "run", "--model", model,
                        *TRAIN, "--epochs", "6")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    after = held_out_recall(model, scenes, "--checkpoint", tmp_path / "run")
    assert after >= before + 25 and after >= 75, (before, after)


def test_validation_scores_the_best_window_and_keeps_the_best_epoch(model: Path, scenes: Path, tmp_path: Path) -> None:
    """With --val, each epoch records the validation loss and the share of held-out moments whose
    best window lies in their span; model.safetensors holds the epoch where that share was best."""
    run = tmp_path / "run"
    trained = malmm_cli("train", scenes / "moments.jsonl", "--task", "find", "-o", run, "--model", model, *TRAIN,
                        "--epochs", "4", "--val", scenes / "held.jsonl")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    info = json.loads((run / "training.json").read_text())
    epochs = info["epochs"]
    assert all(e["val_examples"] == 9 and e["val_loss"] > 0 for e in epochs)
    assert epochs[-1]["val_accuracy"] >= 7 / 9 and epochs[-1]["val_loss"] < epochs[0]["val_loss"], epochs
    best = max(epochs, key=lambda e: (e["val_accuracy"], -e["val_loss"]))
    assert info["best"]["epoch"] == best["epoch"]


def test_resume_gives_the_same_weights(model: Path, scenes: Path, tmp_path: Path, monkeypatch) -> None:
    """Stopped by Ctrl-C in the middle of an epoch, a resumed find run draws the same windows and
    ends with bitwise the same weights as one never stopped."""
    args = [
        "--task",
        "find",
        "--model",
        model,
        *TRAIN,
        "--batch-size",
        "3",
        "--epochs",
        "2",
        "--save-every",
        "2",
        "--negatives",
        "1",
    ]  # one of two negatives a step: the draw matters
    whole = tmp_path / "whole"
    assert malmm_cli("train", scenes / "moments.jsonl", "-o", whole, *args).exit_code == 0
    expected = load_file(str(whole / "model.safetensors"))
    original = Trainer._optimizer_step

    def stop(self: Trainer, group: list, epoch: int):
        if self.position.step == 9:  # epoch 2, step 3 of 6
            raise KeyboardInterrupt
        return original(self, group, epoch)

    run = tmp_path / "stopped"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_optimizer_step", stop)
        assert malmm_cli("train", scenes / "moments.jsonl", "-o", run, *args).exit_code == 130
    assert json.loads((run / "resume" / "state.json").read_text())["position"] == {"epoch": 1, "batch": 3, "step": 9}
    resumed = malmm_cli("train", scenes / "moments.jsonl", "-o", run, *args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    weights = load_file(str(run / "model.safetensors"))
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
