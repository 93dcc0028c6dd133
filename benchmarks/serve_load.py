"""`malmm serve` under load: requests/s and latency by concurrent clients, a second request on a
video against the first, and the server's memory after many requests.

    python benchmarks/serve_load.py --size tiny --write
    python benchmarks/serve_load.py --size mid --requests 32 --memory-at 50,200 --write
    python benchmarks/serve_load.py --quick --json OUT.json        # a smoke run, a few seconds

The real command, `malmm serve --device cpu` on a free loopback port, is started as a child
process on a random-weight model (built once in the work folder, as the other benchmarks build
theirs) with its feature cache in a fresh temporary folder (MALMM_CACHE_DIR), so it starts cold.
The clips are synthetic H.264 clips, made once. Clients are threads, each with its own request in
flight (httpx), asking questions about the clips in turn; measured from the clients:

1. first vs second: for each clip, one question (decoded, encoded, features cached), then another
   question about the same clip (features read back), one client;
2. load: `--requests` questions at each of `--clients` (1, 4, 16) concurrent clients: requests/s,
   median and 95th-percentile latency. The features are cached by then (phase 1), so this is the
   Q-Former, the LLM and the HTTP path; `--no-cache` serves without the cache, every request decoded;
3. memory: the server's resident set (VmRSS of its process) once it has answered each of
   `--memory-at` requests in all (phases 1 and 2 count; 4 clients send the rest). Goal: the last
   over the first at most 1.05.

The server gets OMP_NUM_THREADS=--threads (1 by default, as eval_throughput.py: on a shared machine
idle threads spinning for work count against the neighbours). `--json OUT` writes every figure;
`--write` replaces this benchmark's block in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import command_line, machine, median, model_folder, synthetic_clip, update_section
from models.presets import QUESTION

QUESTIONS = ["what is moving?", "what colour is the room?", "is anyone there?", "where is this?", "what happens next?"]
MEMORY_CLIENTS = 4  # clients that send the requests past the load phase, up to the last of --memory-at


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def vm_rss_mib(pid: int) -> float:
    """The resident set of a process now, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile: the smallest value with at least `share` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


@dataclass
class Server:
    """A running `malmm serve`, and what it has answered so far (counted by the clients)."""

    process: subprocess.Popen
    url: str
    frames: int | None
    memory_at: list[int]
    answered: int = 0
    rss_mib: dict[int, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ask(self, client, clip: Path, question: str) -> float:
        """One question about a clip; its latency in seconds. A refusal stops the benchmark."""
        content = [{"type": "video_url", "video_url": {"url": str(clip)}}, {"type": "text", "text": question}]
        body: dict[str, object] = {"model": "malmm", "messages": [{"role": "user", "content": content}]}
        if self.frames:
            body["frames"] = self.frames
        started = time.perf_counter()
        response = client.post(f"{self.url}/v1/chat/completions", json=body, timeout=3600)
        seconds = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"the server answered {response.status_code}: {response.text[:500]}")
        with self.lock:
            self.answered += 1
            if self.answered in self.memory_at:  # read at once, while the other clients wait on the model
                self.rss_mib[self.answered] = vm_rss_mib(self.process.pid)
        return seconds


def start_server(args: argparse.Namespace, folder: Path, clips: Path, cache: Path) -> tuple[subprocess.Popen, str]:
    """`malmm serve` as a user starts it, on a free port; returns once /health answers."""
    import httpx

    port = free_port()
    console_script = Path(sys.executable).parent / "malmm"
    launcher = [str(console_script)] if console_script.exists() else [sys.executable, "-m", "malmm_cli"]
    command = [*launcher, "serve", "--model", str(folder), "--device", "cpu", "--port", str(port),
               "--allow-dir", str(clips), "--queue", str(max(args.clients) * 2), "--quiet"]  # fmt: skip
    if args.beams:
        command += ["--num-beams", str(args.beams)]
    if args.max_new_tokens:
        command += ["--max-new-tokens", str(args.max_new_tokens)]
    if args.no_cache:
        command.append("--no-cache")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MALMM_CACHE_DIR": str(cache), "NO_COLOR": "1"}
    env.pop("MALMM_API_KEY", None)
    log = cache.parent / "server.log"
    with log.open("w") as output:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        if process.poll() is not None:
            raise SystemExit(f"malmm serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("malmm serve did not answer /health within 10 minutes")
        time.sleep(0.2)


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def load(server: Server, jobs: list[tuple[Path, str]], clients: int) -> tuple[float, list[float]]:
    """Send the jobs from `clients` threads, each with one request in flight: wall seconds, latencies."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    with httpx.Client(limits=limits) as client, ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        latencies = list(pool.map(lambda job: server.ask(client, *job), jobs))
        return time.perf_counter() - started, latencies


def jobs_for(clips: list[Path], count: int, offset: int = 0) -> list[tuple[Path, str]]:
    """`count` questions going round the clips, a different question each time a clip comes back."""
    return [(clips[i % len(clips)], QUESTIONS[(i // len(clips) + offset) % len(QUESTIONS)])
            for i in range(offset, offset + count)]  # fmt: skip


def measure(args: argparse.Namespace) -> dict:
    import httpx

    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = args.model or model_folder(args.workdir, args.size)
    clip_dir = args.workdir / "serve-clips"
    clips = [synthetic_clip(clip_dir / f"{args.seconds:g}s-{args.width}x{args.height}-{number}.mp4", args.seconds,
                            (args.width, args.height), seed=number) for number in range(args.clips)]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="malmm-serve-load-") as temporary:
        cache = Path(temporary) / "feature-cache"
        cache.mkdir()
        process, url = start_server(args, folder, clip_dir, cache)
        server = Server(process, url, args.frames, sorted(args.memory_at))
        try:
            loaded = vm_rss_mib(process.pid)
            print(f"server up (pid {process.pid}), {loaded:.0f} MiB resident", flush=True)
            first, second = [], []
            with httpx.Client() as client:
                for number, clip in enumerate(clips):
                    first.append(server.ask(client, clip, QUESTIONS[number % len(QUESTIONS)]))
                    second.append(server.ask(client, clip, QUESTIONS[(number + 1) % len(QUESTIONS)]))
                    print(f"clip {number}: first {first[-1]:.2f} s, second {second[-1]:.2f} s", flush=True)
            levels = []
            for clients in args.clients:
                wall, latencies = load(server, jobs_for(clips, max(args.requests, clients), offset=2), clients)
                level = {
                    "clients": clients,
                    "requests": len(latencies),
                    "seconds": round(wall, 3),
                    "requests_per_s": round(len(latencies) / wall, 3),
                    "p50_s": round(percentile(latencies, 0.5), 3),
                    "p95_s": round(percentile(latencies, 0.95), 3),
                }
                levels.append(level)
                print(f"{clients:>3} clients: {level['requests']} requests in {wall:.1f} s, "
                      f"{level['requests_per_s']:.2f}/s, p50 {level['p50_s']:.2f} s, p95 {level['p95_s']:.2f} s",
                      flush=True)  # fmt: skip
            last = max(server.memory_at)
            if server.answered < last:
                print(f"sending {last - server.answered} more requests for the memory figure ...", flush=True)
                load(server, jobs_for(clips, last - server.answered), MEMORY_CLIENTS)
        finally:
            stop_server(process)
    rss = {str(count): round(server.rss_mib[count], 1) for count in server.memory_at if count in server.rss_mib}
    counts = [count for count in server.memory_at if count in server.rss_mib]
    return {
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
        "command": command_line(),
        "size": "model folder" if args.model else args.size,
        "server": {
            "device": "cpu",
            "threads": args.threads,
            "num_beams": args.beams or QUESTION.generation.num_beams,
            "max_new_tokens": args.max_new_tokens or QUESTION.generation.max_new_tokens,
            "frames": args.frames or QUESTION.frames,
            "memory_bank_length": QUESTION.memory_bank_length,
            "feature_cache": not args.no_cache,
            "queue": max(args.clients) * 2,
        },
        "clips": {"count": len(clips), "seconds": args.seconds, "size": f"{args.width}x{args.height}"},
        "load_average": os.getloadavg()[1],
        "first_vs_second": {
            "first_s": round(median(first), 3),
            "second_s": round(median(second), 3),
            "speedup": round(median(first) / median(second), 2),
            "each_first_s": [round(value, 3) for value in first],
            "each_second_s": [round(value, 3) for value in second],
        },
        "levels": levels,
        "memory": {
            "loaded_mib": round(loaded, 1),
            "rss_mib_after": rss,
            "ratio": round(server.rss_mib[counts[-1]] / server.rss_mib[counts[0]], 3) if len(counts) > 1 else None,
        },
        "requests": server.answered,
    }


def table(result: dict) -> str:
    rows = ["| clients | requests | requests/s | p50 latency s | p95 latency s |", "| ---: " * 5 + "|"]
    rows += [f"| {level['clients']} | {level['requests']} | {level['requests_per_s']:.2f} | {level['p50_s']:.2f} | "
             f"{level['p95_s']:.2f} |" for level in result["levels"]]  # fmt: skip
    both = result["first_vs_second"]
    memory = result["memory"]
    after = ", ".join(f"{mib:.0f} MiB after {count}" for count, mib in memory["rss_mib_after"].items())
    ratio = f"**ratio {memory['ratio']:.3f}** (goal <= 1.05)" if memory["ratio"] is not None else ""
    return "\n".join([
        *rows,
        "",
        f"First question about a clip: {both['first_s']:.2f} s; a second question about it: {both['second_s']:.2f} s "
        f"(median of {len(both['each_first_s'])} clips): **{both['speedup']:.1f}x faster**.",
        "",
        f"Server resident memory: {memory['loaded_mib']:.0f} MiB loaded, {after} requests; {ratio}.",
    ])  # fmt: skip


def doc_section(result: dict) -> str:
    server, clips = result["server"], result["clips"]
    return "\n".join([
        f"### `malmm serve` under load ({result['size']} model, cpu)",
        "",
        f"`malmm serve --device cpu` as a child process, OMP_NUM_THREADS={server['threads']}; questions of "
        f"{server['frames']} frames (bank {server['memory_bank_length']}), {server['num_beams']} beams, at most "
        f"{server['max_new_tokens']} new tokens; feature cache "
        f"{'on (cold at start)' if server['feature_cache'] else 'off'}, --queue {server['queue']}; {clips['count']} "
        f"synthetic {clips['seconds']:g} s {clips['size']} H.264 clips, questions going round them. The machine is "
        f"shared with other engineers' work: load average about {result['load_average']:.1f} on its "
        f"{os.cpu_count()} cores at the end of the run, so treat differences under ~20% as noise.",
        "",
        table(result),
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "mid"])
    parser.add_argument("--model", type=Path, help="an existing model folder instead of --size's")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients, comma-separated (default 1,4,16)")
    parser.add_argument("--requests", type=int, default=48, help="requests at each number of clients")
    parser.add_argument("--memory-at", default="50,500", help="read the server's RSS after these many requests")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each clip")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--frames", type=int, help=f"frames each request reads (default: ask's, {QUESTION.frames})")
    parser.add_argument("--beams", type=int, help="the server's --num-beams (default: ask's)")
    parser.add_argument("--max-new-tokens", type=int, help="the server's --max-new-tokens (default: ask's)")
    parser.add_argument("--no-cache", action="store_true", help="serve without the feature cache")
    parser.add_argument("--threads", type=int, default=1, help="the server's OMP_NUM_THREADS")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/malmm-bench"))
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 clips, 1 and 4 clients, few requests")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--write", action="store_true", help="replace this benchmark's block in docs/benchmarks.md")
    args = parser.parse_args()
    if args.quick:
        args.clips, args.seconds, args.width, args.height = 2, 2.0, 64, 48
        args.clients, args.requests, args.memory_at = "1,4", 4, "5,16"
        args.frames, args.beams, args.max_new_tokens = args.frames or 4, args.beams or 1, args.max_new_tokens or 3
    args.clients = [int(value) for value in args.clients.split(",")]
    args.memory_at = [int(value) for value in args.memory_at.split(",")]
    if min(args.clients) < 1 or min(args.memory_at) < 1 or args.clips < 1:
        parser.error("--clients, --memory-at and --clips take numbers of 1 or more")

    result = measure(args)
    print()
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.write:
        update_section(f"serve-load-{result['size'].replace(' ', '-')}-cpu", doc_section(result))


if __name__ == "__main__":
    main()
