"""The one reading loop: tasks as readers, videos in lockstep, failures kept to their video."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from malmm_cli.media.plans import VideoError
from malmm_cli.reading import pipeline
from malmm_cli.reading.pipeline import (
    Memory,
    Sampling,
    VideoStream,
    answer_questions,
    caption_readers,
    predict_readers,
    question_readers,
    read_videos,
)
from models import CAPTION, CLASSIFICATION, QUESTION, GenerationSettings, Malmm
from tests import media

SETTINGS = GenerationSettings(max_new_tokens=6, num_beams=2)
QUESTIONS = ["who is there?", "what colour is the car?", "is it raining?"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Videos of different lengths, so that they leave a lockstep batch at different steps."""
    root = tmp_path_factory.mktemp("reading")
    return [
        media.make_video(root / "two.mp4", seconds=2, fps=10, size=(64, 48)),
        media.make_video(root / "five.mp4", seconds=5, fps=10, size=(96, 64), seed=3),
        media.make_video(root / "three.mp4", seconds=3, fps=12, size=(80, 48), seed=5),
    ]


def read(malmm: Malmm, paths: list[Path], readers, task: str, bank: int, **options) -> list:
    return read_videos(malmm, paths, readers, task, sampling=Sampling(fps=4), memory=Memory(bank), settings=SETTINGS,
                       **options)  # fmt: skip


DESCRIPTIONS = {
    "caption with segments": (caption_readers(1.5), "caption", CAPTION.memory_bank_length),
    "questions": (question_readers(QUESTIONS), "ask", QUESTION.memory_bank_length),
    "timeline": (predict_readers(None, every=1.0), "predict", 3),
    "labels by interval": (predict_readers(["cooking", "a dog running", "driving"], 2.0, 2), "predict", 3),
}


@pytest.mark.parametrize("description", DESCRIPTIONS)
def test_videos_read_in_lockstep_equal_each_read_alone(
    tiny_malmm: Malmm, clips: list[Path], description: str, readouts: dict[tuple, torch.Tensor]
) -> None:
    readers, task, bank = DESCRIPTIONS[description]
    together = read(tiny_malmm, clips, readers, task, bank)
    lockstep = dict(readouts)
    for path, result in zip(clips, together, strict=True):
        readouts.clear()
        (alone,) = read(tiny_malmm, [path], readers, task, bank)
        assert readouts and all(key in lockstep for key in readouts)
        for key, tokens in readouts.items():
            torch.testing.assert_close(lockstep[key], tokens, atol=1e-5, rtol=0)
        got, want = result.to_dict(), alone.to_dict()
        for ranked_got, ranked_want in zip(got.pop("labels", []), want.pop("labels", []), strict=True):
            assert ranked_got["label"] == ranked_want["label"]
            assert ranked_got["log_likelihood"] == pytest.approx(ranked_want["log_likelihood"], abs=1e-4)
        assert got == want
    assert [r.frames for r in together] == [8, 20, 12]


def test_a_video_failing_mid_batch_fails_alone(tiny_malmm: Malmm, clips: list[Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    alone = [read(tiny_malmm, [path], caption_readers(1.0), "caption", 4)[0].to_dict() for path in clips]
    broken = clips[1]

    class BreaksAfterFiveFrames(VideoStream):
        def __iter__(self):
            for number, item in enumerate(super().__iter__()):
                if self.path == broken and number == 5:
                    raise VideoError("the disk went away")
                yield item

    monkeypatch.setattr(pipeline, "VideoStream", BreaksAfterFiveFrames)
    missing = tmp_path / "missing.mp4"
    done = []
    results = read(tiny_malmm, [clips[0], missing, broken, clips[2]], caption_readers(1.0), "caption", 4,
                   on_done=lambda number, result: done.append(number))  # fmt: skip
    assert isinstance(results[1], VideoError) and "no such file" in str(results[1])
    assert isinstance(results[2], VideoError) and "the disk went away" in str(results[2])
    assert results[0].to_dict() == alone[0] and results[3].to_dict() == alone[2]
    assert done == [1, 2, 0, 3]  # each video reported the moment it ended: missing at once, the 2 s clip first


def test_questions_on_one_visual_memory_equal_one_question_at_a_time(tiny_malmm: Malmm, clips: list[Path]) -> None:
    sampling = Sampling(frames=12)
    together = answer_questions(tiny_malmm, clips[1], QUESTIONS, sampling=sampling, settings=SETTINGS)
    one_by_one = [answer_questions(tiny_malmm, clips[1], [q], sampling=sampling, settings=SETTINGS).answers[0]
                  for q in QUESTIONS]  # fmt: skip
    assert together.answers == one_by_one
    small_batches = answer_questions(tiny_malmm, clips[1], QUESTIONS, sampling=sampling, settings=SETTINGS,
                                     answers_per_batch=2)  # fmt: skip
    assert small_batches.answers == together.answers


def test_readers_of_one_instruction_share_one_memory(
    tiny_malmm: Malmm, clips: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A question asked twice, or generated and ranked over labels (evaluation), is remembered
    once: the state has a row per distinct instruction, and the answers are those of separate reads."""
    rows = []
    new_memory = tiny_malmm.new_memory

    def spy(instructions, *args, **kwargs):
        rows.append(len(instructions) if isinstance(instructions, list) else 1)
        return new_memory(instructions, *args, **kwargs)

    monkeypatch.setattr(tiny_malmm, "new_memory", spy)
    sampling = Sampling(frames=12)
    twice = answer_questions(tiny_malmm, clips[1], [QUESTIONS[0], QUESTIONS[1], QUESTIONS[0]], sampling=sampling,
                             settings=SETTINGS)  # fmt: skip
    assert rows == [2]
    assert twice.answers[0] == twice.answers[2]
    assert twice.answers[:2] == answer_questions(tiny_malmm, clips[1], QUESTIONS[:2], sampling=sampling,
                                                 settings=SETTINGS).answers  # fmt: skip
    prompt = CLASSIFICATION.prompt()
    both = [pipeline.Reader("question", prompt, at_end=prompt, question=prompt),
            pipeline.Reader("labels", prompt, at_end=prompt, labels=("cooking", "driving"), top_k=2)]  # fmt: skip
    rows.clear()
    (result,) = read(tiny_malmm, [clips[1]], both, "predict", 4)
    assert rows == [1] and result.answers and [r.label for r in result.labels]
    (ranked,) = read(tiny_malmm, [clips[1]], both[1:], "predict", 4)
    assert [(r.label, round(r.log_likelihood, 4)) for r in result.labels] == [
        (r.label, round(r.log_likelihood, 4)) for r in ranked.labels]  # fmt: skip


def test_every_strategy_reads_through_the_loop(
    tiny_malmm: Malmm, clips: list[Path], readouts: dict[tuple, torch.Tensor]
) -> None:
    """The loop gives the LLM what stepping the model by hand with that strategy gives, and the
    caption is generated from it: not merely some caption for every strategy."""
    sampling = Sampling(frames=6)
    with VideoStream(tiny_malmm, clips[1], sampling) as stream:
        frames = [(sample.index, features) for sample, features in stream]
    assert len(frames) == 6
    by_hand = {}
    for strategy in ("malmm", "fifo", "avgpool", "concat", "none"):
        bank = 4 if strategy != "concat" else 6
        readouts.clear()
        (result,) = read_videos(
            tiny_malmm, [clips[1]], caption_readers(), "caption", sampling=sampling,
            memory=Memory(bank, strategy), settings=SETTINGS,
        )  # fmt: skip
        assert not isinstance(result, Exception), result
        state = tiny_malmm.new_memory(CAPTION.prompt(), bank, total_frames=6, strategy=strategy)
        for index, features in frames:
            expected, state = tiny_malmm.step(state, features, index)
        by_hand[strategy] = expected
        ((_, tokens),) = readouts.items()  # one read-out: the whole video's caption
        torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=0, msg=strategy)
        assert result.caption == tiny_malmm.generate(expected, CAPTION.prompt(), SETTINGS)[0]
    assert by_hand["concat"].shape[1] == 6 * by_hand["none"].shape[1]  # every frame's tokens
    for strategy in ("fifo", "avgpool", "concat", "none"):  # each strategy reads something else
        assert by_hand[strategy].shape != by_hand["malmm"].shape or not torch.allclose(
            by_hand[strategy], by_hand["malmm"], atol=1e-4
        ), strategy


def test_concat_refuses_a_video_with_more_frames_than_it_keeps(tiny_malmm: Malmm, clips: list[Path]) -> None:
    (result,) = read_videos(tiny_malmm, [clips[1]], caption_readers(), "caption", sampling=Sampling(frames=6),
                            memory=Memory(4, "concat"), settings=SETTINGS)  # fmt: skip
    assert isinstance(result, VideoError) and "6 frames are planned" in str(result)
    config = tiny_malmm.model.config
    positions = config.text_config.max_position_embeddings
    too_many = positions // config.num_query_tokens  # their query tokens leave no room for the prompt
    with pytest.raises(ValueError, match=f"more than its {positions} positions"):
        read_videos(tiny_malmm, [clips[1]], caption_readers(), "caption", sampling=Sampling(frames=6),
                    memory=Memory(too_many, "concat"), settings=SETTINGS)  # fmt: skip


def test_label_prefix_is_read_once_per_call(tiny_malmm: Malmm, monkeypatch: pytest.MonkeyPatch) -> None:
    decoder = tiny_malmm.model.language_model.get_decoder()
    lengths = []
    original = decoder.forward

    def spy(*args, **kwargs):
        lengths.append(kwargs["inputs_embeds"].shape[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", spy)
    labels = [f"label number {n}" for n in range(40)]
    output = torch.randn(1, tiny_malmm.model.config.num_query_tokens, 64)
    tiny_malmm.score_labels(output, CLASSIFICATION.prompt(), labels)
    prefix = tiny_malmm.model.config.num_query_tokens + len(tiny_malmm.tokenizer(CLASSIFICATION.prompt()).input_ids)
    assert lengths[0] == prefix and len(lengths) == 1 + 3  # the prefix, then 3 chunks of at most 16 labels
    assert all(length < prefix for length in lengths[1:])  # chunks read the labels only


def test_a_clips_grid_starts_at_the_clip_and_its_note_advises_frames() -> None:
    """A clip [5, 12) in 2 s segments: 5-7, 7-9, 9-11, 11-12. Its note counts the clip's segments
    only and advises --frames (a clip is not sampled by --fps), enough to fill even the 1 s one."""
    grid = pipeline.Grid(2.0, 12.0, 5.0)
    assert [grid.span(i) for i in range(grid.count())] == [(5.0, 7.0), (7.0, 9.0), (9.0, 11.0), (11.0, 12.0)]
    assert grid.index(5.0) == 0 and grid.index(11.9) == 3
    note = grid.empty_note([5.875, 7.625, 9.375, 11.125][:2], "segment", clip=True)
    assert note.startswith("2 of 4 segments have no sampled frame") and "00:00:07.000" in note
    frames = int(note.split("--frames ")[1].split()[0])
    centres = [5 + (i + 0.5) * 7 / frames for i in range(frames)]
    assert grid.empty_note(centres, "segment", clip=True) is None  # the advice works...
    fewer = [5 + (i + 0.5) * 7 / (frames - 1) for i in range(frames - 1)]
    assert grid.empty_note(fewer, "segment", clip=True) is not None  # ...and is the least that does


def test_a_sliver_past_the_last_frame_gets_no_note_and_advice_never_lowers_the_rate() -> None:
    """--every 2s on a 4.004 s clip noted a 4 ms interval 'without a sampled frame' and advised
    --fps 0.5, which would read 3 of the 100 frames; --segment 0.001 on a 5 fps video advised
    --fps 1000."""
    hundred = [(i + 0.5) * 4.004 / 100 for i in range(100)]
    assert pipeline.Grid(2.0, 4.004).empty_note(hundred, "timeline interval", video_fps=24.975) is None
    gappy = [t for t in hundred if not 1.0 <= t < 1.5] + [3.0]  # dense, but one span left out anyway
    note = pipeline.Grid(0.5, 4.004).empty_note(gappy, "segment", video_fps=24.975)
    assert note is not None and "--fps" not in note  # sampling faster would not help
    ten = [(i + 0.5) * 0.2 for i in range(10)]  # every frame of a 2 s, 5 fps video
    note = pipeline.Grid(0.001, 2.0).empty_note(ten, "segment", video_fps=5.0)
    assert "the video has 5 frames/s, so a segment needs --segment 0.2 s or more" in note and "--fps" not in note
    sparse = pipeline.Grid(2.0, 10.0).empty_note([1.0, 9.0], "segment", video_fps=25.0)
    assert "a frame every 2 s (--fps 0.5)" in sparse  # a rate above the one sampled: right advice
