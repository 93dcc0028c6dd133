"""A second question about the same video, against the first: the feature cache at work.

    python benchmarks/second_question.py [--size tiny] [--minutes 10] [--fps 1] [--workdir DIR]

The first question decodes the video, encodes its frames and stores the vision features; the
second reads them back and only runs the Q-Former (which depends on the question) and the LLM.
Timed in one process with the model loaded once, so Python start-up and model loading (the same
for both) do not blur the comparison; whole `malmm ask` commands are timed too. The video is a
synthetic 720p 30 fps H.264 clip made once in the work folder.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import model_folder, run_child, synthetic_clip, update_section


def clip(workdir: Path, minutes: float) -> Path:
    return synthetic_clip(workdir / f"synthetic-{minutes:g}min-1280x720.mp4", 60 * minutes, (1280, 720))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "mid", "full"])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/malmm-bench"))
    parser.add_argument("--video", type=Path, help="an existing clip to use instead of making one")
    args = parser.parse_args()

    import torch

    from malmm_cli.reading.feature_cache import FeatureCache
    from malmm_cli.reading.pipeline import Sampling, answer_questions
    from models import Malmm

    args.workdir.mkdir(parents=True, exist_ok=True)
    video, folder = args.video or clip(args.workdir, args.minutes), model_folder(args.workdir, args.size)
    cache_dir = args.workdir / f"feature-cache-{args.size}"
    dtype = torch.float32 if args.device == "cpu" else torch.float16
    malmm = Malmm.from_pretrained(folder, device=args.device, dtype=dtype)
    sampling = Sampling(fps=args.fps)
    timings = {}
    for label, question in (("first question", "what is happening?"), ("second question", "who is there?")):
        if label == "first question":
            FeatureCache(cache_dir).clear()
        started = time.perf_counter()
        result = answer_questions(malmm, video, [question], sampling=sampling, cache=FeatureCache(cache_dir))
        timings[label] = time.perf_counter() - started
        print(f"{label}: {timings[label]:.2f} s ({result.frames} frames)", flush=True)

    malmm_command = str(Path(sys.executable).parent / "malmm")
    env = {**os.environ, "MALMM_CACHE_DIR": str(cache_dir)}
    commands = {}
    for label in ("first question", "second question"):
        if label == "first question":
            FeatureCache(cache_dir).clear()
        command = [malmm_command, "ask", str(video), "what happens?", "--fps", f"{args.fps:g}", "--model", str(folder)]
        run = run_child([*command, "--device", args.device, "--quiet"], env=env)
        if run.returncode != 0:
            raise SystemExit(run.stderr)
        commands[label] = run.seconds
    speedup = timings["first question"] / timings["second question"]
    command_speedup = commands["first question"] / commands["second question"]
    print(f"second question {speedup:.1f}x faster; whole commands {commands}")
    lines = [
        f"## Second question on the same video ({args.size} model, {args.device})",
        "",
        f"{video.name}: {result.duration / 60:.1f}-minute video, {args.fps:g} frame/s sampled "
        f"({result.frames} frames).",
        "In-process: model loaded once, each question timed alone. Whole command: `malmm ask`, start-up included.",
        "",
        "| | in-process s | whole command s |",
        "| --- | ---: | ---: |",
        *(f"| {label} | {timings[label]:.2f} | {commands[label]:.1f} |" for label in timings),
        "",
        f"**Second question: {speedup:.1f}x faster** (whole command: {command_speedup:.1f}x).",
    ]
    update_section(f"second-question-{args.size}-{args.device.split(':')[0]}", "\n".join(lines))


if __name__ == "__main__":
    main()
