"""benchmarks/find_cost.py (what `malmm find` costs) runs end to end on tiny inputs, so it cannot
rot between measurements, and its ratios compare the runs they name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.find_cost import CONFIGS, Run, ratios
from tests.conftest import REPO


@pytest.mark.benchmark_smoke  # 10 fresh processes: .ci/run's smoke job, not the main suite
def test_quick_run_records_every_run_and_ratio(tmp_path: Path) -> None:
    """--quick: 10 fresh processes (about a minute on a shared 2-core machine: each imports torch)."""
    out = tmp_path / "find_cost.json"
    doc = (REPO / "docs" / "benchmarks.md").read_text()
    command = [sys.executable, str(REPO / "benchmarks" / "find_cost.py"), "--quick", "--workdir", str(tmp_path),
               "--json", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert {"date", "machine", "command", "model", "fps", "window_s", "lengths_s", "runs", "ratios"} <= set(report)
    assert (report["model"], report["fps"], report["window_s"], report["lengths_s"]) == ("tiny", 1.0, 4.0, [12, 72])
    made = [(r["seconds"], r["config"], r["cache"]) for r in report["runs"]]
    assert made == [(s, config, cache) for s in (12, 72) for config, _, cache in CONFIGS]
    for run in report["runs"]:
        assert run["frames"] == run["seconds"]  # 1 frame/s over the whole video
        assert run["windows"] == run["seconds"] // 4  # find's windows; caption's segments of the same length
        assert run["answered"] == run["queries"]  # the 10-query runs found 10 queries, from one read
        assert run["cached"] == (run["cache"] == "warm")  # warm runs found the cold run's features
        assert run["wall_s"] > 0 and run["cpu_s"] > 0 and run["peak_rss_mib"] > 100  # torch alone is more
    assert set(report["ratios"]) == set(ratios([Run(**r) for r in report["runs"]], 12, 72))
    assert (REPO / "docs" / "benchmarks.md").read_text() == doc  # --quick never writes the doc
    assert "peak RSS 1.2 min / 0.2 min (goal <= 1.05)" in done.stdout


def _run(seconds: float, config: str, cache: str, wall: float, peak: float) -> Run:
    return Run(seconds, config, 10 if "10" in config else 1, cache, wall, wall / 2, peak, 1, 1)


def test_ratios_compare_the_runs_they_name() -> None:
    runs = []
    for seconds, grow in ((600, 1.0), (3600, 1.1)):
        runs += [
            _run(seconds, "find 1 query", "cold", 10 * grow, 400 * grow),
            _run(seconds, "find 1 query", "warm", 4 * grow, 390),
            _run(seconds, "find 10 queries", "cold", 20 * grow, 410),
            _run(seconds, "find 10 queries", "warm", 16 * grow, 395),
            _run(seconds, "caption --segment", "cold", 40 * grow, 500),
        ]
    found = ratios(runs, 600, 3600)
    assert found["10min wall 10q/1q cold"] == 2.0
    assert found["10min wall 10q/1q warm"] == 4.0
    assert found["10min wall warm/cold 1q"] == 0.4
    assert found["10min wall warm/cold 10q"] == 0.8
    assert found["60min wall find/caption 1q cold"] == 0.25
    assert found["10min peak find/caption 1q cold"] == 0.8
    assert found["10min wall read share 1q"] == 0.6
    assert found["10min cpu 10q/1q cold"] == 2.0  # CPU time: half the wall time in every run here
    assert found["peak 60min/10min find 1 query cold"] == 1.1
    assert found["peak 60min/10min find 1 query warm"] == 1.0
