"""An hour of live stream through `malmm watch`: memory at 10 and 60 minutes, lag, speed.

    python benchmarks/watch_hour.py [--workdir DIR] [--speed 20] [--minutes 60] [--size 160x120]

A synthetic MPEG-TS stream (moving pattern plus noise, 10 frames/s) is made once in the work
folder and fed to `malmm watch -` on standard input at `--speed` times real time, paced by bytes,
as a sender would. The command reads 1 frame/s and captions every 10 s with a tiny random-weight
model (what grows with the stream, not the model's weights, is measured). Each event's lag comes
from the event; the process's resident memory (VmRSS) and its peak so far (VmHWM) are read from
/proc when the events at 10 and at 60 minutes of stream arrive.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import update_section


def make_stream(path: Path, minutes: int, size: tuple[int, int], fps: int = 10) -> Path:
    """`minutes` of MPEG-TS (MPEG-2 video): a bar moving across noise, so frames differ."""
    import av

    from tests.live_media import write_frames

    if path.exists():
        return path
    print(f"making {path.name} ...", flush=True)
    partial = path.with_suffix(".partial.ts")
    generator = np.random.default_rng(0)
    width, height = size

    def pictures() -> Iterator[np.ndarray]:
        for index in range(minutes * 60 * fps):
            picture = generator.integers(0, 40, (height, width, 3), dtype=np.uint8)
            column = (index * 3) % width
            picture[:, column : column + 8] = (200, 80 + index % 100, 40)
            yield picture

    write_frames(av.open(str(partial), "w", format="mpegts"), pictures(), fps)
    partial.rename(path)
    return path


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def feed(process: subprocess.Popen, data: bytes, seconds: float, speed: float) -> None:
    """Write `data` (a stream of `seconds`) to the child's stdin at `speed` x real time."""
    chunk = 4096  # about half a second of this stream: a sender's pace, not bursts
    rate = len(data) / seconds * speed  # bytes per wall second
    started = time.monotonic()
    try:
        for offset in range(0, len(data), chunk):
            process.stdin.write(data[offset : offset + chunk])
            process.stdin.flush()
            time.sleep(max(0.0, started + (offset + chunk) / rate - time.monotonic()))
        process.stdin.close()
    except BrokenPipeError:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/malmm-bench"))
    parser.add_argument("--speed", type=float, default=20.0, help="times real time the stream is sent at")
    parser.add_argument("--minutes", type=int, default=60)
    parser.add_argument("--size", default="160x120")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    from tests.tiny_models import build_tiny_model

    size = tuple(int(v) for v in args.size.split("x"))
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.workdir / "tiny-model"
    if not (model / "config.json").exists():
        build_tiny_model(model)
    stream = make_stream(args.workdir / f"stream-{args.minutes}min-{args.size}.ts", args.minutes, size)
    command = [str(Path(sys.executable).parent / "malmm"), "watch", "-", "--model", str(model), "--device", "cpu",
               "--num-beams", "1", "--max-new-tokens", "8", "--fps", "1", "--every", "10s", "--format", "jsonl",
               "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    started = time.monotonic()
    feeder = threading.Thread(target=feed, args=(process, stream.read_bytes(), args.minutes * 60, args.speed))
    feeder.start()
    events, at = [], {}
    for line in process.stdout:
        event = json.loads(line)
        events.append(event)
        for minutes in (10, args.minutes):
            if minutes not in at and event["end"] >= minutes * 60 - 10:
                at[minutes] = memory_kib(process.pid)
    process.wait()
    feeder.join()
    wall = time.monotonic() - started
    if process.returncode != 0 or len(at) < 2:
        sys.exit(f"malmm watch exited with {process.returncode} after {len(events)} events: see its stderr above")
    lags = sorted(event["lag"] for event in events)
    read, dropped = sum(e["frames"] for e in events), sum(e["dropped"] for e in events)
    stream_seconds = events[-1]["end"] if events else 0.0
    ratio = at[args.minutes]["VmHWM"] / at[10]["VmHWM"]
    rows = [
        ("stream read", f"{stream_seconds / 60:.1f} min in {wall:.0f} s wall ({stream_seconds / wall:.1f}x real time; "
                        f"sent at {args.speed:g}x)"),
        ("events", f"{len(events)} (one per 10 s of stream)"),
        ("frames read / dropped", f"{read} / {dropped} ({read / wall:.1f} frames/s read; 1 frame/s of stream sampled)"),
        ("peak RSS at 10 min", f"{at[10]['VmHWM'] / 1024:.0f} MiB (resident now {at[10]['VmRSS'] / 1024:.0f} MiB)"),
        (f"peak RSS at {args.minutes} min",
         f"{at[args.minutes]['VmHWM'] / 1024:.0f} MiB (resident now {at[args.minutes]['VmRSS'] / 1024:.0f} MiB)"),
        (f"peak {args.minutes} min / 10 min", f"{ratio:.3f} (goal <= 1.05)"),
        ("lag p50 / p90 / p99 / max", " / ".join(f"{lags[min(len(lags) - 1, int(q * len(lags)))]:.2f} s"
                                                   for q in (0.5, 0.9, 0.99)) + f" / {lags[-1]:.2f} s"),
        ("lag mean", f"{statistics.fmean(lags):.2f} s of stream (the source's lead when the event was made; "
                     f"{statistics.fmean(lags) / args.speed:.3f} s of wall time at {args.speed:g}x)"),
        ("exit status", str(process.returncode)),
    ]  # fmt: skip
    table = "| measure | value |\n|---|---|\n" + "\n".join(f"| {name} | {value} |" for name, value in rows)
    print(table)
    body = (
        "## An hour of live stream (`malmm watch`)\n\n"
        f"`benchmarks/watch_hour.py`: {args.minutes} minutes of synthetic MPEG-TS ({args.size}, 10 frames/s) sent "
        f"to `malmm watch -` on stdin at {args.speed:g}x real time; `--fps 1 --every 10s`, tiny random-weight "
        "model (what grows with the stream is measured, not the model). Memory from /proc when the events at 10 "
        "and at the last minute arrive; lag from the events.\n\n" + table
    )
    if not args.no_doc:
        update_section("watch-hour", body)


if __name__ == "__main__":
    main()
