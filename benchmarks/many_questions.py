"""Ten questions about one video against one: what `malmm ask --question-file` costs per question.

    python benchmarks/many_questions.py [--size mid] [--frames 60] [--repeats 3] [--baseline CHECKOUT]

Whole `malmm ask` commands (start-up and model loading included), each in a fresh process for a
clean peak RSS, 1 and 10 questions in turn, with the vision features cached (warmed once) and
without (--no-cache). With --baseline, the same commands also run from another checkout of malmm
(say, the commit before a change), interleaved with these, so both see the same machine.
The video is a synthetic one-minute 640x360 clip made once in the work folder.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, median, model_folder, run_child, synthetic_clip, update_section

QUESTIONS = [
    "what is happening?",
    "who is in the video?",
    "what colour is the car on the left?",
    "is it day or night?",
    "how many people walk past the camera during the video?",
    "what is the person holding?",
    "where does this take place?",
    "does anyone speak to the camera?",
    "what happens right after the door opens and the dog runs out into the garden?",
    "is it raining?",
]
LAUNCHER = "from malmm_cli.cli import main\nmain()\n"


def _commit(checkout: Path) -> str:
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "an unknown commit"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mid", choices=["tiny", "small", "mid", "full"])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout of malmm to compare with")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/malmm-bench"))
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    video = synthetic_clip(args.workdir / "synthetic-1min-640x360.mp4", 60, (640, 360))
    folder = model_folder(args.workdir, args.size)
    launcher = args.workdir / "malmm_main.py"
    launcher.write_text(LAUNCHER)
    files = {}
    for count in (1, len(QUESTIONS)):
        files[count] = args.workdir / f"questions-{count}.txt"
        files[count].write_text("\n".join(QUESTIONS[:count]) + "\n")
    checkouts = {"this checkout": REPO}
    if args.baseline:
        checkouts["baseline"] = args.baseline.resolve()

    def command(checkout: Path, count: int, cached: bool) -> tuple[list[str], dict[str, str]]:
        argv = [str(launcher), "ask", str(video), "--question-file", str(files[count]), "--frames", str(args.frames),
                "--model", str(folder), "--device", "cpu", "--quiet", "-f", "json"]  # fmt: skip
        if not cached:
            argv.append("--no-cache")
        cache = args.workdir / f"feature-cache-questions-{checkout.name}"
        return argv, {**os.environ, "PYTHONPATH": str(checkout), "MALMM_CACHE_DIR": str(cache)}

    for checkout in checkouts.values():  # warm each checkout's cache once
        argv, env = command(checkout, 1, cached=True)
        if (warm := run_child(argv, env=env)).returncode != 0:
            raise SystemExit(warm.stderr)

    runs: dict[tuple[str, bool, int], list] = {}
    for repeat in range(args.repeats):
        for name, checkout in checkouts.items():
            for cached in (True, False):
                for count in files:
                    argv, env = command(checkout, count, cached)
                    run = run_child(argv, env=env)
                    if run.returncode != 0:
                        raise SystemExit(run.stderr)
                    runs.setdefault((name, cached, count), []).append(run)
                    print(f"{repeat + 1}/{args.repeats} {name} cached={cached} {count}q: {run.seconds:.1f} s, "
                          f"{run.peak_rss_mib:.0f} MiB", flush=True)  # fmt: skip

    many = len(QUESTIONS)
    rows = []
    for name in checkouts:
        for cached in (True, False):
            one, ten = runs[(name, cached, 1)], runs[(name, cached, many)]
            t1, t10 = median([r.seconds for r in one]), median([r.seconds for r in ten])
            m1, m10 = median([r.peak_rss_mib for r in one]), median([r.peak_rss_mib for r in ten])
            spread = [f"{min(r.seconds for r in rs):.0f}-{max(r.seconds for r in rs):.0f}" for rs in (one, ten)]
            rows.append(
                f"| {name} | {'cached' if cached else 'not cached'} | {t1:.1f} ({spread[0]}) | {t10:.1f} ({spread[1]}) "
                f"| **{t10 / t1:.2f}x** | {m1:.0f} | {m10:.0f} | **{m10 / m1:.2f}x** |"
            )
    baseline = f" Baseline: {args.baseline} at {_commit(args.baseline)}." if args.baseline else ""
    lines = [
        f"## Ten questions against one ({args.size} model, CPU, {args.frames} frames)",
        "",
        f"Whole `malmm ask VIDEO --question-file FILE --frames {args.frames}` commands on a one-minute 640x360 "
        f"clip, medians (and ranges) of {args.repeats}, interleaved; features cached (warmed once) or not "
        f"(--no-cache).{baseline}",
        "",
        "| code | features | 1 question s | 10 questions s | time ratio | 1 question MiB | 10 questions MiB "
        "| peak ratio |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]
    update_section(f"many-questions-{args.size}-cpu", "\n".join(lines))


if __name__ == "__main__":
    main()
