"""Flat memory: `malmm caption --fps 1` on a 1-minute and a 10-minute video, peak RSS compared.

    python benchmarks/memory_flat.py [--workdir DIR] [--repeats 3] [--size 640x360]

Synthetic H.264 videos (moving pattern plus noise, 30 fps) and a tiny random-weight model are
generated once in the work folder. Each run is a fresh `malmm` process; its peak RSS is read from
the kernel when it exits. The model is tiny on purpose: the measurement is about what grows with
the video (decoded frames, features, memory state), which a large model would only hide.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median, run_child, update_section


def prepare(workdir: Path, size: tuple[int, int]) -> tuple[Path, dict[int, Path]]:
    from tests.media import make_video
    from tests.tiny_models import build_tiny_model

    workdir.mkdir(parents=True, exist_ok=True)
    model = workdir / "tiny-model"
    if not (model / "config.json").exists():
        build_tiny_model(model)
    videos = {}
    for minutes in (1, 10):
        path = workdir / f"synthetic-{minutes}min-{size[0]}x{size[1]}.mp4"
        if not path.exists():
            print(f"making {path.name} ...", flush=True)
            partial = path.with_suffix(".partial.mp4")
            make_video(partial, seconds=60 * minutes, fps=30, size=size, keyint=250, noise=4)
            partial.rename(path)
        videos[minutes] = path
    return model, videos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/malmm-bench"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", default="640x360", help="video size WxH")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    model, videos = prepare(args.workdir, size)
    malmm = str(Path(sys.executable).parent / "malmm")
    env = {**os.environ, "MALMM_CACHE_DIR": str(args.workdir / "feature-cache")}
    rows = {}
    for minutes, video in videos.items():
        runs = []
        for _ in range(args.repeats):
            command = [malmm, "caption", str(video), "--fps", "1", "--model", str(model), "--device", "cpu"]
            command += ["--no-cache", "--num-beams", "1", "--max-new-tokens", "5", "--format", "json", "--quiet"]
            run = run_child(command, env=env)
            if run.returncode != 0:
                raise SystemExit(f"malmm failed on {video.name}:\n{run.stderr}")
            runs.append(run)
        frames = __import__("json").loads(runs[0].stdout)["frames"]
        rows[minutes] = (frames, median([r.seconds for r in runs]), median([r.peak_rss_mib for r in runs]),
                         min(r.peak_rss_mib for r in runs), max(r.peak_rss_mib for r in runs))  # fmt: skip
        print(f"{minutes:>2} min: {frames} frames, {rows[minutes][1]:.1f} s, peak RSS {rows[minutes][2]:.0f} MiB")
    ratio = rows[10][2] / rows[1][2]
    print(f"peak RSS ratio 10 min / 1 min: {ratio:.3f}")
    lines = [
        "## Flat memory over video length (`malmm caption --fps 1`)",
        "",
        f"Synthetic {size[0]}x{size[1]} 30 fps H.264 videos, tiny random-weight model, CPU, one fresh process per run,",
        f"median of {args.repeats} runs (min-max in brackets). Peak RSS is the whole process: Python, torch,",
        "transformers, OpenCV and PyAV included.",
        "",
        "| video | frames read | wall s | peak RSS MiB |",
        "| --- | ---: | ---: | ---: |",
    ]
    for minutes, (frames, seconds, rss, low, high) in rows.items():
        lines.append(f"| {minutes} min | {frames} | {seconds:.1f} | {rss:.0f} ({low:.0f}-{high:.0f}) |")
    lines += ["", f"**Peak RSS ratio, 10 min / 1 min: {ratio:.3f}** (10x the frames, same memory)."]
    update_section("memory-flat", "\n".join(lines))


if __name__ == "__main__":
    main()
