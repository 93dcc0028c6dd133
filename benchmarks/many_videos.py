"""A folder of videos read several at once (`--video-batch`) against one at a time.

    python benchmarks/many_videos.py [--size mid] [--videos 8] [--batch 8] [--task caption] [--repeats 2]

Whole `malmm TASK FOLDER -o OUT --overwrite` commands (start-up and model loading included),
`--video-batch 1` and `--video-batch N` in turn, with the vision features cached (warmed once)
and without (--no-cache); the task's default frames and bank. Reports videos per second and the
peak RSS, and checks that both wrote the same results. The clips are synthetic one-minute 640x360
videos made once in the work folder.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median, model_folder, run_child, synthetic_clip, update_section


def clips(workdir: Path, count: int) -> Path:
    folder = workdir / f"clips{count}"
    for number in range(count):
        synthetic_clip(folder / f"clip{number}.mp4", 60, (640, 360), seed=number)
    return folder


def results(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.glob("*.json"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mid", choices=["tiny", "small", "mid", "full"])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--task", default="caption", choices=["caption", "predict"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/malmm-bench"))
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    folder, model = clips(args.workdir, args.videos), model_folder(args.workdir, args.size)
    malmm = str(Path(sys.executable).parent / "malmm")
    env = {**os.environ, "MALMM_CACHE_DIR": str(args.workdir / f"feature-cache-videos-{args.size}")}

    def command(batch: int, cached: bool) -> list[str]:
        out = args.workdir / f"out-videos-{batch}"
        argv = [malmm, args.task, str(folder), "--model", str(model), "--device", args.device, "--quiet",
                "--video-batch", str(batch), "-o", str(out), "-f", "json", "--overwrite"]  # fmt: skip
        return argv if cached else [*argv, "--no-cache"]

    if (warm := run_child(command(1, cached=True), env=env)).returncode not in (0,):
        raise SystemExit(warm.stderr)
    runs: dict[tuple[int, bool], list] = {}
    for repeat in range(args.repeats):
        for cached in (True, False):
            for batch in (1, args.batch):
                run = run_child(command(batch, cached), env=env)
                if run.returncode != 0:
                    raise SystemExit(run.stderr)
                runs.setdefault((batch, cached), []).append(run)
                print(f"{repeat + 1}/{args.repeats} batch {batch} cached={cached}: {run.seconds:.1f} s, "
                      f"{run.peak_rss_mib:.0f} MiB", flush=True)  # fmt: skip
    one, many = results(args.workdir / "out-videos-1"), results(args.workdir / f"out-videos-{args.batch}")
    same = "identical" if one == many and len(one) == args.videos else "DIFFERENT"

    rows = []
    for cached in (True, False):
        alone, together = runs[(1, cached)], runs[(args.batch, cached)]
        t1, tn = median([r.seconds for r in alone]), median([r.seconds for r in together])
        m1, mn = median([r.peak_rss_mib for r in alone]), median([r.peak_rss_mib for r in together])
        rows.append(
            f"| {'cached' if cached else 'not cached'} | {t1:.1f} | {tn:.1f} | {args.videos / t1:.3f} | "
            f"{args.videos / tn:.3f} | **{t1 / tn:.2f}x** | {m1:.0f} | {mn:.0f} |"
        )
    lines = [
        f"## A folder of {args.videos} videos, {args.batch} at once ({args.size} model, {args.device}, {args.task})",
        "",
        f"Whole `malmm {args.task} FOLDER -o OUT --overwrite` commands over {args.videos} one-minute 640x360 clips "
        f"with the task's default frames and bank, `--video-batch 1` against `--video-batch {args.batch}`, medians "
        f"of {args.repeats}, interleaved; features cached (warmed once) or not (--no-cache). Results of both: "
        f"{same}.",
        "",
        f"| features | one at a time s | {args.batch} at once s | videos/s alone | videos/s batched | speed-up "
        f"| peak MiB alone | peak MiB batched |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]
    update_section(f"many-videos-{args.size}-{args.device.split(':')[0]}", "\n".join(lines))


if __name__ == "__main__":
    main()
