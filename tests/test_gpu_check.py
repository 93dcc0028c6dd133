"""The prepared GPU check runs end to end at tiny size on the CPU, so it cannot rot between GPU runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.gpu_check import SECTIONS, render
from tests.conftest import REPO


def test_gpu_check_in_cpu_mode(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALMM_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["format"] == "malmm-gpu-check-v1" and set(results["sections"]) == set(SECTIONS)
    for name, section in results["sections"].items():
        assert "error" not in section and "skipped" not in section, (name, section)
    memory = results["sections"]["memory"]["modes"]
    assert set(memory) == {"4bit", "8bit"} and all(row["caption_chars"] >= 0 for row in memory.values())
    assert results["sections"]["generate"]["llm"] == "Linear4bit"
    assert all(row["frames_per_s"] > 0 for row in results["sections"]["vision"]["rows"])
    (parity,) = results["sections"]["parity"]["rows"]
    assert parity["dtype"] == "bfloat16" and parity["logits_cosine"] > 0.9
    end_to_end = results["sections"]["end_to_end"]
    assert end_to_end["frames"] == 4 and end_to_end["decoded"] == 4 and end_to_end["minutes_per_hour_of_video"] > 0
    training = results["sections"]["training"]
    assert all(training[name]["examples_per_s"] > 0 for name in ("adamw", "adamw8bit"))
    batching = results["sections"]["batching"]
    assert all(batching[key] > 0 for key in ("step_ms_1_video", "step_ms_8_videos", "generate_s_8"))
    watching = results["sections"]["watch"]
    assert watching["frames_read"] == 8 and watching["events"] == 2 and watching["frames_per_s"] > 0
    text = render(results)
    assert "not measured" not in text and "minutes per hour of video" in text and "8 videos at once" in text
    assert "Training step" in text and "frames/s read" in text


def test_a_failing_section_is_recorded_and_the_rest_still_render() -> None:
    results = {
        "machine": {"cpu_count": 16, "gpu": "H200"},
        "date": "2026-12-01T00:00:00",
        "seconds": 12.0,
        "command": "python benchmarks/gpu_check.py",
        "mode": "gpu",
        "sections": {"memory": {"error": "ImportError: bitsandbytes"}, "vision": {"skipped": "out of time"}},
    }
    text = render(results)
    assert "memory: **not measured**: ImportError: bitsandbytes" in text
    assert "vision: **not measured**: out of time" in text and "parity: **not measured**: not run" in text
