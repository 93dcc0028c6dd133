"""What every benchmark script shares: the machine it ran on, the doc it writes, child processes.

Each script measures whole processes where memory matters (a fresh process gives a clean peak
RSS), prints its table, and replaces its own section of docs/benchmarks.md, found by markers, so
re-running one benchmark leaves the others' figures alone.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"
DOC_TITLE = "# Benchmarks\n\nFigures measured by the scripts in `benchmarks/`; each section says where, when and how.\n"


def machine() -> str:
    """One line: CPU model and cores, memory, GPU if any."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    cpu = model.group(1).strip() if model else platform.processor() or platform.machine()
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    total = re.search(r"^MemTotal:\s*(\d+) kB", meminfo, re.MULTILINE)
    memory = f", {int(total.group(1)) / 1024**2:.0f} GiB RAM" if total else ""
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{memory}{gpu or ', no GPU'}; Python {platform.python_version()}"


def command_line() -> str:
    """How this script was run, as a person would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return shlex.join(["python", str(shown), *sys.argv[1:]])


def update_section(name: str, body: str, doc: Path = DOC, stamp: bool = True) -> None:
    """Replace this benchmark's section of the doc (between its markers), or append it.

    stamp: add today's date, this machine and this command (False when `body` reports figures
    measured elsewhere and says so itself).
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    footer = f"\n_Measured {datetime.date.today().isoformat()} on {machine()}._\n_Command: `{command_line()}`_\n"
    block = f"{start}\n{body.strip()}\n{footer if stamp else ''}{end}"
    text = doc.read_text() if doc.exists() else DOC_TITLE
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)


@dataclass(frozen=True)
class ChildRun:
    seconds: float
    peak_rss_mib: float  # the child's own largest resident set (VmHWM)
    returncode: int
    stdout: str
    stderr: str


# Runs a Python program and, at exit, prints its own peak RSS (VmHWM) on stderr. The kernel's
# ru_maxrss is no use here: across fork and exec a child inherits its parent's peak.
_PEAK_MARK = "@@malmm-peak-kib "
_REPORT_PEAK = (
    "import atexit, runpy, sys\n"
    "def _peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    f"            sys.stderr.write('\\n{_PEAK_MARK}' + line.split()[1] + '\\n')\n"
    "atexit.register(_peak)\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)


def run_child(
    argv: list[str], env: dict[str, str] | None = None, timeout: float = 3600, limit_bytes: int | None = None
) -> ChildRun:
    """Run a Python program (a script or console command path, then its arguments) to completion
    in a fresh interpreter and return its time, own peak RSS and output. With `limit_bytes`, the
    child's address space is capped, so an allocation past it fails instead of swamping the machine."""
    command = [sys.executable, "-c", _REPORT_PEAK, *argv] if Path("/proc/self/status").exists() else argv

    def cap() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=timeout, check=False,
            preexec_fn=cap if limit_bytes else None,
        )  # fmt: skip
        stdout, stderr, returncode = done.stdout, done.stderr, done.returncode
    except subprocess.TimeoutExpired as expired:
        stdout, stderr, returncode = expired.stdout or "", expired.stderr or "", -9
    seconds = time.perf_counter() - started
    peak = 0.0
    kept = []
    for line in stderr.splitlines():
        if line.startswith(_PEAK_MARK):
            peak = int(line[len(_PEAK_MARK) :]) / 1024
        else:
            kept.append(line)
    return ChildRun(seconds, peak, returncode, stdout, "\n".join(kept))


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def mid_config():
    """A mid-size MA-LMM for CPU benchmarks: ViT-B/14 at 224 px (257 tokens), InstructBLIP's full
    Q-Former, a 8-layer 1024-wide LLaMA. About 0.4B parameters."""
    from transformers import InstructBlipConfig, InstructBlipVisionConfig, LlamaConfig

    from models.architectures import architecture

    full = architecture("vicuna-7b")
    vision = InstructBlipVisionConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        image_size=224, patch_size=14, layer_norm_eps=1e-6, qkv_bias=True,
    )  # fmt: skip
    qformer = full.qformer_config
    qformer.encoder_hidden_size = 768
    text = LlamaConfig(
        vocab_size=32002, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
        num_key_value_heads=16, bos_token_id=2, eos_token_id=2, pad_token_id=3,
    )  # fmt: skip
    return InstructBlipConfig(
        vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
        num_query_tokens=32, image_token_index=32001, max_num_frames=120,
    )  # fmt: skip


def small_config():
    """The tiny test model reading real-size frames: 224 px in patches of 14, 257 tokens a frame."""
    from tests.tiny_models import tiny_config

    config = tiny_config()
    config.vision_config.image_size, config.vision_config.patch_size = 224, 14
    return config


def model_folder(workdir: Path, size: str) -> Path:
    """A random-weight model folder: tiny, small, mid or full (instructblip-vicuna-7b shapes)."""
    from models.architectures import architecture
    from tests.tiny_models import build_model_folder, tiny_config

    folder = workdir / f"model-{size}"
    if not (folder / "config.json").exists():
        config = {
            "tiny": tiny_config,
            "small": small_config,
            "mid": mid_config,
            "full": lambda: architecture("vicuna-7b"),
        }[size]()
        print(f"building a random {size} model in {folder} ...", flush=True)
        partial = workdir / f".model-{size}.partial"
        import torch

        build_model_folder(partial, config, dtype=torch.float16 if size == "full" else torch.float32)
        partial.rename(folder)
    return folder


def synthetic_clip(path: Path, seconds: float, size: tuple[int, int], seed: int = 0) -> Path:
    """A synthetic 30 fps H.264 clip (moving pictures, some noise), made once: kept where it is."""
    from tests.media import make_video

    if not path.exists():
        print(f"making {path.name} ...", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.stem}.partial{path.suffix}")
        make_video(partial, seconds=seconds, fps=30, size=size, keyint=250, noise=4, seed=seed)
        partial.rename(path)
    return path


def write_colour_clip(path: Path, colours: list[tuple[int, int, int]], fps: int, size: int, draw: Any) -> None:
    """An H.264 clip of flat frames, one per colour at `fps`, `size` pixels square, each frame's
    shade jittered by up to 15 (drawn from `draw`, a numpy Generator) so that no two encode alike.
    (PyAV and numpy are imported here: not every benchmark's machine has PyAV.)"""
    from fractions import Fraction

    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps), options={"preset": "veryfast"})
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for index, rgb in enumerate(colours):
            shade = np.clip(np.array(rgb) + draw.integers(-15, 16, size=3), 0, 255)
            picture = np.broadcast_to(shade, (size, size, 3)).astype(np.uint8).copy()
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
