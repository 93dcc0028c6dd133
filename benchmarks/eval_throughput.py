"""`malmm eval` throughput: clips/s of this code against another tree of it (the code before a change).

    python benchmarks/eval_throughput.py --base DIR [--size mid] [--clips 16] [--frames 8] [--repeats 2]

N synthetic clips (4 s, 320x240, 30 fps H.264, made once in the work folder) and a QA data file in
`malmm train`'s format asking two questions of each clip, different from one clip to the next, as
MSRVTT-QA does. Each run is a fresh interpreter importing malmm_cli from the tree it measures
(PYTHONPATH), loading the random-weight model once (float32, CPU) and timing `Evaluation.run`:
reading every clip, answering each question with 5 beams, writing predictions.jsonl and scoring,
which is what `malmm eval` does once the model is loaded. Two conditions: features not cached
(every frame decoded and encoded by the ViT) and cached (the feature cache filled beforehand: the
Q-Former and the LLM alone). Runs of the two trees alternate, medians of `--repeats`; the
predictions of the two trees are compared byte for byte. One torch thread by default: on a shared
machine idle threads spinning for work would count as CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, median, model_folder, synthetic_clip, update_section

QUESTIONS = ["what is moving?", "what colour is the room?", "is anyone there?", "where is this?", "what happens next?"]


def data_file(workdir: Path, clips: int) -> Path:
    """N clips and two questions about each (a different pair from one clip to the next)."""
    folder = workdir / "eval-clips"
    rows = []
    for number in range(clips):
        synthetic_clip(folder / f"{number}.mp4", 4.0, (320, 240), seed=number)
        for offset in range(2):
            question = QUESTIONS[(number + offset) % len(QUESTIONS)]
            rows.append({"video": f"eval-clips/{number}.mp4", "question": question, "answer": "a room"})
    data = workdir / f"eval-qa-{clips}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return data


def child(args: argparse.Namespace) -> None:
    """One timed evaluation with the malmm_cli of PYTHONPATH's tree; prints its figures as JSON."""
    sys.path.remove(str(REPO))  # put there for benchmarks.common: the tree measured is PYTHONPATH's
    import torch

    import malmm_cli
    from models import Malmm

    try:  # this tree's layers
        from malmm_cli.jobs.benchmarks import load_items
        from malmm_cli.jobs.eval_run import EvalSettings
        from malmm_cli.jobs.evaluate import Evaluation
        from malmm_cli.reading.feature_cache import FeatureCache
    except ImportError:  # a tree from before issue 26's layers (the "before" of the comparison)
        from malmm_cli.evaluate import EvalSettings, Evaluation, load_items
        from malmm_cli.feature_cache import FeatureCache

    benchmark, items = load_items(args.data, None, None, None)
    settings = EvalSettings(data=str(args.data), benchmark=benchmark.name, model="bench", checkpoint=None,
                                       frames=args.frames, memory_bank_length=args.bank)  # fmt: skip
    malmm = Malmm.from_pretrained(args.model, device="cpu", dtype=torch.float32)
    cache = FeatureCache(args.cache) if args.cache else None
    run = Evaluation(malmm, benchmark, items, settings, args.output, cache=cache)
    started, cpu = time.perf_counter(), time.process_time()
    metrics = run.run()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    clips = len(Evaluation._by_clip(items))
    print(json.dumps({"seconds": seconds, "cpu": cpu, "clips": clips, "examples": metrics["examples"],
                      "code": malmm_cli.__file__}))  # fmt: skip


def timed(tree: Path, args: argparse.Namespace, data: Path, folder: Path, output: Path, cache: Path | None) -> dict:
    """One evaluation in a fresh interpreter running `tree`'s malmm_cli."""
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", "--data", str(data), "--model", str(folder),
               "--frames", str(args.frames), "--bank", str(args.bank), "--output", str(output)]  # fmt: skip
    if cache is not None:
        command += ["--cache", str(cache)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {done.stderr}")
    figures = json.loads(done.stdout.splitlines()[-1])
    if not figures["code"].startswith(str(tree)):
        raise SystemExit(f"the run meant for {tree} ran {figures['code']}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="the tree to compare with (a git worktree of the code before)")
    parser.add_argument("--size", default="mid", choices=["tiny", "small", "mid"])
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--bank", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run (OMP_NUM_THREADS)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/malmm-bench"))
    parser.add_argument("--no-doc", action="store_true", help="print the table only")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if args.base is None:
        parser.error("--base DIR is needed (e.g. git worktree add /tmp/malmm-base <commit>)")

    import shutil

    args.workdir.mkdir(parents=True, exist_ok=True)
    data, folder = data_file(args.workdir, args.clips), model_folder(args.workdir, args.size)
    trees = {"before": args.base.resolve(), "after": REPO}
    cache = args.workdir / f"eval-feature-cache-{args.size}-{args.frames}"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.rmtree(args.workdir / "eval-fill-cache", ignore_errors=True)
    timed(REPO, args, data, folder, args.workdir / "eval-fill-cache", cache)  # fills the cache: not timed
    load_before = os.getloadavg()[1]
    seconds: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    outputs: dict[tuple[str, str], list[Path]] = {}
    for repeat in range(args.repeats):
        for condition, cached in (("not cached", None), ("cached", cache)):
            for name, tree in trees.items() if repeat % 2 == 0 else reversed(trees.items()):
                output = args.workdir / f"eval-out-{name}-{condition.replace(' ', '-')}-{repeat}"
                shutil.rmtree(output, ignore_errors=True)
                figures = timed(tree, args, data, folder, output, cached)
                seconds.setdefault((condition, name), []).append(figures["seconds"])
                cpu.setdefault((condition, name), []).append(figures["cpu"])
                outputs.setdefault((condition, name), []).append(output / "predictions.jsonl")
                clips = figures["clips"]
                print(f"{condition:>10} {name:>6} run {repeat + 1}: {figures['seconds']:.1f} s, "
                      f"{clips / figures['seconds']:.3f} clips/s, {figures['cpu']:.1f} CPU s", flush=True)  # fmt: skip
    load = (load_before + os.getloadavg()[1]) / 2
    predictions = {path.read_bytes() for paths in outputs.values() for path in paths}
    identical = "identical" if len(predictions) == 1 else f"NOT identical ({len(predictions)} different files)"
    rows, ratios = [], {}
    for condition in ("not cached", "cached"):
        wall = {name: median(seconds[(condition, name)]) for name in trees}
        used = {name: median(cpu[(condition, name)]) for name in trees}
        ratios[condition] = (wall["before"] / wall["after"], used["before"] / used["after"])
        for name in trees:
            rows.append(f"| {condition} | {name} | {wall[name]:.1f} | {clips / wall[name]:.3f} | {used[name]:.1f} | "
                        f"{clips / used[name]:.3f} |")  # fmt: skip
    print("\n".join(rows) + f"\npredictions: {identical}")
    if args.no_doc:
        return None
    base_commit = subprocess.run(["git", "-C", str(args.base), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True, check=False).stdout.strip() or str(args.base)  # fmt: skip
    body = "\n".join([
        f"## `malmm eval` throughput, clips of equal sampling in lockstep ({args.size} model, cpu)",
        "",
        f"`Evaluation.run` (what `malmm eval` does once the model is loaded: read, answer with 5 beams, write "
        f"predictions.jsonl, score) over {clips} synthetic 4 s 320x240 clips asking 2 questions each (a different "
        f"pair from one clip to the next), --frames {args.frames}, --memory-bank-length {args.bank}; before: "
        f"{base_commit} (one clip per read), after: clips of equal sampling read in lockstep (malmm_cli/lockstep.py, "
        f"as many at once as `loading.reading_sizes` allows, at most 8). Each run a fresh interpreter, the model "
        f"loaded before timing, {args.threads} torch thread(s); runs of the two alternating, medians of "
        f"{args.repeats}. Predictions of every run: "
        f"{identical}. The machine was shared: load average about {load:.1f} on its {os.cpu_count()} cores "
        "during the runs, so wall times are stretched alike for both; CPU seconds are the process's own.",
        "",
        "| features | code | wall s | clips/s | CPU s | clips per CPU s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        f"**Lockstep reads {ratios['not cached'][0]:.2f}x the clips per second with the features computed "
        f"({ratios['not cached'][1]:.2f}x per CPU second), {ratios['cached'][0]:.2f}x with them cached "
        f"({ratios['cached'][1]:.2f}x per CPU second).** The ViT's work per frame is the same either way; "
        "what lockstep saves is the Q-Former's and the LLM's work one clip at a time (a step of one video, "
        "a generation batch of one clip's questions).",
    ])  # fmt: skip
    update_section(f"eval-throughput-{args.size}-cpu", body)
    return None


if __name__ == "__main__":
    main()
