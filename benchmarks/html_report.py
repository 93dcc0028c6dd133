"""The HTML report of a 1-hour video at `--segment 1m`: its size, and how fast it opens in Chromium.

    python benchmarks/html_report.py [--workdir DIR] [--size 320x180 --size 1280x720] [--opens 5]

A synthetic 1-hour H.264 video (drifting pattern, per-frame noise, barcode; 2 fps, so it is quick
to make) is captioned by `malmm caption --fps 0.2 --segment 1m --format html` with a tiny
random-weight model in a fresh process. The report is then opened `--opens` times in headless
Chromium (tests/browser.py, a new tab each time): the time from navigating to the page to its
load event, with every thumbnail decoded. Goals: under 5 MB, opens in under a second.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median, run_child, update_section

DECODED = "Promise.all(Array.from(document.images).map(i => i.decode())).then(() => document.images.length)"


def prepare(workdir: Path, size: tuple[int, int]) -> tuple[Path, Path]:
    from tests.media import make_video
    from tests.tiny_models import build_tiny_model

    workdir.mkdir(parents=True, exist_ok=True)
    model = workdir / "tiny-model"
    if not (model / "config.json").exists():
        build_tiny_model(model)
    video = workdir / f"synthetic-60min-{size[0]}x{size[1]}.mp4"
    if not video.exists():
        print(f"making {video.name} ...", flush=True)
        partial = video.with_suffix(".partial.mp4")
        make_video(partial, seconds=3600, fps=2, size=size, keyint=20, noise=4)
        partial.rename(video)
    return model, video


def measure(args: argparse.Namespace, size: tuple[int, int]) -> str:
    """One video size: make the report, open it, return its table row."""
    from tests.browser import Browser, find_chromium

    model, video = prepare(args.workdir, size)
    out = args.workdir / f"reports-{size[0]}x{size[1]}"
    malmm = str(Path(sys.executable).parent / "malmm")
    command = [malmm, "caption", str(video), "--fps", "0.2", "--segment", "1m", "--model", str(model), "--device",
               "cpu", "--num-beams", "1", "--max-new-tokens", "8", "--no-cache", "--format", "html", "--output-dir",
               str(out), "--overwrite", "--quiet"]  # fmt: skip
    run = run_child(command, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if run.returncode != 0:
        raise SystemExit(f"malmm failed:\n{run.stderr}")
    report = out / f"{video.stem}.caption.html"
    size_mb = report.stat().st_size / 1e6
    executable = find_chromium()
    if executable is None:
        raise SystemExit("no Chromium: apt-get install chromium")
    opens, images = [], 0
    with Browser(executable) as browser:
        for _ in range(args.opens):
            started = time.monotonic()
            page = browser.open(report)
            images = page.evaluate(DECODED)
            opens.append((page.load_seconds, time.monotonic() - started))
            bands = page.evaluate("document.querySelectorAll('ol.bands > li.band').length")
    load, decoded = median([o[0] for o in opens]), median([o[1] for o in opens])
    print(f"{size[0]}x{size[1]}: report {size_mb:.2f} MB, {bands} bands, {images} thumbnails; load event "
          f"{load * 1000:.0f} ms, every thumbnail decoded {decoded * 1000:.0f} ms (median of {args.opens}); "
          f"malmm {run.seconds:.0f} s")  # fmt: skip
    return (f"| {size[0]}x{size[1]} | {size_mb:.2f} MB | {bands} | {images} | {load * 1000:.0f} ms | "
            f"{decoded * 1000:.0f} ms | {run.seconds:.0f} s |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/malmm-bench-html"))
    parser.add_argument("--size", action="append", help="WxH; repeat (default 320x180 and 1280x720)")
    parser.add_argument("--opens", type=int, default=5)
    args = parser.parse_args()
    rows = [measure(args, tuple(int(v) for v in size.split("x"))) for size in args.size or ["320x180", "1280x720"]]
    lines = [
        "## HTML report of a 1-hour video (`--segment 1m`)",
        "",
        "Synthetic 1-hour H.264 videos (2 fps, noise) at two sizes, tiny random-weight model, CPU:",
        "`malmm caption --fps 0.2 --segment 1m --format html` (720 frames; malmm: the whole command). Each report",
        f"was opened {args.opens} times in headless Chromium, a new tab each time, from `Page.navigate` to the load",
        "event, and to every thumbnail decoded (`img.decode()`); medians. Goals: under 5 MB, opens in under 1 s.",
        "",
        "| video | report size | bands | thumbnails | load event | every thumbnail decoded | malmm |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
        "",
        "Thumbnails are at most 192 pixels wide (JPEG quality 70), one per segment (8 over the video without),",
        "whatever the sampling rate, so the size grows with the number of segments, not with frames read.",
    ]
    update_section("html-report", "\n".join(lines))


if __name__ == "__main__":
    main()
