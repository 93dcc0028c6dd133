"""The prepared GPU check runs end to end at tiny size on the CPU, so it cannot rot between GPU runs."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from torch import nn

from benchmarks.gpu_check import (
    CPU_ALLOWANCE,
    SECTIONS,
    Check,
    decode_workers,
    merge,
    quantize_llm,
    render,
    repeat_segment,
)
from tests.conftest import REPO
from tests.media import make_video, read_barcode
from tests.test_quantization import RandomDraws
from tests.tiny_models import tiny_config


def test_gpu_check_in_cpu_mode(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    script = str(REPO / "benchmarks" / "gpu_check.py")
    # a generous budget: a busy machine must not skip sections here (skipping has its own tests)
    command = [
        sys.executable,
        script,
        "--cpu",
        "--out",
        str(out),
        "--workdir",
        str(tmp_path / "work"),
        "--budget",
        "3600",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALMM_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["format"] == "malmm-gpu-check-v2" and list(results["sections"]) == list(SECTIONS)
    for name, section in results["sections"].items():
        assert "error" not in section and "skipped" not in section, (name, section)
    assert results["follow_up"] is None and "FOLLOW-UP: none" in done.stdout
    sections = results["sections"]
    for name, llm in (("memory_4bit", "Linear4bit"), ("memory_8bit", "Linear8bitLt")):
        memory = sections[name]
        assert memory["llm"] == llm and all(memory[f"frames_{n}"]["caption_chars"] >= 0 for n in memory["frames"])
    hour = {(row["clip"], row["seek"]): row for row in sections["per_hour"]["rows"]}
    assert set(hour) == {("720p", "exact"), ("720p", "keyframe"), ("1080p", "exact")}
    exact = hour["720p", "exact"]
    assert exact["video"]["codec"] == "h264" and exact["frames"] == 12  # 3 copies of a 4 s segment, 1 frame/s
    assert exact["steady_frames_per_s"] > 0 and exact["minutes_per_hour"] > 0 and not exact["warnings"]
    assert hour["720p", "keyframe"]["frames"] == 3  # one keyframe a segment
    (parity,) = sections["parity"]["rows"]
    assert parity["dtype"] == "bfloat16" and parity["logits_cosine"] > 0.9
    drift = sections["drift"]
    assert drift["finite"] and drift["sizes_sum_to_frames"] and drift["visual_merges_agree"] > 0
    assert all(row["frames_per_s"] > 0 for row in sections["vision"]["rows"])
    cards = sections["consumer"]["cards"]  # 8 GiB, then 12 GiB with the ViT in 8-bit too
    assert [(card["card_gib"], card["quantize_vision"]) for card in cards] == [(8, "none"), (12, "8bit")]
    assert all(run["ok"] for card in cards for run in card["runs"]) and cards[0]["loaded"]
    assert sections["generate"]["llm"] == "Linear4bit"
    assert all(sections["batching"][key] > 0 for key in ("step_ms_1_video", "step_ms_8_videos", "generate_s_8"))
    watching = sections["watch"]
    assert watching["frames_read"] == 8 and watching["events"] == 2 and watching["frames_per_s"] > 0
    assert all(sections["training"][name]["examples_per_s"] > 0 for name in ("adamw", "adamw8bit"))
    text = render(merge([results]))
    assert "not measured" not in text and "minutes per hour" in text and "8 videos at once" in text
    assert "Training step" in text and "frames/s read" in text and "Drift over 120 frames" in text


def _check(tmp_path: Path, budget: float, only: list[str]) -> Check:
    args = argparse.Namespace(cpu=True, budget=budget, only=only, out=str(tmp_path / "gpu_check.json"),
                              workdir=tmp_path / "work", video=None, peak_tflops=790.0)  # fmt: skip
    return Check(args)


def test_sections_out_of_time_are_skipped_and_handed_to_the_follow_up(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("OUT", str(tmp_path))
    budget = CPU_ALLOWANCE["vision"] + 1  # vision fits, consumer after it does not
    check = _check(tmp_path, budget, ["vision", "consumer", "generate"])
    ran = []
    for name in check.wanted:
        check.run(name, lambda check, name=name: ran.append(name) or {"done": True})
    assert ran == ["vision", "generate"] or ran == ["vision"]  # generate fits only if the machine was quick
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["sections"]["consumer"]["skipped"].startswith("out of time")
    follow_up = written["follow_up"]
    assert follow_up["sections"][0] == "consumer" and "vision" not in follow_up["sections"]
    only = ",".join(follow_up["sections"])
    assert follow_up["command"].startswith(f"python3 benchmarks/gpu_check.py --only {only} --budget 150 --cpu")
    assert follow_up["command"].endswith('--out "$OUT/gpu_check-2.json"')


def test_a_section_not_reached_is_in_the_follow_up(tmp_path: Path) -> None:
    """A run killed mid-section (the device's time limit) leaves a file whose follow-up names it."""
    check = _check(tmp_path, 1000, ["drift", "vision"])
    check.run("drift", lambda check: {"done": True})
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["follow_up"]["sections"] == ["vision"]


def test_llm_layers_are_swapped_without_drawing_weights_they_throw_away() -> None:
    """The check's 4- and 8-bit LLM layers are made on `meta`: made on the CPU, each would first draw
    a random weight of its full size (6.5 G values for vicuna-7b) only to be handed the real one."""
    from models.modeling import MalmmForConditionalGeneration

    for mode, kind in (("4bit", bnb.nn.Linear4bit), ("8bit", bnb.nn.Linear8bitLt)):
        model = MalmmForConditionalGeneration(tiny_config()).eval()
        linears = [n for n, m in model.language_model.named_modules() if type(m) is nn.Linear and "lm_head" not in n]
        draws = RandomDraws()
        with draws:
            swapped = quantize_llm(model, "cpu", torch.float32, mode)
        assert swapped == len(linears) > 0 and draws.values == 0, (mode, draws.values)
        modules = dict(model.language_model.named_modules())
        assert all(isinstance(modules[name], kind) for name in linears)
        assert type(modules["lm_head"]) is nn.Linear


def test_a_repeated_segment_is_one_longer_clip(tmp_path: Path) -> None:
    """The hour-long clip is a minute's packets copied 60 times: every copy decodes, in order."""
    from malmm_cli.media.probe import probe
    from malmm_cli.media.video import VideoReader

    segment = make_video(tmp_path / "segment.mp4", seconds=2.0, fps=10, size=(64, 48))
    clip = tmp_path / "clip.mp4"
    repeat_segment(segment, 3, clip)
    info = probe(clip)
    assert info.codec == "h264" and info.duration == pytest.approx(6.0, abs=0.15)
    with VideoReader(clip, info) as reader:
        frames = list(reader.frames([0.05, 1.95, 2.05, 4.55, 5.95]))
    assert [read_barcode(frame.image) for frame in frames] == [0, 19, 0, 5, 19]
    assert [frame.time for frame in frames] == pytest.approx([0.0, 1.9, 2.0, 4.5, 5.9], abs=1e-3)


def test_decode_workers_keep_chunks_two_keyframe_intervals_long() -> None:
    assert decode_workers(3600, 8.33, 16) == 16  # an hour: chunks of 56 s
    assert decode_workers(600, 8.33, 16) == 9  # ten minutes: 36 chunks of 16.7 s
    assert decode_workers(3600, 8.33, 4) == 4  # never more than the cores
    assert decode_workers(12, 4.0, 16) == 1


def test_a_failing_section_is_recorded_and_the_rest_still_render() -> None:
    results = {
        "machine": {"cpu_count": 16, "gpu": "H100"},
        "date": "2026-12-01T00:00:00",
        "seconds": 12.0,
        "command": "python3 benchmarks/gpu_check.py",
        "mode": "gpu",
        "sections": {"memory_4bit": {"error": "ImportError: bitsandbytes"}, "vision": {"skipped": "out of time"}},
    }
    follow_up = {**results, "command": "python3 benchmarks/gpu_check.py --only vision", "seconds": 3.0,
                 "sections": {"vision": {"tflop_per_frame": 0.52, "peak_tflops": 790, "attention": "sdpa",
                                         "rows": [], "seconds": 3.0, "allowance": 30}}}  # fmt: skip
    text = render(merge([results]))
    assert "memory_4bit: **not measured**: ImportError: bitsandbytes" in text
    assert "vision: **not measured**: out of time" in text and "parity: **not measured**: not run" in text
    results["sections"]["consumer"] = {"cards": [
        {"card_gib": 8, "quantize_vision": "none", "loaded": False, "refused_by_plan": "needs ~8.4 GiB",
         "loaded_past_the_plan": True, "vision_batch": 4,
         "runs": [{"frames": 100, "ok": True, "peak_allocated_gib": 6.1},
                  {"frames": 3600, "ok": False, "out_of_memory": "CUDA out of memory"}]}]}  # fmt: skip
    text = render(merge([results]))
    assert "| 8 GiB | none | refused by the plan; loaded past it | 4 | 3600 | **out of memory** |" in text
    assert "The memory plan's refusal (8 GiB: needs ~8.4 GiB)." in text
    text = render(merge([results, follow_up]))  # the follow-up measured what the first run skipped
    assert "vision: **not measured**" not in text and "Vision encoder" in text and "vision 3/30" in text
    assert "memory_4bit: **not measured**" in text and "--only vision" in text
