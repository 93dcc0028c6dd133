"""`malmm doctor`: what this machine can run, and what to fix before it can.

Each check is a plain function returning Check rows, so it can be tested alone. A check marked
"fail" is something malmm needs (the command then exits with status 1); "warn" limits what it
can do (no 4-/8-bit quantization, a codec it cannot read); "info" is for the record.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

import numpy as np

GIB = 1024**3
# (codec as FFmpeg names it, container, PyAV encoder, needed by malmm?)
CODECS = [("H.264", "mp4", "libx264", True), ("HEVC", "mp4", "libx265", False),
          ("VP9", "webm", "libvpx-vp9", False), ("AV1", "mp4", "libsvtav1", False)]  # fmt: skip


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok, warn, fail, info
    detail: str


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def check_python() -> list[Check]:
    ok = sys.version_info >= (3, 10)
    return [Check("Python", "ok" if ok else "fail", f"{platform.python_version()} ({sys.executable})")]


def declared_floors() -> dict[str, str]:
    """The lowest versions malmm's installed metadata allows (pyproject.toml's `>=`), by package: read
    there rather than written here, so doctor cannot drift from the floors CI checks."""
    floors = {}
    for requirement in requires("malmm") or []:
        floor = re.match(r"^([A-Za-z0-9_.-]+)[^;]*?>=\s*([0-9][^,;)\s]*)", requirement)
        if floor and "extra ==" not in requirement:
            floors[floor[1].lower().replace("_", "-")] = floor[2]
    return floors


def check_packages() -> list[Check]:
    from packaging.version import Version  # transformers' own dependency

    rows = []
    floors = declared_floors()
    for package in ("torch", "transformers", "huggingface-hub"):
        found, minimum = _version(package), floors.get(package)
        if found is None:
            rows.append(Check(package, "fail", "not installed"))
            continue
        old = minimum is not None and Version(found) < Version(minimum)
        rows.append(Check(package, "fail" if old else "ok", found + (f" (malmm needs >= {minimum})" if old else "")))
    pyav = _version("av")
    missing = "not installed: files are probed by OpenCV alone (plainer reasons), no --seek keyframe"
    rows.append(Check("PyAV", "ok", pyav) if pyav else Check("PyAV", "warn", missing))
    return rows


def check_machine() -> list[Check]:
    """CPU (and whether it computes bfloat16 natively: bitsandbytes' fast 4-bit path needs it) and RAM."""
    import psutil
    import torch

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    name = model or platform.processor() or platform.machine()
    bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    extras = f"; {torch.backends.cpu.get_cpu_capability()}" + (", bfloat16 in hardware" if bf16 else "")
    memory = psutil.virtual_memory()
    return [
        Check("CPU", "info", f"{name}, {os.cpu_count()} cores{extras}"),
        Check("RAM", "info", f"{memory.available / GIB:.1f} GiB available of {memory.total / GIB:.1f} GiB"),
    ]


def check_devices() -> list[Check]:
    import torch

    if not torch.cuda.is_available():
        rows = [Check("CUDA", "info", "no CUDA GPU: malmm runs on the CPU (float32, much slower)")]
        if torch.backends.mps.is_available():
            rows.append(Check("MPS", "ok", "Apple GPU available (--device mps)"))
        return rows
    rows = [Check("CUDA", "ok", f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)")]
    for index in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(index)
        name = torch.cuda.get_device_name(index)
        rows.append(Check(f"cuda:{index}", "ok", f"{name}: {free / GIB:.1f} GiB free of {total / GIB:.1f} GiB"))
    return rows


def check_bitsandbytes() -> list[Check]:
    """Runs one 8-bit and one 4-bit layer on the best device: an installed package is not enough."""
    import torch

    from models.quantization import quiet_bitsandbytes

    quiet_bitsandbytes()  # its import-time notices

    found = _version("bitsandbytes")
    if found is None:
        return [Check("bitsandbytes", "warn", "not installed: --quantize 4bit/8bit unavailable")]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        import bitsandbytes as bnb

        layers = [
            bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False).to(device),
            bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4").to(device),
        ]
        sample = torch.randn(2, 64, device=device, dtype=torch.float16 if device == "cuda" else torch.float32)
        for layer in layers:
            if not torch.isfinite(layer(sample).float()).all():
                raise RuntimeError("non-finite output")
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return [Check("bitsandbytes", "warn", f"{found}, no working {device} backend ({reason}): no --quantize")]
    note = ""
    if device == "cpu":
        from models.quantization import cpu_4bit_packs_weights

        note = ", slower per token than unquantized there (measured: 1.3x 8-bit, 2.8x 4-bit)"
        if cpu_4bit_packs_weights():
            note += "; 4-bit uses the AVX512-BF16 kernel (layers not multiples of 32x64 stay full precision)"
    return [Check("bitsandbytes", "ok", f"{found}, 4-bit and 8-bit work on {device}{note}")]


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence C libraries (x265, SVT-AV1, FFmpeg) that print to file descriptor 2 directly."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _write_clip(path: Path, encoder: str, frames: int = 8, size: int = 64) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=10)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for index in range(frames):
            image = np.full((size, size, 3), (40 * index) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def check_video() -> list[Check]:
    """OpenCV's FFmpeg backend, and whether it decodes clips of each codec made on the spot."""
    import cv2

    ffmpeg = any("FFMPEG" in line and "YES" in line for line in cv2.getBuildInformation().splitlines())
    rows = [
        Check("OpenCV", "ok" if ffmpeg else "fail", f"{cv2.__version__}, FFmpeg backend {'yes' if ffmpeg else 'NO'}")
    ]
    with tempfile.TemporaryDirectory(prefix="malmm-doctor-") as folder:
        for codec, container, encoder, needed in CODECS:
            path = Path(folder) / f"{encoder}.{container}"
            try:
                with _quiet_stderr():
                    _write_clip(path, encoder)
            except Exception as error:
                rows.append(Check(f"decode {codec}", "info", f"could not make a test clip ({type(error).__name__})"))
                continue
            decoded = 0
            with _quiet_stderr():
                capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
                while capture.isOpened() and capture.grab() and capture.retrieve()[0]:
                    decoded += 1
                capture.release()
            status = "ok" if decoded else ("fail" if needed else "warn")
            detail = f"{decoded} of 8 test frames decoded" if decoded else "OpenCV cannot decode it"
            rows.append(Check(f"decode {codec}", status, detail))
    return rows


def check_cache() -> list[Check]:
    from malmm_cli.jobs.hub import cache_dir, cached_models

    models = cached_models()
    listed = ", ".join(f"{m.repo} ({m.size_bytes / GIB:.1f} GiB{'' if m.complete else ', incomplete'})" for m in models)
    return [
        Check("Hugging Face cache", "info", str(cache_dir())),
        Check("cached models", "info", listed or "none (malmm models download NAME)"),
    ]


def recommend_quantization() -> list[Check]:
    """The --quantize that `auto` picks here for the default model (from its shapes, no download):
    the most precise setting whose memory plan fits the free GPU memory, or the available RAM."""
    import torch

    from models.architectures import architecture
    from models.memory_plan import choose_quantization, count_parameters, plan_memory

    config = architecture("vicuna-7b")
    counts = count_parameters(config)
    if torch.cuda.is_available():
        free = max(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
        dtype, where = torch.float16, "GPU memory"
    else:
        import psutil

        free, dtype, where = psutil.virtual_memory().available, torch.float32, "RAM"

    def estimate(mode: str, vision: bool = False):
        return plan_memory(config, quantize=mode, quantize_vision=vision, dtype=dtype, counts=counts)

    plans = {mode: estimate(mode) for mode in ("none", "8bit", "4bit")}
    choice = choose_quantization(plans, free)
    if choice is None:
        vision = estimate("4bit", True)
        if vision.total <= free:
            return [Check("recommended --quantize", "ok", f"4bit --quantize-vision 8bit ({vision.describe()})")]
        detail = f"the default model needs {vision.describe()} at least; {free / GIB:.1f} GiB of {where} is free"
        return [Check("recommended --quantize", "warn", detail)]
    precision = "float16" if dtype == torch.float16 else "float32"
    detail = f"{choice} for vicuna-7b in {precision} ({plans[choice].describe()}; {free / GIB:.1f} GiB {where} free)"
    return [Check("recommended --quantize", "ok", detail)]


CHECKS: list[Callable[[], list[Check]]] = [
    check_python,
    check_packages,
    check_machine,
    check_devices,
    check_bitsandbytes,
    check_video,
    check_cache,
    recommend_quantization,
]


def run_checks(checks: list[Callable[[], list[Check]]] | None = None) -> list[Check]:
    """Every check; a check that crashes is reported as a failure of its own, never a traceback."""
    rows: list[Check] = []
    for check in checks or CHECKS:
        try:
            rows += check()
        except Exception as error:
            rows.append(Check(check.__name__.removeprefix("check_"), "fail", f"{type(error).__name__}: {error}"))
    return rows
