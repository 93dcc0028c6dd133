"""One home for batching (malmm_cli/lockstep.py): inputs of equal sampling are read in lockstep by
the local engine, `malmm eval` and the Ray workers alike, and an input that fails in a group
fails alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from malmm_cli.jobs.benchmarks import Item, own_benchmark
from malmm_cli.jobs.eval_run import PREDICTIONS, EvalSettings
from malmm_cli.jobs.evaluate import Evaluation
from malmm_cli.jobs.loading import LoadOptions
from malmm_cli.jobs.ray_engine import ReadJob, VideoWorker, ray_batch_size
from malmm_cli.media.plans import VideoError
from malmm_cli.reading.lockstep import Clip, lockstep_groups, read_in_lockstep
from malmm_cli.reading.pipeline import Memory, Sampling, VideoFiles, VideoStream, caption_readers, question_readers
from models import GenerationSettings, Malmm
from tests import media

SETTINGS = GenerationSettings(max_new_tokens=4, num_beams=1)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three videos of different lengths (4 frames sampled of each end together) and a broken file."""
    root = tmp_path_factory.mktemp("lockstep")
    made = [media.make_video(root / f"v{n}.mp4", seconds=2 + n, fps=10, size=(64, 48), seed=n) for n in range(3)]
    (root / "broken.mp4").write_bytes(b"not a video at all")
    return [*made, root / "broken.mp4"]


def step_widths(malmm: Malmm, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The videos each step of the memories reads at once (the batch dimension of its features)."""
    widths: list[int] = []
    step = malmm.step

    def counted(state, features, index=None, **times):
        widths.append(features.shape[0])
        return step(state, features, index, **times)

    monkeypatch.setattr(malmm, "step", counted)
    return widths


def test_inputs_are_grouped_by_sampling_and_memories() -> None:
    """Equal sampling (a clip's times included) and as many shared memories each, at most `size`
    a group, groups in the order of their first input; one that cannot be sampled is alone."""
    whole, window = Sampling(frames=4), Sampling(frames=4, start=1, end=2)
    one, two = tuple(question_readers(["who?"])), tuple(question_readers(["who?", "where?"]))
    other = tuple(question_readers(["what?"]))  # another question, as many memories: read together
    clips = [Clip("a", whole, one), Clip("b", window, one), Clip("c", whole, other),
             Clip("d", VideoError("no"), one), Clip("e", whole, two), Clip("f", whole, one)]  # fmt: skip
    assert lockstep_groups(clips, 8) == [[0, 2, 5], [1], [3], [4]]
    assert lockstep_groups(clips, 2) == [[0, 2], [1], [3], [4], [5]]
    with pytest.raises(ValueError, match="at least 1"):
        lockstep_groups(clips, 0)


def test_eval_reads_clips_of_equal_sampling_in_lockstep(
    tiny_malmm: Malmm,
    videos: list[Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    readouts: dict[tuple, torch.Tensor],
) -> None:
    """Whole videos asking their own questions are read as one batch (a window of a video is
    read apart, an unreadable video fails alone); the LLM reads what it reads of each clip alone,
    and the predictions are those of one clip at a time, in the same order."""
    v0, v1, v2, broken = videos
    asked = {v0: ["who is there?", "what colour is it?"], broken: ["who?", "what?"],
             v1: ["is it raining?", "where is this?"]}  # fmt: skip
    items = [Item(f"{video.stem}-{n}", video, None, None, ("a",), question)
             for video, questions in asked.items() for n, question in enumerate(questions)]  # fmt: skip
    items += [Item("window", v2, 0.5, 1.5, ("b",), "what happens?"), Item("window-2", v2, 0.5, 1.5, ("c",), "and?")]
    settings = EvalSettings(data="qa.jsonl", benchmark="own-ask", model="tiny", checkpoint=None, frames=4,
                            memory_bank_length=2)  # fmt: skip
    unreadable = []

    def predictions(folder: Path, **batching: int) -> list[dict]:
        Evaluation(tiny_malmm, own_benchmark("ask"), items, settings, folder,
                   on_unreadable=lambda video, reason: unreadable.append(video), **batching).run()  # fmt: skip
        return [json.loads(line) for line in (folder / PREDICTIONS).read_text().splitlines()]

    widths = step_widths(tiny_malmm, monkeypatch)
    together = predictions(tmp_path / "together")
    assert widths == [2] * 4 + [1] * 4  # 4 frames of the 2 readable whole videos at once, then the window's
    assert unreadable == [broken]
    lockstep = dict(readouts)
    widths.clear()
    readouts.clear()
    alone = predictions(tmp_path / "alone", video_batch=1)
    assert widths == [1] * 12
    assert lockstep.keys() == readouts.keys() and len(readouts) == 6  # 2 questions of 3 clips
    for key, tokens in readouts.items():
        torch.testing.assert_close(lockstep[key], tokens, atol=1e-5, rtol=0)
    assert together == alone
    assert [row["id"] for row in together] == [item.id for item in items]  # in the data's order
    assert [row["id"] for row in together if "error" in row] == ["broken-0", "broken-1"]


def test_a_ray_worker_reads_its_batch_in_lockstep(
    tiny_llama_dir: Path, videos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What Ray hands an actor is read as the local engine reads it: videos of one sampling in
    lockstep, a clip of other times apart, an unreadable video failing alone."""
    job = ReadJob(load=LoadOptions(model=str(tiny_llama_dir), device="cpu", quantize="none", frames=4),
                  readers=tuple(caption_readers()), task="caption", sampling=Sampling(frames=4), memory=Memory(2),
                  settings=SETTINGS, cache=False)  # fmt: skip
    worker = VideoWorker(job)
    assert worker.setup_error is None
    widths = step_widths(worker.malmm, monkeypatch)
    rows = [(str(video), math.nan, math.nan) for video in videos] + [(str(videos[1]), 0.5, 1.5)]

    def read(numbers: list[int]) -> dict[str, np.ndarray]:
        return worker({"index": np.array(numbers), "path": np.array([rows[n][0] for n in numbers]),
                       "start": np.array([rows[n][1] for n in numbers]),
                       "end": np.array([rows[n][2] for n in numbers])})  # fmt: skip

    together = read(list(range(len(rows))))
    assert widths == [3] * 4 + [1] * 4
    assert list(together["index"]) == list(range(len(rows)))
    assert [bool(error) for error in together["error"]] == [False, False, False, True, False]
    assert "not a video" in together["error"][3] and together["result"][3] is None
    for number in (0, 1, 2, 4):
        (alone,) = read([number])["result"]
        assert together["result"][number].to_dict() == alone.to_dict()


def test_ray_batches_fill_every_actor_up_to_the_video_batch() -> None:
    assert ray_batch_size(3, 2) == 2
    assert ray_batch_size(40, 2) == 8  # MAX_VIDEO_BATCH
    assert ray_batch_size(40, 2, video_batch=3) == 3
    assert ray_batch_size(1, 4) == 1


def test_a_clip_failing_in_a_lockstep_group_fails_alone(
    tiny_malmm: Malmm, videos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A video that breaks after 3 of its 6 frames leaves the batch there: it fails with its
    error, the moment it fails; the others read on and equal each read alone. One that cannot be
    sampled fails with that error, alone."""
    v0, v1, v2, _ = videos
    readers, sampling = tuple(caption_readers()), Sampling(frames=6)
    files = VideoFiles(tiny_malmm)

    class BreaksAfterThreeFrames(VideoStream):
        def __iter__(self):
            for number, item in enumerate(super().__iter__()):
                if number == 3:
                    raise VideoError("the disk went away")
                yield item

    def open_stream(source, sampling, readers):
        if source == v1:
            return BreaksAfterThreeFrames(tiny_malmm, source, sampling)
        return files(source, sampling, readers)

    def read(clips: list[Clip], **options) -> list:
        return read_in_lockstep(tiny_malmm, clips, open_stream, "caption", memory=Memory(2), settings=SETTINGS,
                                **options)  # fmt: skip

    alone = [read([Clip(video, sampling, readers)], videos_at_once=1)[0].to_dict() for video in (v0, v2)]
    widths = step_widths(tiny_malmm, monkeypatch)
    done = []
    clips = [Clip(v0, sampling, readers), Clip(v1, sampling, readers), Clip(v2, sampling, readers),
             Clip(v0, VideoError("a clip is sampled by --frames"), readers)]  # fmt: skip
    results = read(clips, videos_at_once=8, on_done=lambda number, result: done.append(number))
    assert widths == [3, 3, 3, 2, 2, 2]  # in lockstep; the broken video left the batch at its 4th frame
    assert isinstance(results[1], VideoError) and str(results[1]) == "the disk went away"
    assert isinstance(results[3], VideoError) and "sampled by --frames" in str(results[3])
    assert [results[0].to_dict(), results[2].to_dict()] == alone
    assert done == [1, 0, 2, 3]


def test_a_clip_no_longer_wanted_leaves_its_group_and_the_others_read_on(
    tiny_malmm: Malmm, videos: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`stopped` (a server's client that went away): the clip leaves the batch before its next
    frame, failed with Stopped; the others equal each read alone."""
    from malmm_cli.reading.pipeline import Stopped

    v0, v1, v2, _ = videos
    readers, sampling = tuple(question_readers(["who is there?"])), Sampling(frames=6)
    files = VideoFiles(tiny_malmm)

    def read(clips: list[Clip], **options) -> list:
        return read_in_lockstep(tiny_malmm, clips, files, "ask", memory=Memory(2), settings=SETTINGS, **options)

    alone = [read([Clip(video, sampling, readers)], videos_at_once=1)[0].to_dict() for video in (v0, v2)]
    widths = step_widths(tiny_malmm, monkeypatch)
    frames_asked = []

    def stopped(number: int) -> bool:
        frames_asked.append(number)
        return number == 1 and frames_asked.count(1) > 2  # wanted for 2 frames

    clips = [Clip(video, sampling, readers) for video in (v0, v1, v2)]
    results = read(clips, videos_at_once=8, stopped=stopped)
    assert widths == [3, 3, 2, 2, 2, 2]
    assert isinstance(results[1], Stopped) and str(results[1]).startswith("stopped after 2 frames")
    assert [results[0].to_dict(), results[2].to_dict()] == alone
