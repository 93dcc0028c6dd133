"""What Ray costs on one machine: the same folder read by the local engine and by `--engine ray`.

    python benchmarks/ray_overhead.py [--size mid] [--videos 4] [--workers 1] [--repeats 2]

Whole `malmm caption FOLDER -o OUT --overwrite` commands, start-up and model loading included,
the local engine and `--engine ray --workers N` (a local Ray cluster started by the command, the
model loaded in each actor) in turn, interleaved, vision features cached (warmed once). Reports
the wall time, videos per second and the ratio, and checks that both wrote the same results. The
clips are synthetic one-minute 640x360 videos made once in the work folder. Peak RSS is not
compared: Ray's actors and daemons are processes of their own.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median, model_folder, run_child, synthetic_clip, update_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mid", choices=["tiny", "small", "mid", "full"])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/malmm-bench"))
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = args.workdir / f"ray-clips{args.videos}"
    for number in range(args.videos):
        synthetic_clip(folder / f"clip{number}.mp4", 60, (640, 360), seed=number)
    model = model_folder(args.workdir, args.size)
    malmm = str(Path(sys.executable).parent / "malmm")
    env = {**os.environ, "MALMM_CACHE_DIR": str(args.workdir / f"feature-cache-ray-{args.size}")}
    engines = {
        "local": [],
        "local, one video at a time": ["--video-batch", "1"],  # as each Ray actor reads
        "ray": ["--engine", "ray", "--workers", str(args.workers), "--gpus-per-worker", "0"],
    }

    def command(engine: str) -> list[str]:
        out = args.workdir / f"out-ray-{engine.split(',')[0]}"
        return [malmm, "caption", str(folder), "--model", str(model), "--device", "cpu", "--quiet", "-o", str(out),
                "-f", "json", "--overwrite", *engines[engine]]  # fmt: skip

    if (warm := run_child(command("local"), env=env)).returncode != 0:
        raise SystemExit(warm.stderr)
    seconds: dict[str, list[float]] = {engine: [] for engine in engines}
    for _ in range(args.repeats):
        for engine in engines:
            run = run_child(command(engine), env=env)
            if run.returncode != 0:
                raise SystemExit(f"{engine}: {run.stderr[-2000:]}")
            seconds[engine].append(run.seconds)
    same = all((args.workdir / "out-ray-local" / p.name).read_text() == p.read_text()
               for p in (args.workdir / "out-ray-ray").glob("*.json"))  # fmt: skip
    local, alone, ray = (median(seconds[e]) for e in engines)
    table = "\n".join([
        "| engine | wall s | videos/s |", "| --- | ---: | ---: |",
        f"| local (videos in lockstep, `--video-batch` default) | {local:.1f} | {args.videos / local:.3f} |",
        f"| local, `--video-batch 1` | {alone:.1f} | {args.videos / alone:.3f} |",
        f"| ray, {args.workers} worker(s), one video at a time each | {ray:.1f} | {args.videos / ray:.3f} |",
    ])  # fmt: skip
    body = (
        f"## Ray on one machine (`--engine ray`, {args.size} model, cpu, caption)\n\n"
        f"Whole `malmm caption FOLDER` commands over {args.videos} one-minute 640x360 clips, the local engine "
        f"against a local Ray cluster started by the command, medians of {args.repeats}, interleaved; features "
        f"cached. Results of both: {'identical' if same else 'DIFFERENT'}.\n\n{table}\n\n"
        f"**Ray costs {ray / local:.2f}x the local engine's time here**: {ray - alone:+.1f} s against reading one "
        "video at a time in this process (the cluster's start-up, the model loaded in the actor, the results sent "
        f"back), and {alone - local:+.1f} s for not reading the videos in lockstep, which an actor does not do. "
        "What one node pays for reaching many."
    )
    print(body)
    if not args.no_doc:
        update_section(f"ray-overhead-{args.size}-cpu", body)


if __name__ == "__main__":
    main()
