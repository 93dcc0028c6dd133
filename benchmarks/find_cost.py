"""What `malmm find` costs: time and peak memory with 1 and 10 queries, cold and warm feature
cache, on 10 minutes and an hour of video, against `malmm caption --segment` of the same windows.

    python benchmarks/find_cost.py [--size mid] [--fps 0.1] [--minutes 10 60] [--json OUT] [--quick]

Finding should cost one read of the video (decode and vision encoder, once whatever the number of
queries; none with a warm cache) plus one batched scoring per window and query, in memory that
does not grow with the video. Each run is a fresh `malmm` process; its wall time, CPU time (user +
system, from the kernel's accounting of the finished child) and own peak RSS (VmHWM) are recorded.
The runs of one length follow each other (find 1 query cold, then warm; 10 queries cold, then
warm; caption --segment cold), so every ratio compares runs made side by side on a shared machine.

Videos: synthetic H.264 (moving barcode and noise) at 2 frames/s and a small frame size, made
once in the work folder (an hour takes seconds to make); frames are resized to the model's input
anyway, so a small size only makes decoding cheap. Model: random weights (benchmarks/common.py:
`tiny`, `small` = tiny reading 224-px frames, `mid` = ViT-B and a 0.4B model, about 35 minutes of
CPU at 0.1 frame/s). `--quick` runs the tiny model on seconds of video, for the smoke test
(tests/test_find_cost.py); it never writes docs/benchmarks.md. `--render JSON` rewrites this
size's section of docs/benchmarks.md from a saved `--json`, stamped with that run's date, machine
and command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import command_line, machine, model_folder, run_child, update_section

QUERIES = [
    "a person opens a door",
    "a red car drives past",
    "someone is cooking in a kitchen",
    "a dog runs across a field",
    "a goal is scored",
    "a slide about the budget",
    "people shake hands",
    "it starts to rain",
    "a man writes on a whiteboard",
    "a crowd cheers",
]
VIDEO_FPS = 2  # frames per second of the synthetic videos: enough for any --fps <= 2 sampled
CONFIGS = [  # (name, queries, cache): the order the runs of one length are made in
    ("find 1 query", 1, "cold"),
    ("find 1 query", 1, "warm"),
    ("find 10 queries", 10, "cold"),
    ("find 10 queries", 10, "warm"),
    ("caption --segment", 1, "cold"),
]


@dataclass(frozen=True)
class Run:
    seconds: float  # the video's length
    config: str
    queries: int
    cache: str
    wall_s: float
    cpu_s: float
    peak_rss_mib: float
    frames: int
    windows: int
    answered: int = 1  # results the run printed for the video: one per query found (caption: 1)
    cached: int = 0  # complete feature-cache entries before the run: 0 cold, 1 warm


def make_clip(path: Path, seconds: float, size: tuple[int, int]) -> Path:
    from tests.media import make_video

    if not path.exists():
        print(f"making {path.name} ...", flush=True)
        partial = path.with_name(f".{path.stem}.partial{path.suffix}")
        make_video(partial, seconds=seconds, fps=VIDEO_FPS, size=size, keyint=4 * VIDEO_FPS, noise=4)
        partial.rename(path)
    return path


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds and peak RSS (MiB) of one fresh process, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = run_child(argv, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(argv)}\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done.seconds, cpu, done.peak_rss_mib, done.stdout


def run_length(
    video: Path, seconds: float, model: Path, fps: float, window: float, workdir: Path, query_file: Path
) -> list[Run]:  # fmt: skip
    malmm = str(Path(sys.executable).parent / "malmm")
    cache = workdir / "feature-cache"
    env = {**os.environ, "MALMM_CACHE_DIR": str(cache)}
    common = [str(video), "--model", str(model), "--device", "cpu", "--fps", f"{fps:g}", "-b", "10", "-f", "json", "-q"]
    runs = []
    for config, queries, state in CONFIGS:
        if state == "cold":
            shutil.rmtree(cache, ignore_errors=True)
        if config.startswith("caption"):
            argv = [
                malmm,
                "caption",
                *common,
                "--segment",
                f"{window:g}s",
                "--num-beams",
                "1",
                "--max-new-tokens",
                "16",
            ]
        elif queries == 1:
            argv = [malmm, "find", *common, QUERIES[0]]
        else:
            argv = [malmm, "find", *common, "--query-file", str(query_file)]
        cached = len(list(cache.glob("*/meta.json")))
        wall, cpu, peak, stdout = measure(argv, env)
        result = json.loads(stdout)
        results = result if isinstance(result, list) else [result]
        first = results[0]
        windows = len(first["curve"]) if "curve" in first else len(first.get("segments") or [])
        run = Run(seconds, config, queries, state, round(wall, 2), round(cpu, 2), round(peak, 1), first["frames"],
                  windows, len(results), cached)  # fmt: skip
        print(f"{seconds / 60:>5.1f} min  {config:18} {state:4}  wall {wall:7.1f} s  cpu {cpu:7.1f} s  "
              f"peak {peak:6.0f} MiB  {run.frames} frames, {windows} windows", flush=True)  # fmt: skip
        runs.append(run)
    shutil.rmtree(cache, ignore_errors=True)
    return runs


TIME_RATIOS = ("10q/1q cold", "10q/1q warm", "warm/cold 1q", "warm/cold 10q", "find/caption 1q cold", "read share 1q")


def ratios(runs: list[Run], short: float, long: float) -> dict[str, float]:
    """The comparisons the issue asks for, each between runs made side by side, in wall and in CPU
    time (on a shared machine the CPU time is the steadier of the two). read share: the part of a
    cold run that a warm cache saves (decoding, the vision encoder, writing the cache)."""
    at = {(r.seconds, r.config, r.cache): r for r in runs}
    out: dict[str, float] = {}
    for seconds in (short, long):
        tag = f"{seconds / 60:g}min"
        one, one_warm = at[seconds, "find 1 query", "cold"], at[seconds, "find 1 query", "warm"]
        ten, ten_warm = at[seconds, "find 10 queries", "cold"], at[seconds, "find 10 queries", "warm"]
        caption = at[seconds, "caption --segment", "cold"]
        for clock in ("wall", "cpu"):
            t = {r: getattr(r, f"{clock}_s") for r in (one, one_warm, ten, ten_warm, caption)}
            out[f"{tag} {clock} 10q/1q cold"] = t[ten] / t[one]
            out[f"{tag} {clock} 10q/1q warm"] = t[ten_warm] / t[one_warm]
            out[f"{tag} {clock} warm/cold 1q"] = t[one_warm] / t[one]
            out[f"{tag} {clock} warm/cold 10q"] = t[ten_warm] / t[ten]
            out[f"{tag} {clock} find/caption 1q cold"] = t[one] / t[caption]
            out[f"{tag} {clock} read share 1q"] = (t[one] - t[one_warm]) / t[one]
        out[f"{tag} peak find/caption 1q cold"] = one.peak_rss_mib / caption.peak_rss_mib
    for config, _, state in CONFIGS:
        key = f"peak {long / 60:g}min/{short / 60:g}min {config} {state}"
        out[key] = at[long, config, state].peak_rss_mib / at[short, config, state].peak_rss_mib
    return {key: round(value, 3) for key, value in out.items()}


def table(runs: list[Run], found: dict[str, float], short: float, long: float) -> str:
    lengths = [f"{s / 60:g}min" for s in (short, long)]
    lines = [
        "| video | command | cache | frames | windows | wall s | CPU s | peak RSS MiB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        lines.append(f"| {r.seconds / 60:g} min | {r.config} | {r.cache} | {r.frames} | {r.windows} | {r.wall_s:.1f} "
                     f"| {r.cpu_s:.1f} | {r.peak_rss_mib:.0f} |")  # fmt: skip
    header = " | ".join(f"{clock} {s / 60:g} min" for clock in ("CPU", "wall") for s in (short, long))
    lines += ["", f"| ratio | {header} |", "| --- | ---: | ---: | ---: | ---: |"]
    for name in TIME_RATIOS:
        values = [found[f"{tag} {clock} {name}"] for clock in ("cpu", "wall") for tag in lengths]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    peaks = ", ".join(f"{found[f'{tag} peak find/caption 1q cold']:.3f} at {tag}" for tag in lengths)
    lines += ["", f"Peak RSS, find / caption --segment (1 query, cold): {peaks}."]
    lines += ["", f"| peak RSS {long / 60:g} min / {short / 60:g} min (goal <= 1.05) | ratio |", "| --- | ---: |"]
    for config, _, state in CONFIGS:
        lines.append(
            f"| {config}, {state} | {found[f'peak {long / 60:g}min/{short / 60:g}min {config} {state}']:.3f} |"
        )
    return "\n".join(lines)


def document(report: dict, text: str) -> None:
    """This size's section of docs/benchmarks.md, stamped with the run's own date, machine and command."""
    short, long = report["lengths_s"]
    window = report["window_s"]
    body = (
        f"### `{report['model']}` model, {report['fps']:g} frame/s\n\n"
        f"Synthetic {report['video_size']} H.264 videos ({report['video_fps']} frames/s) of {short / 60:g} and "
        f"{long / 60:g} minutes, sampled at {report['fps']:g} frame/s (find's default window: 4 frames, {window:g} s; "
        f"`caption --segment {window:g}s` reads the same windows, greedy, 16 new tokens); memory bank 10; "
        f"{report['model']} random-weight model; OMP_NUM_THREADS={report.get('threads', '?')}. Each row is a fresh "
        "process, the rows of one length made one after the other (cold: an empty feature cache; warm: the one the "
        "cold run before it wrote). Peak RSS is the whole process's VmHWM; CPU s is user + system.\n\n"
        + text
        + f"\n\n_Measured {report['date']} on {report['machine']}._\n_Command: `{report['command']}`_\n"
    )
    update_section(f"find-cost-{report['model']}", body, stamp=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/malmm-bench"))
    parser.add_argument("--size", default="mid", choices=["tiny", "small", "mid"], help="random-weight model")
    parser.add_argument("--fps", type=float, default=0.1, help="frames sampled per second (find's window: 4 frames)")
    parser.add_argument("--minutes", type=float, nargs=2, default=[10, 60], metavar=("SHORT", "LONG"))
    parser.add_argument("--video-size", default="128x96", help="WxH of the synthetic videos")
    parser.add_argument("--json", type=Path, help="also write every run and ratio here")
    parser.add_argument("--quick", action="store_true", help="tiny model, 12 s and 72 s at 1 frame/s; no doc")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--render", type=Path, metavar="JSON", help="measure nothing: table and doc from a --json")
    args = parser.parse_args()
    if args.render:
        report = json.loads(args.render.read_text())
        runs = [Run(**r) for r in report["runs"]]
        report["ratios"] = ratios(runs, *report["lengths_s"])
        text = table(runs, report["ratios"], *report["lengths_s"])
        print(text)
        if not args.no_doc:
            document(report, text)
        return
    if args.quick:
        args.size, args.fps, args.minutes, args.video_size, args.no_doc = "tiny", 1.0, [0.2, 1.2], "64x48", True
    from malmm_cli.reading.find import default_window

    size = tuple(int(v) for v in args.video_size.split("x"))
    short, long = (round(m * 60, 3) for m in args.minutes)
    window = default_window(args.fps)
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = model_folder(args.workdir, args.size)
    query_file = args.workdir / "find-queries.txt"
    query_file.write_text("\n".join(QUERIES) + "\n")
    runs = []
    for seconds in (short, long):
        video = make_clip(args.workdir / f"find-{seconds:g}s-{args.video_size}.mp4", seconds, size)
        runs += run_length(video, seconds, model, args.fps, window, args.workdir, query_file)
    found = ratios(runs, short, long)
    text = table(runs, found, short, long)
    print(text)
    report = {
        "date": datetime.date.today().isoformat(), "machine": machine(), "command": command_line(),
        "threads": os.environ.get("OMP_NUM_THREADS", "unset"), "model": args.size, "fps": args.fps,
        "window_s": window, "video_size": args.video_size, "video_fps": VIDEO_FPS, "lengths_s": [short, long],
        "queries": QUERIES, "runs": [asdict(r) for r in runs], "ratios": found,
    }  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if not args.no_doc:
        document(report, text)


if __name__ == "__main__":
    main()
