"""benchmarks/serve_load.py runs end to end: the real `malmm serve` as a child process, concurrent
clients, and every figure the lead re-runs it for in its JSON (a smoke run, not a measurement)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")


def test_quick_run_writes_every_figure(tiny_llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "serve_load.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "serve_load.py"), "--quick", "--model", str(tiny_llama_dir),
         "--workdir", str(tmp_path / "work"), "--json", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert [level["clients"] for level in result["levels"]] == [1, 4]
    for level in result["levels"]:
        assert level["requests"] >= level["clients"]
        assert level["requests_per_s"] > 0
        assert 0 < level["p50_s"] <= level["p95_s"]
    both = result["first_vs_second"]
    assert both["first_s"] > 0 and both["second_s"] > 0 and both["speedup"] > 0
    assert len(both["each_first_s"]) == len(both["each_second_s"]) == result["clips"]["count"] == 2
    memory = result["memory"]
    assert set(memory["rss_mib_after"]) == {"5", "16"}
    assert all(mib > 50 for mib in memory["rss_mib_after"].values())  # a resident model, not a stray process
    assert memory["ratio"] == pytest.approx(memory["rss_mib_after"]["16"] / memory["rss_mib_after"]["5"], abs=1e-3)
    assert result["requests"] == 16  # the memory phase sent exactly the requests it needed
    assert "| clients | requests | requests/s |" in done.stdout
