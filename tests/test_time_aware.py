"""Time-aware frames (models/time_aware.py, TimeChat's timestamp-aware frame encoder): each frame's
Q-Former instruction carries the frame's real time, from the reading loop and from training; the
option lives in the model's config and its checkpoints; without it nothing changes (the golden
tests, untouched, say so)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from transformers import BertTokenizerFast

from malmm_cli.jobs import loading
from malmm_cli.jobs.loading import LoadOptions
from malmm_cli.reading.pipeline import caption_video
from malmm_cli.reading.stream import Sampling, VideoStream
from models import Malmm, MemoryBank, MemoryState
from models.checkpoint import checkpoint_time_aware, save_trained
from models.memory_plan import MemoryPlan, TrainingShape, memory_state_bytes, plan_memory
from models.time_aware import TIME_TOKENS, TIMECHAT_WORDING, time_sentence
from tests.media import make_video

DIGITS = [str(d) for d in range(10)]


def digit_tokenizer() -> BertTokenizerFast:
    """A Q-Former tokenizer that spells numbers digit by digit (the tiny one has no digits, so every
    time would read alike); ids stay within the tiny Q-Former's vocabulary."""
    words = [".", "?", "this", "frame", "is", "sampled", "at", "second", "what", "does", "the", "video", "describe"]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *DIGITS, *(f"##{d}" for d in DIGITS)]
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)})


@pytest.fixture
def timed(tiny_llama_dir: Path) -> Malmm:
    """The tiny model reading frames with their times, and a tokenizer that can spell them."""
    malmm = Malmm.from_pretrained(tiny_llama_dir)
    malmm.model.set_time_aware(TIMECHAT_WORDING)
    return dataclasses.replace(malmm, qformer_tokenizer=digit_tokenizer())


def spy_times(monkeypatch: pytest.MonkeyPatch) -> list[list[float]]:
    """Every step's frame times, as `Malmm.time_tokens` receives them."""
    seen: list[list[float]] = []
    original = Malmm.time_tokens

    def recording(self: Malmm, state: MemoryState, times: Sequence[float] | None):
        seen.append(list(times or []))
        return original(self, state, times)

    monkeypatch.setattr(Malmm, "time_tokens", recording)
    return seen


def test_the_wording_is_timechats() -> None:
    assert time_sentence(TIMECHAT_WORDING, 12.04) == "This frame is sampled at 12.0 second."
    assert time_sentence(TIMECHAT_WORDING, 0) == "This frame is sampled at 0.0 second."


def test_the_frame_time_changes_what_a_time_aware_model_reads(timed: Malmm) -> None:
    features = torch.randn(1, 17, 48)
    outputs = []
    for seconds in (1.5, 7.5, 7.5):  # sentences of the same length: only the digits differ
        state = timed.new_memory("what does the video describe?", 3)
        outputs.append(timed.step(state, features, times=[seconds])[0])
    assert not torch.allclose(outputs[0], outputs[1])
    torch.testing.assert_close(outputs[1], outputs[2])


def test_times_are_needed_by_a_time_aware_model_and_unused_by_others(timed: Malmm, tiny_malmm: Malmm) -> None:
    with pytest.raises(ValueError, match="with its time"):
        timed.step(timed.new_memory("what does the video describe?", 3), torch.randn(1, 17, 48))
    features = torch.randn(1, 17, 48)
    plain = tiny_malmm.step(tiny_malmm.new_memory("what does the video describe?", 3), features)[0]
    given = tiny_malmm.step(tiny_malmm.new_memory("what does the video describe?", 3), features, times=[4.0])[0]
    torch.testing.assert_close(plain, given, rtol=0, atol=0)


def test_a_batch_of_videos_at_different_times_reads_as_each_alone(timed: Malmm) -> None:
    """Two videos, different instructions and times of different token lengths (so different
    padding at every step), through a bank that merges: batched equals alone."""
    torch.manual_seed(0)
    frames = torch.randn(7, 2, 17, 48)
    instructions = ["what does the video describe?", "what is the video?"]
    times = [[0.5 * t for t in range(7)], [9.0 + 17.5 * t for t in range(7)]]  # 0.0 .. 3.0 and 9.0 .. 114.0
    batch = timed.new_memory(instructions, 3, total_frames=7)
    alone = [timed.new_memory(instruction, 3, total_frames=7) for instruction in instructions]
    for t in range(7):
        together, batch = timed.step(batch, frames[t], t, [times[0][t], times[1][t]])
        for v, state in enumerate(alone):
            own, _ = timed.step(state, frames[t, v : v + 1], t, [times[v][t]])
            torch.testing.assert_close(together[v : v + 1], own, rtol=1e-4, atol=1e-5)
    assert len(batch.queries[0]) == 3  # the query banks stay at their length


def test_a_bank_keeps_each_steps_own_padding() -> None:
    """A query bank of time-aware frames masks each remembered step by its own padding, and a
    merged slot counts where either step it stands for had a token."""
    entry = torch.randn(1, 3, 4)
    bank = MemoryBank(1, entry, mask=torch.tensor([[1, 1, 0]]))
    bank.append(torch.randn(1, 3, 4), mask=torch.tensor([[1, 0, 0]]))
    assert bank.key_mask().tolist() == [[True, True, False, True, False, False]]
    bank.compress()  # the two steps merge into one slot
    assert bank.key_mask().tolist() == [[True, True, False]]


def test_the_reading_loop_gives_each_frame_its_decoded_time(timed: Malmm, tmp_path: Path, monkeypatch) -> None:
    """A variable-rate clip: the times read are the decoder's timestamps, not the planned ones; a
    clip of the video: counted from the clip's start."""
    video = make_video(tmp_path / "vfr.mp4", seconds=4.0, fps=10.0, vfr=True)
    for sampling in (Sampling(frames=6), Sampling(frames=5, start=1.3, end=3.6)):
        with VideoStream(timed, video, sampling) as stream:
            start = stream.span[0]
            decoded = [(sample.time - start, sample.target - start) for sample, _ in stream]
        seen = spy_times(monkeypatch)
        caption_video(timed, video, sampling=sampling, memory_bank_length=3)
        monkeypatch.undo()
        assert [times[0] for times in seen] == pytest.approx([time for time, _ in decoded])
        assert any(abs(time - target) > 1e-3 for time, target in decoded)  # real times differ from the plan's
        length = (sampling.end or 4.0) - (sampling.start or 0.0)
        assert all(0.0 <= times[0] < length for times in seen)  # counted from the clip's start


def test_a_time_aware_checkpoint_turns_the_option_on(tiny_llama_dir: Path, tmp_path: Path) -> None:
    model = Malmm.from_pretrained(tiny_llama_dir).model
    save_trained(model, tmp_path / "plain.safetensors", "tiny")
    model.set_time_aware(TIMECHAT_WORDING)
    save_trained(model, tmp_path / "timed.safetensors", "tiny")
    assert checkpoint_time_aware(tmp_path / "timed.safetensors") == TIMECHAT_WORDING
    assert Malmm.from_pretrained(tiny_llama_dir, checkpoint=tmp_path / "timed.safetensors").time_aware == (
        TIMECHAT_WORDING
    )
    assert Malmm.from_pretrained(tiny_llama_dir, checkpoint=tmp_path / "plain.safetensors").time_aware is None
    assert Malmm.from_pretrained(tiny_llama_dir).time_aware is None


def test_the_memory_plan_counts_the_time_sentences(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading time-aware, each reader's Q-Former holds TIME_TOKENS more instruction tokens in
    every slot of its bank; loading plans for them when the checkpoint was trained with them."""
    model = Malmm.from_pretrained(tiny_llama_dir).model
    config = model.config
    bank, prompt = 40, 64  # LoadOptions' and plan_memory's defaults
    share = memory_state_bytes(config, bank, 1, prompt + TIME_TOKENS) - memory_state_bytes(config, bank, 1, prompt)
    plain = plan_memory(config, memory_bank_length=bank, prompt_tokens=prompt)
    timed = plan_memory(config, memory_bank_length=bank, prompt_tokens=prompt, time_aware=True)
    assert share > 0 and timed.activations - plain.activations == share
    assert dataclasses.replace(timed, activations=plain.activations) == plain

    save_trained(model, tmp_path / "plain.safetensors", "tiny")
    model.set_time_aware(TIMECHAT_WORDING)
    save_trained(model, tmp_path / "timed.safetensors", "tiny")
    monkeypatch.setattr(loading, "free_memory", lambda device: None)

    def planned(checkpoint: str, training: TrainingShape | None = None) -> MemoryPlan:
        options = LoadOptions(model=str(tiny_llama_dir), checkpoint=tmp_path / f"{checkpoint}.safetensors",
                              quantize="none", memory_bank_length=bank, training=training)  # fmt: skip
        return loading.plan(config, options, "cpu", torch.float32)[1]

    assert planned("timed").activations - planned("plain").activations == share
    shape = TrainingShape(1)  # training on from a time-aware checkpoint: as --time-aware
    assert planned("timed", shape) == planned("plain", dataclasses.replace(shape, time_aware=True))
    assert planned("timed", shape).activations > planned("plain", shape).activations


def test_the_instruction_leaves_room_for_the_time(tiny_malmm: Malmm, timed: Malmm) -> None:
    assert timed.instruction_limit == tiny_malmm.instruction_limit - TIME_TOKENS


def test_malmm_train_time_aware(run, tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`malmm train --time-aware` reads its clips with their times and saves a time-aware checkpoint."""
    rows = []
    for i in range(3):
        make_video(tmp_path / f"{i}.mp4", seconds=2.0, fps=10.0, vfr=i == 0, seed=i)
        rows.append(json.dumps({"video": f"{i}.mp4", "caption": "a dog is running."}))
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    seen = spy_times(monkeypatch)
    result = run("train", tmp_path / "train.jsonl", "--task", "caption", "--output", tmp_path / "run",
                 "--model", tiny_llama_dir, "--device", "cpu",
                 "--frames", "4", "--memory-bank-length", "2", "--epochs", "1", "--batch-size", "3",
                 "--time-aware", model=False)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert checkpoint_time_aware(tmp_path / "run") == TIMECHAT_WORDING
    assert len(seen) >= 4 and all(len(times) == 3 for times in seen)  # every step, each clip its own time
    assert seen[0] != seen[-1] and all(0.0 <= t < 2.0 for times in seen for t in times)


def test_find_training_refuses_time_aware_frames(tmp_path: Path) -> None:
    """--task find reads its windows without their times: --time-aware is refused with it, before
    anything loads, rather than failing at the first step."""
    from malmm_cli.jobs.errors import UsageError
    from malmm_cli.jobs.training.job import TrainRequest

    with pytest.raises(UsageError, match="--time-aware does not train --task find"):
        TrainRequest(data=tmp_path / "moments.jsonl", task="find", output=tmp_path / "run", time_aware=True)


def test_the_timed_training_plan_script_prints_its_table(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    """benchmarks/timed_training_plan.py (docs/time-aware.md quotes it): an LLM adapter of rank 8 on
    vicuna-7b is 8.4 M parameters, and it costs memory."""
    from benchmarks import timed_training_plan

    monkeypatch.setattr("sys.argv", ["timed_training_plan.py", "--no-doc"])
    timed_training_plan.main()
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| ground | 20 | 4 |")]
    estimates = {row[6].strip(): float(row[-2].strip().strip("~ GiB")) for row in rows if row[7].strip() == "4bit"}
    assert rows and all(row[9].strip() in ("-", "8.4 M", "16.8 M") for row in rows)
    assert estimates["8"] > estimates["-"]
