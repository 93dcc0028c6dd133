"""`malmm train --task dense|ground` (issue 30): their data (event rows, YouCook2 and ActivityNet
Captions files, find's moments) and errors, targets in TimeIT's wording on the clock of the frames
the memory reads (a clip's start), validation's figures, and a tiny time-aware run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from malmm_cli.cli import app
from malmm_cli.jobs.dataset import DatasetError
from malmm_cli.jobs.dense_data import DenseExample, clip_events, read_dense_annotations
from malmm_cli.jobs.training import trainer as trainer_module
from malmm_cli.jobs.training.data import prompt_for, read_files, target_for
from malmm_cli.jobs.training.features import ClipFeatures
from malmm_cli.jobs.training.folder import RUN_INFO
from malmm_cli.jobs.training.job import conclusion
from malmm_cli.jobs.training.settings import TrainSettings
from malmm_cli.jobs.training.timed import VALIDATION_FIGURES, dense_score, ground_score, timed_score
from malmm_cli.jobs.training.trainer import Trainer
from malmm_cli.reading.results import TimedText
from models import Malmm
from models.checkpoint import checkpoint_time_aware
from models.presets import TRAINED_WEIGHTS
from models.time_aware import TIMECHAT_WORDING
from tests.media import make_video

TINY = ["--device", "cpu", "--frames", "4", "--memory-bank-length", "2", "--batch-size", "2", "--epochs", "1", "-q"]


def malmm_cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _rows(path: Path, *rows: dict) -> Path:
    return _write(path, "".join(json.dumps(row) + "\n" for row in rows))


# --- dense data -------------------------------------------------------------------------------------


def test_dense_rows_put_events_on_the_clips_clock(tmp_path: Path) -> None:
    """A row's clip: events in seconds from its start, cut to it when half of them lies inside,
    dropped otherwise; without a clip, the times as given, in time order."""
    events = [{"start": 5, "end": 15, "text": "Chop the onions."}, {"start": 12, "end": 20, "text": "fry them"},
              {"start": 28, "end": 40, "text": "after"}, {"start": 40, "end": 50, "text": "out"}]  # fmt: skip
    data = _rows(tmp_path / "dense.jsonl", {"video": "a.mp4", "start": 10, "end": 30, "events": events, "id": "clip"},
                 {"video": "b.mp4", "events": events[:2][::-1]})  # fmt: skip
    (clip, whole), _ = read_files(data, "dense", None)
    assert (clip.id, clip.video, clip.start, clip.end) == ("dense.jsonl clip", tmp_path / "a.mp4", 10.0, 30.0)
    assert clip.events == (TimedText(0.0, 5.0, "Chop the onions."), TimedText(2.0, 10.0, "fry them"))
    assert target_for("dense", clip) == "0.0 - 5.0 seconds, Chop the onions. 2.0 - 10.0 seconds, fry them."
    assert (whole.id, whole.start, whole.end) == ("dense.jsonl line 2", None, None)
    assert target_for("dense", whole) == "5.0 - 15.0 seconds, Chop the onions. 12.0 - 20.0 seconds, fry them."
    assert "start and end in seconds" in prompt_for("dense", whole)  # DENSE's instruction


def test_a_clip_keeps_an_event_half_of_which_it_holds() -> None:
    """KEPT_SHARE's boundary: 60% and exactly 50% of an event inside the clip 10-30 s keep it (cut
    to the clip), 40% drops it."""
    events = [TimedText(6.0, 16.0, "sixty"), TimedText(25.0, 35.0, "half"), TimedText(26.0, 36.0, "forty")]
    assert clip_events(events, 10.0, 30.0) == (TimedText(0.0, 6.0, "sixty"), TimedText(15.0, 20.0, "half"))


def test_youcook2_and_activitynet_captions_files(tmp_path: Path) -> None:
    videos = tmp_path / "videos"
    (videos / "training" / "101").mkdir(parents=True)
    (videos / "training" / "101" / "yc1.mp4").write_bytes(b"")  # YouCook2's own layout
    (videos / "yc2.webm").write_bytes(b"")
    (videos / "v_abc.mp4").write_bytes(b"")
    youcook2 = _write(tmp_path / "youcookii_annotations_trainval.json", json.dumps({"database": {
        "yc1": {"duration": 100.0, "subset": "training", "recipe_type": "101",
                "annotations": [{"segment": [50, 60], "sentence": "fry"}, {"segment": [10, 20], "sentence": "cut"}]},
        "yc2": {"duration": 90.0, "subset": "validation", "recipe_type": "102",
                "annotations": [{"segment": [1, 2], "sentence": "wash"}]},
    }}))  # fmt: skip
    (train,), (val,) = read_files(youcook2, "dense", youcook2, videos)  # DATA's train split, --val's val
    assert (train.video, train.duration) == (videos / "training" / "101" / "yc1.mp4", 100.0)
    assert target_for("dense", train) == "10.0 - 20.0 seconds, cut. 50.0 - 60.0 seconds, fry."
    assert val.video == videos / "yc2.webm"
    assert [e.id for e in read_dense_annotations(youcook2, videos, "validation")] == ["yc2"]
    entry = {"duration": 20.0, "timestamps": [[4, 25], [1, 5]], "sentences": ["it sits", " a dog  runs "]}
    anet = _write(tmp_path / "train.json", json.dumps({"v_abc": entry}))
    (example,) = read_dense_annotations(anet, videos)
    assert example.video == videos / "v_abc.mp4"
    assert example.events == (TimedText(1.0, 5.0, "a dog runs"), TimedText(4.0, 20.0, "it sits"))  # cut to the duration


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("d.jsonl", {"video": "a.mp4"}, "d.jsonl line 1: no events"),
        ("d.jsonl", {"events": [{"start": 0, "end": 1, "text": "x"}]}, "d.jsonl line 1: no video"),
        ("d.jsonl", {"video": "a.mp4", "events": [{"start": 0, "end": 1}]}, "d.jsonl line 1: event 1: no text"),
        ("d.jsonl", {"video": "a.mp4", "events": [{"start": 0, "end": 1, "text": "x"}, {"start": 3, "end": 2,
                                                                                        "text": "y"}]},
         "d.jsonl line 1: event 2: end (2) must be after start (3)"),
        ("d.jsonl", {"video": "a.mp4", "events": [{"start": "soon", "end": 1, "text": "x"}]}, "start must be a number"),
        ("d.jsonl", {"video": "a.mp4", "events": ["x"]}, 'event 1 must be {"start", "end", "text"}'),
        ("d.jsonl", {"video": "a.mp4", "start": 10, "end": 20, "events": [{"start": 0, "end": 12, "text": "x"}]},
         "d.jsonl line 1: no event lies in the clip 10-20 s"),
        ("d.jsonl", {"video": "a.mp4", "start": 5, "end": 2, "events": [{"start": 0, "end": 1, "text": "x"}]},
         "end (2) must be after start (5)"),
        ("d.json", {"database": {"yc": {"subset": "testing", "duration": 9}}}, "entry 'yc': no annotations"),
        ("d.json", {"database": {"a": {"subset": "training", "annotations": []},
                                 "b": {"subset": "validation", "annotations": []}}},
         "d.json has no video with events"),
        ("d.json", {"database": {"yc": {"subset": "training", "annotations": [{"segment": [1], "sentence": "x"}]}}},
         "d.json entry 'yc': annotation 1: a segment is [start, end]"),
        ("d.json", {"v_a": {"duration": 9, "timestamps": [[0, 1]], "sentences": []}},
         "d.json entry 'v_a': timestamps and sentences must be lists of the same length"),
        ("d.json", {"v_a": {"duration": 9}}, "d.json entry 'v_a': needs duration, timestamps and sentences"),
        ("d.json", [1, 2], "expected YouCook2's"),
        ("d.csv", None, "give rows of"),
    ],
)  # fmt: skip
def test_bad_dense_data_is_refused_with_where_and_why(tmp_path: Path, name: str, content: object, says: str) -> None:
    text = json.dumps(content) + "\n" if content is not None else "video\n"
    with pytest.raises(DatasetError) as refused:
        read_files(_write(tmp_path / name, text), "dense", None)
    assert says in str(refused.value)


def test_dense_splits_and_options_that_do_not_apply(tmp_path: Path) -> None:
    rows = _rows(tmp_path / "d.jsonl", {"video": "a.mp4", "events": [{"start": 0, "end": 1, "text": "x"}]})
    with pytest.raises(DatasetError, match=re.escape("--split val: d.jsonl holds one split")):
        read_files(rows, "dense", None, split="val")
    with pytest.raises(DatasetError, match="--label-field names classify labels"):
        read_files(rows, "dense", None, label_field="genre")
    youcook2 = _write(tmp_path / "y.json", json.dumps({"database": {
        "a": {"subset": "training", "annotations": [{"segment": [0, 1], "sentence": "x"}]},
        "b": {"subset": "validation", "annotations": [{"segment": [0, 1], "sentence": "y"}]}}}))  # fmt: skip
    with pytest.raises(DatasetError, match=re.escape("y.json holds several splits")):
        read_dense_annotations(youcook2)
    with pytest.raises(DatasetError, match=re.escape("y.json has no 'testing' split")):
        read_dense_annotations(youcook2, split="testing")


# --- ground data ------------------------------------------------------------------------------------


def test_ground_reads_finds_moments_whole_videos_one_example_a_span(tmp_path: Path) -> None:
    rows = _rows(tmp_path / "m.jsonl", {"video": "a.mp4", "query": "the screen is red", "start": 2, "end": 4.25})
    (row,), _ = read_files(rows, "ground", None)
    assert (row.video, row.start, row.end, row.question) == (tmp_path / "a.mp4", None, None, "the screen is red")
    assert target_for("ground", row) == "2.0 - 4.2 seconds"  # timed_text's tenths
    assert "Find the part of the video where 'the screen is red' happens" in prompt_for("ground", row)
    table = _write(tmp_path / "m.csv", "video,query,start,end\na.mp4,red,2,4\n")
    assert [target_for("ground", e) for e in read_files(table, "ground", None)[0]] == ["2.0 - 4.0 seconds"]
    qvh = _rows(tmp_path / "qvh.jsonl", {"qid": 7, "query": "a man talks", "vid": "vid", "duration": 150,
                                         "relevant_windows": [[20, 30], [0, 10]]})  # fmt: skip
    first, second = read_files(qvh, "ground", None)[0]
    assert (first.id, target_for("ground", first)) == ("qvh.jsonl 7", "20.0 - 30.0 seconds")
    assert (second.id, target_for("ground", second)) == ("qvh.jsonl 7 span 2", "0.0 - 10.0 seconds")
    assert first.spans == second.spans == ((20.0, 30.0), (0.0, 10.0))
    with pytest.raises(DatasetError, match=re.escape("m.jsonl line 1: end")):
        read_files(_rows(tmp_path / "m.jsonl", {"video": "a.mp4", "query": "x", "start": 3, "end": 1}), "ground", None)
    with pytest.raises(DatasetError, match="--split chooses"):
        read_files(rows, "ground", None, split="train")


# --- the clock --------------------------------------------------------------------------------------


def test_a_clips_target_and_its_frames_share_a_clock(tiny_malmm: Malmm, tmp_path: Path) -> None:
    """A dense row's clip of 1-3 s of a 4 s video: the frames' times count from 1 s, and so do the
    target's."""
    make_video(tmp_path / "a.mp4", seconds=4.0, fps=10.0)
    data = _rows(tmp_path / "d.jsonl", {"video": "a.mp4", "start": 1, "end": 3,
                                        "events": [{"start": 1.5, "end": 2.5, "text": "x"}]})  # fmt: skip
    (clip,), _ = read_files(data, "dense", None)
    assert target_for("dense", clip) == "0.5 - 1.5 seconds, x."
    _, times = ClipFeatures(tiny_malmm, 4, None, print).timed(clip, None, 0)
    assert times == pytest.approx([0.25, 0.75, 1.25, 1.75], abs=0.06)  # even: the middle of each quarter of 2 s


# --- validation -------------------------------------------------------------------------------------


def test_validation_scores_by_hand() -> None:
    assert ground_score("3.0 - 7.0 seconds", [(5.0, 9.0)]) == pytest.approx(2 / 6)
    assert ground_score("It happens at 3 - 7 seconds and 20 - 30 seconds", [(0, 1), (3, 8)]) == pytest.approx(4 / 5)
    assert ground_score("the screen is red", [(5.0, 9.0)]) == 0.0
    # the first span is scored, not the best one: here the second would match exactly
    assert ground_score("0.0 - 2.0 seconds, or rather 3.0 - 8.0 seconds", [(3.0, 8.0)]) == pytest.approx(0.0)
    assert ground_score("1.0 - 4.0 seconds, or 3.0 - 8.0 seconds", [(3.0, 8.0)]) == pytest.approx(1 / 7)
    truth = [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)]
    # the first matches (IoU 0.8), the second overlaps the third event too little (1/3)
    assert dense_score("0.0 - 8.0 seconds, a. 15.0 - 25.0 seconds, b.", truth) == pytest.approx(0.4)
    assert dense_score("0.0 - 10.0 seconds, a. 10.0 - 20.0 seconds, b. 20.0 - 30.0 seconds, c.", truth) == 1.0
    # one true event is matched once: a second copy of it counts as a wrong prediction
    assert dense_score("0.0 - 10.0 seconds, a. 0.0 - 10.0 seconds, a.", truth) == pytest.approx(0.4)
    assert dense_score("nothing timed here", truth) == 0.0
    # IoU exactly DENSE_IOU matches: 0-5 against 0-10 is 0.5
    assert dense_score("0.0 - 5.0 seconds, a.", [(0.0, 10.0)]) == 1.0
    example = DenseExample(id="v", video=Path("v.mp4"), events=tuple(TimedText(s, e, "x") for s, e in truth))
    assert timed_score("dense", "0.0 - 8.0 seconds, a. 15.0 - 25.0 seconds, b.", example) == pytest.approx(0.4)


@pytest.mark.parametrize("task", ["ground", "dense"])
def test_the_epoch_kept_is_the_best_by_the_tasks_figure_not_its_loss(
    task: str, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """model.safetensors holds the epoch of the highest val_mean_iou / val_f1, even when another
    epoch's loss is lower: the loss only breaks ties."""
    figure = VALIDATION_FIGURES[task]
    settings = TrainSettings(task=task, frames=4, memory_bank_length=2, epochs=3, lr=1e-4)
    trainer = Trainer(Malmm.from_pretrained(tiny_llama_dir), [], [], settings, tmp_path, base_model="tiny", cache=None)
    query_tokens = trainer.malmm.model.query_tokens
    kept = {}
    for epoch, loss, score in ((1, 1.0, 0.2), (2, 2.0, 0.6), (3, 0.5, 0.4), (4, 1.5, 0.6), (5, 3.0, 0.6)):
        with torch.no_grad():
            query_tokens.fill_(epoch)  # each epoch's weights told apart
        trainer._keep_best({"epoch": epoch, "val_loss": loss, figure: score})
        kept[epoch] = trainer.best["epoch"]
    assert kept == {1: 1, 2: 2, 3: 2, 4: 4, 5: 4}  # 4 ties 2's figure with a lower loss, 5 with a higher
    assert json.loads((tmp_path / RUN_INFO).read_text())["best"]["epoch"] == 4
    with safe_open(str(tmp_path / TRAINED_WEIGHTS), framework="pt") as saved:
        assert torch.all(saved.get_tensor("query_tokens") == 4)


# --- runs ---------------------------------------------------------------------------------------------


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    for i in range(3):
        make_video(tmp_path / f"{i}.mp4", seconds=2.0, fps=10.0, seed=i)
    return tmp_path


def test_a_tiny_time_aware_ground_run_trains_validates_and_loads(
    clips: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--task ground --time-aware` with --val: the loss reads the ground targets, each epoch
    records the mean IoU of what is generated (here set by hand), the checkpoint is time-aware."""
    rows = [{"video": f"{i}.mp4", "query": "the screen is red", "start": 0.5 * i, "end": 0.5 * i + 1} for i in range(3)]
    data, held = _rows(clips / "train.jsonl", *rows), _rows(clips / "val.jsonl", *rows[:2])
    targets: list[str] = []
    loss = trainer_module.answer_loss

    def spy(model, tokenizer, output, prompts, batch_targets):
        targets.extend(batch_targets)
        return loss(model, tokenizer, output, prompts, batch_targets)

    monkeypatch.setattr(trainer_module, "answer_loss", spy)
    monkeypatch.setattr(Malmm, "generate", lambda self, output, prompts, settings: ["0.0 - 1.0 seconds", "no time"])
    run = clips / "run"
    result = malmm_cli("train", data, "--task", "ground", "--time-aware", "--val", held, "-o", run,
                       "--model", tiny_llama_dir, *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "without --time-aware" not in result.output
    assert sorted(set(targets)) == ["0.0 - 1.0 seconds", "0.5 - 1.5 seconds", "1.0 - 2.0 seconds"]
    info = json.loads((run / "training.json").read_text())
    assert info["epochs"][0]["val_mean_iou"] == pytest.approx((1.0 + 0.0) / 2)  # row 0 exact, row 1 unparsed
    assert info["best"]["epoch"] == 1
    assert checkpoint_time_aware(run) == TIMECHAT_WORDING
    assert Malmm.from_pretrained(tiny_llama_dir, checkpoint=run).time_aware == TIMECHAT_WORDING


def test_a_dense_run_without_time_aware_frames_is_warned_about(
    clips: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _rows(clips / "d.jsonl", *({"video": f"{i}.mp4", "start": 0.5, "events": [
        {"start": 1.0, "end": 1.5, "text": "red"}]} for i in range(2)))  # fmt: skip
    result = malmm_cli("train", data, "--task", "dense", "-o", clips / "run", "--model", tiny_llama_dir, *TINY)
    assert result.exit_code == 0, result.output
    assert "--task dense without --time-aware" in result.stderr


def test_find_options_are_refused_for_timed_tasks(tmp_path: Path) -> None:
    data = _rows(tmp_path / "m.jsonl", {"video": "a.mp4", "query": "red", "start": 1, "end": 2})
    refused = malmm_cli("train", data, "--task", "ground", "-o", tmp_path / "run", "--window", "2")
    assert refused.exit_code == 2 and "--task find only" in refused.stderr
    refused = malmm_cli("train", data, "--task", "ground", "-o", tmp_path / "run", "--label-field", "genre")
    assert refused.exit_code == 2 and "--label-field names classify labels" in refused.stderr


def test_the_memory_plan_counts_each_digit_of_a_timed_target_as_a_token(tmp_path: Path) -> None:
    from malmm_cli.jobs.training.settings import TASK_DEFAULTS, TrainSettings
    from malmm_cli.jobs.training.trainer import training_shape

    data = _rows(tmp_path / "d.jsonl", {"video": "a.mp4", "events": [{"start": 0, "end": 12.5, "text": "chop"}]})
    (example,), _ = read_files(data, "dense", None)
    target = target_for("dense", example)  # "0.0 - 12.5 seconds, chop.": 5 digits
    shape = training_shape(TrainSettings(task="dense", **TASK_DEFAULTS["dense"]), [example])
    assert shape.text_tokens == (len(prompt_for("dense", example)) + len(target) + 2 * 5) // 3 + 2


@pytest.mark.parametrize(
    ("task", "command"), [("dense", "caption VIDEO --dense"), ("ground", 'ask VIDEO --timed "QUERY"')]
)
def test_a_finished_run_names_the_command_that_reads_it(task: str, command: str, tmp_path: Path) -> None:
    settings = TrainSettings(task=task, frames=8, memory_bank_length=4, epochs=2, lr=1e-4)
    said = conclusion({"best": {"epoch": 2}}, tmp_path, settings)
    assert f"`malmm {command} --checkpoint {tmp_path} --frames 8 --memory-bank-length 4`" in said
