"""What a mistake costs: the CPU time of commands that fail their cheap checks, against `malmm --help`.

Every check that needs no model runs before torch is imported (issue 26), so a missing file or a
bad option should cost about what printing the help costs. Each command runs in a fresh process,
`--repeats` times; the figure is the median of the child's user + system CPU seconds (wall time on
a shared machine says more about the neighbours). `--tree` adds another source tree to compare
(an older checkout, say), run side by side in the same loop.

    python benchmarks/cheap_checks.py [--repeats 7] [--tree OLD_CHECKOUT] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, median, update_section

GOAL = 1.5  # the most a cheap failure may cost, in `malmm --help`s

LAUNCH = "import sys; sys.argv[0] = 'malmm'; from malmm_cli.cli import main; main()"


def cpu_seconds(tree: Path, args: list[str]) -> tuple[float, int, str]:
    """Run `malmm ARGS` from this source tree in a fresh interpreter: CPU seconds, status, stderr."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONPATH": str(tree), "NO_COLOR": "1"}
    done = subprocess.run([sys.executable, "-c", LAUNCH, *args], capture_output=True, text=True, env=env, cwd=tree)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return used, done.returncode, done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--tree", type=Path, action="append", default=[], help="another source tree to compare")
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of docs/benchmarks.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / "clips.jsonl"
        manifest.write_text(json.dumps({"video": "match.mp4", "start": 10, "end": 20}) + "\n")
        labels = Path(folder) / "labels.jsonl"
        labels.write_text(json.dumps({"video": "missing.mp4", "label": "cooking"}) + "\n")
        recording = Path(folder) / "recording.ts"
        recording.write_bytes(b"")  # a recording that has not started yet
        cases = {  # the command, and the exit status it must end with
            "malmm --help": (["--help"], 0),
            "malmm caption missing.mp4": (["caption", str(Path(folder) / "missing.mp4")], 1),
            "malmm caption @clips.jsonl --fps 1 (clips need --frames)": (["caption", f"@{manifest}", "--fps", "1"], 2),
            "malmm ask missing.mp4 (no question)": (["ask", str(Path(folder) / "missing.mp4")], 2),
            "malmm eval labels.jsonl (its video is missing)": (["eval", str(labels), "-o", f"{folder}/out"], 2),
            "malmm watch missing.ts": (["watch", str(Path(folder) / "missing.ts")], 2),
            "malmm train missing.jsonl": (
                ["train", str(Path(folder) / "missing.jsonl"), "-t", "caption", "-o", f"{folder}/run"],
                2,
            ),
            "malmm watch recording.ts --memory concat (needs --reset-every)": (
                ["watch", str(recording), "--memory", "concat"],
                2,
            ),
        }
        trees = [REPO, *[tree.resolve() for tree in args.tree]]
        times: dict[tuple[Path, str], list[float]] = {(tree, case): [] for tree in trees for case in cases}
        for _ in range(args.repeats):  # interleaved, so that the machine's load falls on every case alike
            for tree in trees:
                for case, (argv, expected) in cases.items():
                    used, status, stderr = cpu_seconds(tree, argv)
                    if status != expected:
                        raise SystemExit(f"{tree}: {case}: status {status}, expected {expected}\n{stderr}")
                    times[tree, case].append(used)

    lines = ["| source tree | command | CPU s (median) | x `--help` |", "| --- | --- | --- | --- |"]
    worst = 0.0
    for tree in trees:
        base = median(times[tree, "malmm --help"])
        for case in cases:
            seconds = median(times[tree, case])
            ratio = seconds / base
            if tree == REPO:
                worst = max(worst, ratio)
            name = "this checkout" if tree == REPO else tree.name
            lines.append(f"| {name} | `{case}` | {seconds:.2f} | {ratio:.2f} |")
    table = "\n".join(lines)
    print(table)
    verdict = "met" if worst <= GOAL else "NOT met"
    print(f"worst cheap failure: {worst:.2f}x --help (goal <= {GOAL}x: {verdict})")
    if args.write:
        body = (
            "## What a mistake costs\n\n"
            "`benchmarks/cheap_checks.py`: the CPU time (user + system, median of "
            f"{args.repeats} fresh processes each, interleaved) of commands refused by a check that needs no "
            f"model, against `malmm --help`. Goal: at most {GOAL}x.\n\n"
            f"{table}\n\nWorst cheap failure in this checkout: {worst:.2f}x `--help` (goal {verdict})."
        )
        update_section("cheap-checks", body)


if __name__ == "__main__":
    main()
