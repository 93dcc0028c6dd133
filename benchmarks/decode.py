"""Decoding benchmark: which way of pulling sparse frames out of a long video should VideoReader use?

    python benchmarks/decode.py [--workdir DIR] [--minutes 10] [--repeats 3] [--doc docs/benchmarks.md]

Makes (once, cached in the work folder) a long 1280x720 30 fps H.264 clip whose frames carry their
index as a barcode, over a drifting pattern with camera-like noise (x264 veryfast, crf 23, its
default keyframe interval of 250 frames), then times these strategies at 1 frame per second and at 64
frames spread evenly, each run in a fresh process so its peak RSS is its own:

    cv_read   read() every frame, keep the one on screen at each target (the last at or before it)
    cv_grab   grab() every frame, retrieve() only the kept ones
    cv_seek   set(CAP_PROP_POS_FRAMES) then read() for every target
    reader    malmm_cli.media.video.VideoReader: grab forward when near, checked seek when far (the default)
    parallel  malmm_cli.media.parallel.ParallelReader: the same frames, decoded by one process per core
    keyframe  malmm_cli.media.keyframes.KeyframeReader: the nearest keyframes only (--seek keyframe), approximate

Every strategy returns full-size RGB images, as VideoReader does. Runs shorter than --short (30 s)
are repeated and the median is kept (shared machines are noisy). The table and the machine are
written into the "Decoding" section of the doc, between markers, leaving the text around them alone.
Not part of the test suite: on 2 cores it takes about 25 minutes, plus 5 to make the clip the first time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's malmm_cli and tests.media, whatever is installed

from benchmarks.common import machine, update_section  # noqa: E402

SHORT_RUN = 30.0  # s: runs shorter than this are repeated (default of --short)
STRATEGIES = ("cv_read", "cv_grab", "cv_seek", "reader", "parallel", "keyframe")
MODES = ("1fps", "N64")
SLACK = 1e-3  # s, as in malmm_cli.media.video


# --- the clip ---------------------------------------------------------------------------------------


def make_clip(workdir: Path, minutes: float) -> Path:
    """The benchmark clip and its frame times (a .json beside it), made once."""
    from tests import media

    path = workdir / f"barcode_{minutes:g}min_720p30_h264.mp4"
    times_path = path.with_suffix(".times.json")
    if path.exists() and times_path.exists():
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"making {path} ({minutes:g} min of 720p; about {minutes * 0.5:.0f} min on 2 cores)...", flush=True)
    started = time.monotonic()
    partial = path.with_suffix(".partial.mp4")
    media.make_video(partial, seconds=minutes * 60, fps=30, size=(1280, 720), codec="h264", noise=10, crf=23)
    partial.rename(path)
    times_path.write_text(json.dumps(media.frame_times(path)))
    print(f"made in {time.monotonic() - started:.0f} s", flush=True)
    return path


def clip_facts(path: Path) -> dict:
    import av

    from tests import media

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        duration = float(stream.duration * stream.time_base)
        facts = {"frames": stream.frames, "duration": duration, "size_mb": path.stat().st_size / 1e6}
    keys = media.keyframe_times(path)
    gaps = [b - a for a, b in itertools.pairwise(keys)] or [duration]
    facts.update(keyframes=len(keys), max_gop=max(gaps), mbps=path.stat().st_size * 8 / duration / 1e6)
    return facts


# --- one run (in a child process) -------------------------------------------------------------------


def targets_for(mode: str, duration: float) -> list[float]:
    from malmm_cli.media.plans import sample_times

    return sample_times(duration, fps=1.0) if mode == "1fps" else sample_times(duration, frames=64)


def cv_read(path: Path, targets: list[float]) -> Iterator[tuple[float, float, object]]:
    import cv2

    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    pending = iter(targets)
    target = next(pending, None)
    shown: tuple[float, object] | None = None  # the frame read last, on screen until the next one's time
    while target is not None:
        ok, bgr = capture.read()
        time_s = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000 if ok else math.inf
        while shown is not None and target is not None and time_s > target + SLACK:
            yield target, shown[0], cv2.cvtColor(shown[1], cv2.COLOR_BGR2RGB)
            target = next(pending, None)
        if not ok:
            break
        shown = (time_s, bgr)
    capture.release()


def cv_grab(path: Path, targets: list[float]) -> Iterator[tuple[float, float, object]]:
    import cv2

    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    period = 1 / capture.get(cv2.CAP_PROP_FPS)
    pending = iter(targets)
    target = next(pending, None)
    kept: tuple[float, object] | None = None  # retrieved: a frame within a frame interval before the target
    while target is not None:
        ok = capture.grab()
        time_s = capture.get(cv2.CAP_PROP_POS_MSEC) / 1000 if ok else math.inf
        while kept is not None and target is not None and time_s > target + SLACK:
            yield target, kept[0], kept[1]
            target = next(pending, None)
        if not ok or target is None:
            break
        if time_s > target + SLACK - 1.25 * period:
            ok, bgr = capture.retrieve()
            if not ok:
                break
            kept = (time_s, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()


def cv_seek(path: Path, targets: list[float]) -> Iterator[tuple[float, float, object]]:
    import cv2

    capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    fps = capture.get(cv2.CAP_PROP_FPS)
    for target in targets:
        capture.set(cv2.CAP_PROP_POS_FRAMES, math.floor((target + SLACK) * fps))
        ok, bgr = capture.read()
        if ok:
            yield target, capture.get(cv2.CAP_PROP_POS_MSEC) / 1000, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    capture.release()


def reader(path: Path, targets: list[float]) -> Iterator[tuple[float, float, object]]:
    from malmm_cli.media.video import VideoReader

    with VideoReader(path) as video:
        for frame in video.frames(targets):
            yield frame.target, frame.time, frame.image


def parallel(path: Path, targets: list[float]) -> Iterator[tuple[float, float, object]]:
    from malmm_cli.media.parallel import ParallelReader

    with ParallelReader(path, workers=os.cpu_count() or 2) as video:
        for frame in video.frames(targets):
            yield frame.target, frame.time, frame.image


def keyframe(path: Path, targets: list[float]) -> Iterator[tuple[float, float, object]]:
    from malmm_cli.media.keyframes import KeyframeReader

    with KeyframeReader(path) as video:
        for frame in video.frames(targets):
            yield frame.target, frame.time, frame.image


def peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from
    the parent through fork and exec, so a child of a big parent would report the parent's peak."""
    status = Path("/proc/self/status")
    if status.exists():
        found = re.search(r"^VmHWM:\s*(\d+) kB", status.read_text(), re.MULTILINE)
        if found:
            return int(found.group(1)) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(strategy: str, mode: str, path: Path) -> None:
    """One timed run; prints one JSON line. Opening the file is inside the timed region."""
    import cv2  # noqa: F401  (every strategy pays the same imports, outside the timed region)
    import numpy  # noqa: F401

    import malmm_cli.media.video  # noqa: F401
    from tests import media

    frame_times = json.loads(path.with_suffix(".times.json").read_text())
    targets = targets_for(mode, frame_times[-1] + 1 / 30)
    baseline = peak_rss_mib()
    decode = {"cv_read": cv_read, "cv_grab": cv_grab, "cv_seek": cv_seek, "reader": reader, "parallel": parallel,
              "keyframe": keyframe}[strategy]  # fmt: skip
    exact = delivered = 0
    errors: list[float] = []  # |frame time - target|: 0 to one frame when exact, up to half a GOP for keyframes
    checking = 0.0  # s spent reading barcodes, taken out of the wall time
    cpu_start, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for target, time_s, image in decode(path, targets):
        tick = time.perf_counter()
        delivered += 1
        errors.append(abs(time_s - target))
        exact += media.read_barcode(image) == media.expected_index(frame_times, target)
        checking += time.perf_counter() - tick
    wall = time.perf_counter() - started - checking
    cpu_end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = cpu_end.ru_utime + cpu_end.ru_stime - cpu_start.ru_utime - cpu_start.ru_stime
    result = {"requested": len(targets), "delivered": delivered, "exact": exact, "wall": wall, "cpu": cpu,
              "max_error": max(errors, default=0.0)}  # fmt: skip
    print(json.dumps({**result, "peak_rss_mib": peak_rss_mib(), "baseline_rss_mib": baseline}))


# --- the parent -------------------------------------------------------------------------------------


def run_once(strategy: str, mode: str, path: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, __file__, "--child", strategy, mode, str(path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{strategy} {mode} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1])


def measure(strategy: str, mode: str, path: Path, repeats: int, short: float) -> dict:
    runs = [run_once(strategy, mode, path)]
    while runs[0]["wall"] < short and len(runs) < repeats:
        runs.append(run_once(strategy, mode, path))
    median = sorted(runs, key=lambda run: run["wall"])[len(runs) // 2]
    return {**median, "walls": [run["wall"] for run in runs]}


def table(results: dict[tuple[str, str], dict]) -> str:
    rows = [
        "| mode | strategy | requested | delivered | wall s | runs (s) | frames/s | exact % | max error s | CPU % "
        "| peak RSS MiB (after imports) |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for (mode, strategy), r in results.items():
        runs = "/".join(f"{wall:.1f}" for wall in r["walls"]) if len(r["walls"]) > 1 else "1 run"
        rows.append(
            f"| {mode} | {strategy} | {r['requested']} | {r['delivered']} | {r['wall']:.2f} | {runs} "
            f"| {r['delivered'] / r['wall']:.1f} | {100 * r['exact'] / max(1, r['delivered']):.1f} "
            f"| {r.get('max_error', float('nan')):.3f} | {100 * r['cpu'] / r['wall']:.0f} "
            f"| {r['peak_rss_mib']:.0f} ({r['baseline_rss_mib']:.0f}) |"
        )
    return "\n".join(rows)


def report_body(facts: dict, results: dict, repeats: int, short: float) -> str:
    import av
    import cv2

    return "\n".join(
        [
            f"- Clip: {facts['duration'] / 60:.0f} min, 1280x720, 30 fps, {facts['frames']} frames, H.264 "
            f"(x264 veryfast, crf 23, default keyframe interval: {facts['keyframes']} keyframes, longest GOP "
            f"{facts['max_gop']:.1f} s), {facts['mbps']:.2f} Mbit/s, {facts['size_mb']:.0f} MB, MP4 faststart; "
            "frame index barcode over a drifting pattern with per-frame noise.",
            f"- OpenCV {cv2.__version__}, PyAV {av.__version__}. Each cell is a fresh process; wall time includes "
            f"opening the file, excludes imports. Runs under {short:.0f} s were repeated {repeats} times and the "
            "median is shown; the machine is shared, so treat differences under ~15 % as ties. Output: full-size "
            "RGB uint8, as VideoReader returns. Exact: barcode = the frame on screen at the target; max error: "
            "largest |frame time - target|. Peak RSS is the child's VmHWM (getrusage's ru_maxrss inherits the "
            "parent's peak through fork and exec).",
            "",
            table(results),
        ]
    )


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], Path(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/malmm-decode-bench"), help="clip cache")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the clip")
    parser.add_argument("--repeats", type=int, default=3, help="runs of short cells (median kept)")
    parser.add_argument("--short", type=float, default=SHORT_RUN, help="cells faster than this (s) are repeated")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md", help="doc to update")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    args = parser.parse_args()
    path = make_clip(args.workdir, args.minutes)
    facts = clip_facts(path)
    print(f"{machine()}; clip {path} ({facts['mbps']:.2f} Mbit/s)", flush=True)
    results: dict[tuple[str, str], dict] = {}
    for mode in args.modes:
        for strategy in args.strategies:
            results[(mode, strategy)] = result = measure(strategy, mode, path, args.repeats, args.short)
            walls = "/".join(f"{wall:.1f}" for wall in result["walls"])
            print(
                f"{mode:5} {strategy:8} {result['wall']:7.2f} s ({walls})  {result['delivered']} frames, "
                f"{100 * result['exact'] / max(1, result['delivered']):.1f} % exact, "
                f"{result['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
    print()
    print(table(results))
    update_section("decode-benchmark", report_body(facts, results, args.repeats, args.short), args.doc)
    print(f"\nupdated {args.doc}")


if __name__ == "__main__":
    main()
