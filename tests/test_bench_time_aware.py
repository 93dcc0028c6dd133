"""benchmarks/time_aware_grounding.py (issue 30's controlled experiment) runs end to end on tiny
inputs, so it cannot rot between measurements; and what it scores is what the table claims."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.time_aware_grounding import Clip, arms, ceilings, make_clip, number_tokenizers, scores
from tests.conftest import REPO


@pytest.mark.benchmark_smoke  # trains two tiny runs in a fresh process: .ci/run's smoke job
def test_smoke_run_trains_and_scores_every_arm(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    doc = (REPO / "docs" / "benchmarks.md").read_text()
    command = [sys.executable, str(REPO / "benchmarks" / "time_aware_grounding.py"), "--smoke", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["runs"]) == set(arms(4)) and len(arms(4)) == 4  # with and without, each + adapter
    for runs in report["runs"].values():
        assert len(runs) == 1 and 0 <= runs[0]["miou"] <= 1 and 0 <= runs[0]["parsed"] <= 1
    assert (REPO / "docs" / "benchmarks.md").read_text() == doc  # --smoke never writes the doc


def test_a_clip_has_one_red_scene_where_its_truth_says(tmp_path: Path) -> None:
    import av
    import numpy as np

    clip = make_clip(tmp_path / "clip.mp4", seed=7)
    with av.open(str(clip.path)) as container:
        frames = [(float(f.time), f.to_ndarray(format="rgb24").mean(axis=(0, 1))) for f in container.decode(video=0)]
    red = [t for t, rgb in frames if rgb[0] > 150 and rgb[1] < 90 and rgb[2] < 90]
    assert 8 <= clip.duration <= 16 and len(frames) == round(clip.duration * 4)
    assert (min(red), max(red) + 0.25) == (clip.start, clip.end)  # one run of red frames, nothing else red
    assert len(red) == round((clip.end - clip.start) * 4)
    assert np.isclose(frames[-1][0] + 0.25, clip.duration)


def test_the_tokenizers_spell_times_and_give_them_back() -> None:
    llm, qformer = number_tokenizers()
    ids = llm("3.5 - 12.0 seconds", add_special_tokens=False).input_ids
    assert llm.unk_token_id not in ids and llm.decode(ids) == "3.5 - 12.0 seconds"
    sentences = qformer(["This frame is sampled at 12.0 second.", "This frame is sampled at 7.5 second."]).input_ids
    assert qformer.unk_token_id not in sentences[0] and sentences[0] != sentences[1]


def test_scores_count_unparsed_answers_as_misses() -> None:
    clips = [Clip(Path("a"), 10.0, 2.0, 6.0), Clip(Path("b"), 10.0, 2.0, 6.0), Clip(Path("c"), 10.0, 2.0, 6.0)]
    got = scores(["2.0 - 6.0 seconds", "4.0 - 8.0 seconds", "red red red"], clips)
    assert got == {
        "miou": pytest.approx((1 + 1 / 3 + 0) / 3),
        "r1_05": pytest.approx(1 / 3),
        "parsed": pytest.approx(2 / 3),
    }
    assert scores([(2.0, 6.0)] * 3, clips)["miou"] == 1.0


def test_ceilings_answer_from_the_red_frames_with_and_without_their_seconds() -> None:
    # 8 frames over 16 s sample 1, 3, ..., 15 s: 5 and 7 s are red, so the frames say 4 - 8 s
    clips = [Clip(Path("a"), 16.0, 4.0, 8.0), Clip(Path("b"), 16.0, 9.2, 9.8)]  # b: no sampled frame is red
    got = ceilings(clips, 8, mean_span=(9.0, 10.0), mean_duration=8.0)
    assert got["with seconds"]["miou"] == pytest.approx((1.0 + 0.6 / 1.0) / 2)  # b gets the mean span
    assert got["without seconds"]["miou"] == pytest.approx((0.0 + 0.6) / 2)  # a: 2 - 4 s, a quarter to a half of 8 s
