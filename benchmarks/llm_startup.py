"""What the malmm plugin costs llm at start-up: `llm models` with no plugin and with malmm's.

llm imports every plugin when it starts, for `llm models` and `llm --help` too, so the plugin must
import no torch (malmm_cli/llm_plugin.py). LLM_LOAD_PLUGINS picks the plugins of each run: none, or
malmm's alone. Each run is a fresh process, the two interleaved; the figure is the median of the
child's user + system CPU seconds (wall time on a shared machine says more about the neighbours).

    python benchmarks/llm_startup.py [--repeats 15] [--write]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median, update_section

PLUGINS = {"no plugin": "", "malmm": "malmm"}


def measure(llm: Path, plugins: str, user_dir: str) -> tuple[float, float]:
    """One `llm models`: its CPU and wall seconds."""
    env = {**os.environ, "LLM_LOAD_PLUGINS": plugins, "LLM_USER_PATH": user_dir}
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    listed = subprocess.run([str(llm), "models"], env=env, capture_output=True, text=True, check=True).stdout
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    assert ("malmm" in listed) == bool(plugins), listed
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    llm = Path(sys.executable).with_name("llm")
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in PLUGINS}
    with tempfile.TemporaryDirectory() as user_dir:
        for _ in range(args.repeats):
            for name, plugins in PLUGINS.items():
                runs[name].append(measure(llm, plugins, user_dir))
    cpu = {name: median([r[0] for r in got]) for name, got in runs.items()}
    wall = {name: median([r[1] for r in got]) for name, got in runs.items()}
    rows = [f"| {name} | {cpu[name]:.3f} | {wall[name]:.3f} |" for name in PLUGINS]
    body = "\n".join([
        "## The llm plugin and llm's start-up (`benchmarks/llm_startup.py`)",
        "",
        f"`llm models`, a fresh process per run, median of {args.repeats} interleaved runs: with no plugin "
        "(`LLM_LOAD_PLUGINS=`) and with malmm's alone (`LLM_LOAD_PLUGINS=malmm`).",
        "",
        "| plugins | CPU s | wall s |",
        "| --- | ---: | ---: |",
        *rows,
        "",
        f"**{cpu['malmm'] / cpu['no plugin']:.2f}x** the CPU time without the plugin "
        f"({wall['malmm'] / wall['no plugin']:.2f}x wall).",
    ])  # fmt: skip
    print(body)
    if args.write:
        update_section("llm-startup", body)


if __name__ == "__main__":
    main()
