"""The prepared GPU check: what this project must measure on a GPU, unattended, in one run, one file.

    python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json              # on the GPU: docs/benchmarks.md
    python3 benchmarks/gpu_check.py --only consumer,memory_8bit --budget 150   # what a first run left over
    python3 benchmarks/gpu_check.py --render gpu_check.json [gpu_check-2.json]  # into docs/benchmarks.md
    python3 benchmarks/gpu_check.py --cpu --out /tmp/check.json            # tiny shapes on the CPU (tests)

docs/benchmarks.md ("GPU check") gives the exact device call: what is carried, the timeout, and the
follow-up command. Sections run in order of value, each only if its time allowance (ALLOWANCE,
sized from the dress rehearsal) is left of --budget; each is written to the results file the moment
it ends, with the follow-up command for the sections that did not run, so a run cut short keeps
what it measured and says what to run next. A section that fails is recorded with its error and the
next one runs. Every model is built, measured and freed on its own: nothing else is resident while
a memory figure is taken. Memory is recorded three ways: what PyTorch allocated, what its caching
allocator reserved, and what the driver reports for the process (NVML, else nvidia-smi), which is
what a user's nvidia-smi shows (the CUDA context and the allocator's reserve included).

1. memory_4bit: instructblip-vicuna-7b's architecture (random weights made on the GPU), the LLM in
   4-bit as malmm quantizes it; weights, then peaks after one vision batch, 100 or 3,600 frames
   through the memory step and one caption; the ratio 3,600 / 100 (goal <= 1.05).
2. per_hour: what an hour of video costs as a user runs `malmm caption --fps 1`: the reading
   loop's steady-state frames/s (decode + ViT + Q-Former after the first vision batch) apart from
   start-up and the final generation: 3600 x 1 frame/s / frames/s + generation s. A 720p H.264
   hour (exact, and `--seek keyframe`) and a 1080p point; decode workers sized to the keyframes.
3. parity: float16 and bfloat16 on the GPU against float32 on the CPU on the same reduced-depth,
   full-width weights: Q-Former output, next-token logits, greedy text after 16 frames, bank 4.
4. drift: 5,000 frames through the memory path (frame positions, Q-Former, banks) in float32
   against a float64 reference on the same features: the output's difference, whether both merge
   the same slots, no NaN/inf, and slot sizes that add up to the frames read.
5. vision: ViT-g/14 frames/s at batches 8-64 in float16 and bfloat16, against the FLOP limit.
6. consumer: an 8 GiB card (the allocator capped, free memory reported as that card's): the real
   loader (`malmm_cli.jobs.loading.load` of a saved random model folder, --quantize 4bit), the
   automatic vision batch, 100 and 3,600 frames at bank 40: success or out of memory, and peaks;
   then, if time allows, 12 GiB with --quantize-vision 8bit.
7. generate: beam search (5 beams, 50 new tokens) and greedy decoding with the 4-bit LLM.
8. batching: several videos, or several questions, as one batch against one.
9. watch: `malmm watch` on the 720p clip as a stream: frames/s read, times real time.
10. training: `malmm train`'s step on the 4-bit model (cached features, batch 4, 20 frames, bank
    20, the LLM checkpointed), AdamW and 8-bit AdamW, against the training memory plan; and one
    8-bit AdamW step under a 12 GiB cap.
11. memory_8bit: as memory_4bit with the LLM in 8-bit (LLM.int8), built after the 4-bit model is freed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 1024**3
FORMAT = "malmm-gpu-check-v2"
SECTIONS = ("memory_4bit", "per_hour", "parity", "drift", "vision", "consumer", "generate", "batching", "watch",
            "training", "memory_8bit")  # fmt: skip
# Seconds each section may take on one H100, sized from the dress rehearsal and the GPU's speed
# (docs/benchmarks.md, "GPU check", gives the reckoning); a section starts only if this much of the
# budget is left. The first run (--budget 400) reaches "consumer" (365 s); the follow-up
# (--budget 150) takes the rest, rebuilding the 4-bit model in "generate".
ALLOWANCE = {"memory_4bit": 60, "per_hour": 75, "parity": 30, "drift": 80, "vision": 20, "consumer": 100,
             "generate": 25, "batching": 15, "watch": 25, "training": 25, "memory_8bit": 60}  # fmt: skip
# --cpu (tiny shapes): the slower of two dress rehearsals on a shared 2-core machine, rounded up.
CPU_ALLOWANCE = {"memory_4bit": 50, "per_hour": 40, "parity": 10, "drift": 15, "vision": 10, "consumer": 30,
                 "generate": 10, "batching": 20, "watch": 10, "training": 25, "memory_8bit": 25}  # fmt: skip
FOLLOW_UP_BUDGET = 150
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "malmm-gpu-check"


class Check:
    """The run's settings, its deadline and its results, written after every section."""

    def __init__(self, args: argparse.Namespace):
        import torch

        self.args = args
        self.cpu = args.cpu
        self.device = "cpu" if args.cpu else "cuda"
        self.half = torch.bfloat16 if args.cpu else torch.float16  # the CPU stands in with bfloat16
        self.allowance = CPU_ALLOWANCE if args.cpu else ALLOWANCE
        self.wanted = list(args.only)
        self.workdir = Path(args.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.section_started = self.started
        self.current: str | None = None
        self.out = Path(args.out)
        self.driver = DriverMemory(self.device)
        self.clips: Clips | None = None
        self.shared: dict = {}  # what one section leaves for a later one (the 4-bit model)
        self.results: dict = {
            "format": FORMAT,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(["python3", "benchmarks/gpu_check.py", *sys.argv[1:]]),
            "mode": "cpu (tiny shapes: checks the script, measures nothing)" if args.cpu else "gpu",
            "budget": args.budget,
            "machine": _machine(self.driver),
            "allowances": {name: self.allowance[name] for name in self.wanted},
            "sections": {},
        }
        self.save()

    def left(self) -> float:
        """Seconds of the whole run's budget left."""
        return self.args.budget - (time.monotonic() - self.started)

    def section_left(self) -> float:
        """Seconds of the running section's allowance left (optional parts check it)."""
        return self.allowance[self.current] - (time.monotonic() - self.section_started)

    def follow_up(self) -> dict | None:
        """The command for the wanted sections that have not run (skipped for time, or never reached
        because the run was cut short): fired at once on the still-warm machine."""
        done = self.results["sections"]
        remaining = [name for name in self.wanted if name not in done or "out of time" in done[name].get("skipped", "")]
        if not remaining:
            return None
        out = self.out.with_name(f"{self.out.stem}-2{self.out.suffix}")
        where = os.environ.get("OUT")
        shown = f'"$OUT/{out.name}"' if where and out.parent == Path(where) else shlex.quote(str(out))
        options = ["--only", ",".join(remaining), "--budget", str(FOLLOW_UP_BUDGET)]
        options += ["--cpu"] if self.cpu else []
        options += ["--video", str(self.args.video)] if self.args.video else []
        options += ["--workdir", str(self.workdir)] if self.workdir != DEFAULT_WORKDIR else []
        command = f"python3 benchmarks/gpu_check.py {shlex.join(options)} --out {shown}"
        return {"sections": remaining, "allowances_s": sum(self.allowance[n] for n in remaining), "command": command}

    def save(self) -> None:
        self.results["seconds"] = round(time.monotonic() - self.started, 1)
        self.results["follow_up"] = self.follow_up()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        partial = self.out.with_name(f".{self.out.name}.partial")
        partial.write_text(json.dumps(self.results, indent=2) + "\n")
        partial.replace(self.out)  # a run killed mid-write still leaves the last whole file

    def run(self, name: str, section: Callable[[Check], dict]) -> None:
        allowed = self.allowance[name]
        if self.left() < allowed:
            self.results["sections"][name] = {"skipped": f"out of time ({self.left():.0f} s left, allowed {allowed})"}
            self.save()
            print(f"[{self.elapsed():6.1f} s] {name}: skipped, {self.left():.0f} s left, allowed {allowed}", flush=True)
            return
        print(f"[{self.elapsed():6.1f} s] {name} (allowed {allowed} s) ...", flush=True)
        self.current, self.section_started = name, time.monotonic()
        try:
            result = section(self)
        except Exception as error:
            result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.monotonic() - self.section_started, 1)
        result["allowance"] = allowed
        self.results["sections"][name] = result
        self.save()
        _tidy(self)
        print(f"[{self.elapsed():6.1f} s] {name}: {json.dumps(result)[:600]}", flush=True)
        if follow_up := self.results["follow_up"]:  # what to run next, should this run be cut short now
            print(f"[{self.elapsed():6.1f} s] not run yet: --only {','.join(follow_up['sections'])}", flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _machine(driver: DriverMemory) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    info = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    for package in ("torch", "transformers", "bitsandbytes", "av", "opencv-python-headless", "pillow",
                    "nvidia-ml-py"):  # fmt: skip
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            info[package] = None
    try:
        import torch

        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / GIB, 1)
    except Exception as error:
        info["torch_error"] = str(error)
    info["driver_memory"] = driver.how or "none (no GPU)"
    return info


# --- memory: what PyTorch and the driver say --------------------------------------------------------------


class DriverMemory:
    """What the driver reports for this process's GPU memory (NVML through nvidia-ml-py, else
    `nvidia-smi --query-compute-apps`), and for the whole GPU; nothing on the CPU."""

    def __init__(self, device: str):
        self.how: str | None = None
        self._nvml, self._handle = None, None
        if device != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._handle = pynvml, _nvml_handle(pynvml)
            self.how = "nvml"
        except Exception:
            self.how = "nvidia-smi" if shutil.which("nvidia-smi") else None

    def read(self) -> dict:
        """{"driver_process_gib", "driver_gpu_used_gib"} (None where the driver would not say)."""
        if self.how == "nvml":
            try:
                processes = self._nvml.nvmlDeviceGetComputeRunningProcesses(self._handle)
                mine = [p.usedGpuMemory for p in processes if p.pid == os.getpid() and p.usedGpuMemory is not None]
                used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used
                return {"driver_process_gib": mine[0] / GIB if mine else None, "driver_gpu_used_gib": used / GIB}
            except Exception as error:
                return {"driver_error": f"{type(error).__name__}: {error}"}
        if self.how == "nvidia-smi":
            return _nvidia_smi()
        return {}


def _nvml_handle(pynvml):
    """The NVML handle of the GPU torch calls 0 (by UUID: CUDA_VISIBLE_DEVICES may renumber)."""
    import torch

    uuid = getattr(torch.cuda.get_device_properties(0), "uuid", None)
    if uuid is not None:
        with contextlib.suppress(Exception):
            return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
    return pynvml.nvmlDeviceGetHandleByIndex(0)


def _nvidia_smi() -> dict:
    def query(*arguments: str) -> list[list[str]]:
        done = subprocess.run(["nvidia-smi", *arguments, "--format=csv,noheader,nounits"], capture_output=True,
                              text=True, timeout=20, check=True)  # fmt: skip
        return [[cell.strip() for cell in line.split(",")] for line in done.stdout.strip().splitlines()]

    try:
        mine = [float(mib) for pid, mib in query("--query-compute-apps=pid,used_memory") if pid == str(os.getpid())]
        used = float(query("--query-gpu=memory.used")[0][0])
        return {"driver_process_gib": mine[0] / 1024 if mine else None, "driver_gpu_used_gib": used / 1024}
    except Exception as error:
        return {"driver_error": f"{type(error).__name__}: {error}"}


def _snapshot(check: Check, peaks: bool = True) -> dict:
    """Memory now (and the peaks since `_fresh_peaks`): allocated, reserved, the driver's figures."""
    import torch

    if check.device != "cuda":
        return {}
    shot = {"allocated_gib": torch.cuda.memory_allocated() / GIB, "reserved_gib": torch.cuda.memory_reserved() / GIB}
    if peaks:
        shot["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
        shot["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
    return shot | check.driver.read()


def _fresh_peaks(check: Check) -> None:
    """Drop the allocator's cached blocks and reset its peaks: the next figures are the next run's own."""
    import torch

    gc.collect()
    if check.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _tidy(check: Check) -> None:
    """Between sections: what a section left behind (other than the shared model) goes."""
    import torch

    gc.collect()
    if check.device == "cuda":
        torch.cuda.empty_cache()


def _synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _is_out_of_memory(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


# --- models made on the device, random weights ---------------------------------------------------------


def _config(check: Check, reduced: bool = False):
    from models.architectures import architecture, reduced_depth
    from tests.tiny_models import tiny_config

    if check.cpu:
        return tiny_config()
    config = architecture("vicuna-7b")
    return reduced_depth(config, 2, 2) if reduced else config


def quantize_llm(model, device: str, dtype, quantize: str) -> int:
    """Swap the LLM's linear layers (lm_head kept) for bitsandbytes ones as malmm's loading makes
    them (nf4 with double quantization / LLM.int8). Each new layer is made on `meta`: made anywhere
    else it would draw a random weight of its full size first (6.5 G values for vicuna-7b, serially
    on the CPU: minutes) only to be handed the real one. Returns how many were swapped."""
    import bitsandbytes as bnb
    from torch import nn

    swapped = 0
    for parent in list(model.language_model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or name == "lm_head":
                continue
            bias = child.bias is not None
            if quantize == "4bit":  # Params4bit quantizes on its first move to a device
                layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=bias, compute_dtype=dtype,
                                          compress_statistics=True, quant_type="nf4", device="meta")  # fmt: skip
                layer.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4",
                                                 compress_statistics=True, module=layer)  # fmt: skip
            else:  # Int8Params quantizes when it moves off the CPU, as in malmm's quantize_vision_8bit
                layer = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=bias, has_fp16_weights=False,
                                            threshold=6.0, device="meta")  # fmt: skip
                layer.weight = bnb.nn.Int8Params(child.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
            if bias:
                layer.bias = nn.Parameter(child.bias.data, requires_grad=False)
            setattr(parent, name, layer.to(device))
            swapped += 1
    return swapped


def _random_model(config, device: str, dtype, quantize: str):
    """MA-LMM of `config` with random weights made where it runs (no download, no disk), the ViT and
    LLM in `dtype`, the memory path in float32, the LLM quantized as malmm quantizes it."""
    import torch

    from models.modeling import MalmmForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):  # made and initialised where it runs (buffers such as rotary tables included)
        model = MalmmForConditionalGeneration(config)
    with torch.no_grad():
        model.query_tokens.normal_(std=0.5)
    model.to(dtype)
    model.keep_memory_path_in_float32()
    if quantize != "none":
        quantize_llm(model, device, dtype, quantize)
    model.eval().requires_grad_(False)
    return model


def _malmm(model):
    """A Malmm around a model, with the test tokenizers (their ids fit any vocabulary)."""
    from transformers import BlipImageProcessorPil

    from models import Malmm
    from tests.tiny_models import llama_tokenizer, qformer_tokenizer

    size = model.config.vision_config.image_size
    processor = BlipImageProcessorPil(size={"height": size, "width": size})
    return Malmm(model, llama_tokenizer(), qformer_tokenizer(), processor)


def _model_4bit(check: Check):
    """The 4-bit model the later sections share: the one a section left, else built now."""
    if "malmm_4bit" not in check.shared:
        started = time.perf_counter()
        check.shared["malmm_4bit"] = _malmm(_random_model(_config(check), check.device, check.half, "4bit"))
        check.shared["malmm_4bit_build_s"] = time.perf_counter() - started
    return check.shared["malmm_4bit"]


def _release_model(check: Check) -> None:
    """Free the shared model, so that the next section's figures are its own model's alone."""
    check.shared.pop("malmm_4bit", None)
    _fresh_peaks(check)


def _llm_kind(malmm) -> str:
    return type(malmm.model.language_model.model.layers[0].mlp.down_proj).__name__


def _feature_shape(config) -> tuple[int, int]:
    v = config.vision_config
    return (v.image_size // v.patch_size) ** 2 + 1, v.hidden_size


def _has_bitsandbytes() -> bool:
    try:
        import models.quantization  # noqa: F401, I001  (its log filters before bitsandbytes loads)
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


# --- 1 and 11: memory at 4-bit and 8-bit -------------------------------------------------------------------


def _memory(check: Check, mode: str) -> dict:
    """Build the model in `mode` with nothing else resident, measure it, and free it (4-bit: keep
    it for the sections after)."""
    import torch

    from models import CAPTION, GenerationSettings

    if not _has_bitsandbytes():
        return {"error": "bitsandbytes is not installed: install the carried wheel first"}
    _release_model(check)  # measured alone
    frame_counts = (10, 50) if check.cpu else (100, 3600)
    result = {"mode": mode, "frames": list(frame_counts), "bank": CAPTION.memory_bank_length, "vision_batch": 8,
              "before_model": _snapshot(check, peaks=False)}  # fmt: skip
    started = time.perf_counter()
    model = _random_model(_config(check), check.device, check.half, mode)
    _synchronize(check.device)
    result["build_s"] = time.perf_counter() - started
    malmm = _malmm(model)
    result["llm"] = _llm_kind(malmm)
    _fresh_peaks(check)
    result["weights"] = _snapshot(check, peaks=False)
    size = model.config.vision_config.image_size
    generator = torch.Generator(device=check.device).manual_seed(0)
    for frames in frame_counts:
        _fresh_peaks(check)
        pixels = torch.randn(8, 3, size, size, device=check.device, generator=generator)
        features = malmm.encode_frames(pixels)  # [8, N, C]: one vision batch
        state = malmm.new_memory(CAPTION.prompt(), CAPTION.memory_bank_length, total_frames=frames)
        started = time.perf_counter()
        for index in range(frames):
            jitter = 0.05 * torch.randn(features.shape[1:], device=check.device, generator=generator)
            output, state = malmm.step(state, (features[index % 8] + jitter).unsqueeze(0), index)
        _synchronize(check.device)
        step_ms = (time.perf_counter() - started) * 1000 / frames
        text = malmm.generate(output, CAPTION.prompt(), GenerationSettings(max_new_tokens=20))[0]
        result[f"frames_{frames}"] = {"step_ms": step_ms, "state_mib": state.nbytes() / 1024**2,
                                      "caption_chars": len(text), **_snapshot(check)}  # fmt: skip
        del features, state, output
    low, high = (result[f"frames_{n}"] for n in frame_counts)
    for key in ("peak_allocated_gib", "driver_process_gib"):
        if low.get(key) and high.get(key):
            result[f"ratio_{key.removesuffix('_gib')}"] = high[key] / low[key]
    if mode == "4bit":
        check.shared["malmm_4bit"] = malmm
    else:
        del malmm, model
        _release_model(check)
    return result


def section_memory_4bit(check: Check) -> dict:
    return _memory(check, "4bit")


def section_memory_8bit(check: Check) -> dict:
    return _memory(check, "8bit")


# --- 2: honest seconds per hour ----------------------------------------------------------------------------


class StopReading(Exception):
    """Raised by LoopTimer past its deadline: the read is cut short, its steady rate still stands."""


class LoopTimer:
    """A `Progress` for the reading loop that notes when each frame has been stepped (the loop
    calls advance() after every step), and stops the read past `deadline` (time.perf_counter)."""

    def __init__(self, deadline: float | None = None):
        self.deadline = deadline
        self.opened: float | None = None
        self.stepped: list[float] = []

    def start(self, total_frames: int | None, from_cache: bool = False) -> None:
        self.opened = time.perf_counter()

    def advance(self, frames: int = 1) -> None:
        now = time.perf_counter()
        self.stepped.extend([now] * frames)
        if self.deadline is not None and now > self.deadline:
            raise StopReading

    def figures(self, began: float, warm_frames: int) -> dict:
        """Start-up, and the steady rate after the first `warm_frames` (the first vision batch)."""
        count = len(self.stepped)
        warm = max(1, min(warm_frames, count // 2))
        figures = {"frames": count, "open_s": (self.opened or began) - began, "warm_frames": warm}
        if count - warm >= 2:
            figures["first_batch_s"] = self.stepped[warm - 1] - began
            figures["steady_frames_per_s"] = (count - warm) / (self.stepped[-1] - self.stepped[warm - 1])
        return figures


def _clip_wait(check: Check, keep: float) -> float:
    """Seconds to wait for a clip: the section's time less what it needs after (--cpu: however long
    a busy machine takes to write a tiny clip)."""
    return 600.0 if check.cpu else max(1.0, check.section_left() - keep)


def _keyframe_interval(path: Path, packets: int = 3000) -> float | None:
    """Mean seconds between keyframes over the first `packets` packets (no decoding); None without PyAV."""
    try:
        import av
    except ImportError:
        return None
    times = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for number, packet in enumerate(container.demux(stream)):
            if number >= packets:
                break
            if packet.pts is not None and packet.is_keyframe:
                times.append(float(packet.pts * stream.time_base))
    return (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None


def decode_workers(duration: float, keyframe_interval: float | None, cores: int) -> int:
    """Workers for exact 1 frame/s decoding of this clip: the reader cuts the times into
    CHUNKS_PER_WORKER chunks per worker and each chunk starts with a seek that decodes from the
    keyframe before it, so chunks are kept at least two keyframe intervals long (on an hour of
    video 16 workers leave chunks of 56 s); at most one worker per core, and 16."""
    from malmm_cli.media.parallel import CHUNKS_PER_WORKER

    interval = keyframe_interval or 10.0
    return max(1, min(16, cores, int(duration / (2 * interval) // CHUNKS_PER_WORKER)))


def _decode_alone(video: Path, sampling, seconds: float) -> dict:
    """Frames/s of decoding the same plan alone (what the model would wait for), for at most `seconds`,
    from the first frame delivered on (starting the workers is start-up, as in the reading loop)."""
    from malmm_cli.media.keyframes import KeyframeReader
    from malmm_cli.media.parallel import ParallelReader
    from malmm_cli.media.probe import probe
    from malmm_cli.media.video import VideoReader

    info = probe(video)
    times = sampling.plan(info).times
    if sampling.seek == "keyframe":
        reader = KeyframeReader(video, info)
    elif sampling.decode_workers > 1:
        reader = ParallelReader(video, info, sampling.decode_workers)
    else:
        reader = VideoReader(video, info)
    started, first, count = time.perf_counter(), None, 0
    with contextlib.closing(reader):
        for _ in reader.frames(times):
            count += 1
            now = time.perf_counter()
            first = first or now
            if now - started > seconds:
                break
    steady = now - first if count > 1 else 0.0
    return {"frames": count, "start_s": first - started if first else None,
            "frames_per_s": (count - 1) / steady if steady else None}  # fmt: skip


def section_per_hour(check: Check) -> dict:
    """`caption_video` at 1 frame/s as `malmm caption --fps 1` runs it (automatic vision batch),
    timed from the reading loop itself (LoopTimer): per hour = 3600 / steady frames/s + one
    generation (5 beams, 50 tokens). Each variant stops at its share of the section's time; its
    steady rate is still measured."""
    import torch

    from malmm_cli.jobs.loading import vision_batch_size
    from malmm_cli.media.keyframes import keyframes_unavailable
    from malmm_cli.media.probe import probe
    from malmm_cli.reading.pipeline import Sampling, caption_video
    from models import CAPTION

    malmm = _model_4bit(check)
    batch = vision_batch_size(malmm)  # what a user gets without --batch-size
    state = malmm.new_memory(CAPTION.prompt(), CAPTION.memory_bank_length)
    output = malmm.step(state, torch.randn(1, *_feature_shape(malmm.model.config), device=check.device))[0]
    malmm.generate(output, CAPTION.prompt(), CAPTION.generation)  # warm-up
    _synchronize(check.device)
    started = time.perf_counter()
    malmm.generate(output, CAPTION.prompt(), CAPTION.generation)
    _synchronize(check.device)
    generation_s = time.perf_counter() - started
    result = {"vision_batch": batch, "llm": _llm_kind(malmm), "fps_sampled": 1.0, "generation_s": generation_s,
              "formula": "3600 * fps_sampled / steady_frames_per_s + generation_s", "rows": []}  # fmt: skip
    # each variant's share of the section's time at most (the rest: generation and decoding alone)
    variants = [("720p", "exact", 0.35), ("720p", "keyframe", 0.1), ("1080p", "exact", 0.2)]
    for size, seek, share in variants:
        row: dict = {"clip": size, "seek": seek}
        result["rows"].append(row)
        try:
            video = check.clips.get(size, timeout=_clip_wait(check, 20))
        except Exception as error:
            row["error"] = f"{type(error).__name__}: {error}"
            continue
        info = probe(video)
        row["video"] = {"name": video.name, "codec": info.codec, "size": f"{info.width}x{info.height}",
                        "fps": info.fps, "minutes": info.duration / 60}  # fmt: skip
        if seek == "keyframe" and (reason := keyframes_unavailable(info)):
            row["skipped"] = reason
            continue
        interval = _keyframe_interval(video)
        workers = 1 if seek == "keyframe" else decode_workers(info.duration, interval, os.cpu_count() or 1)
        if check.cpu and seek == "exact":
            workers = 2  # the GPU run's path (parallel decoding), although a tiny clip gains nothing from it
        row |= {"keyframe_interval_s": interval, "decode_workers": workers}
        sampling = Sampling(fps=1.0, seek=seek, decode_workers=workers)
        seconds = min(check.section_left() - 5, share * check.allowance[check.current])
        if seconds < 5 and not check.cpu:
            row["skipped"] = "out of the section's time"
            continue
        timer = LoopTimer(deadline=None if check.cpu else time.perf_counter() + seconds)  # tiny clips: read whole
        began = time.perf_counter()
        try:
            read = caption_video(malmm, video, sampling=sampling, batch_size=batch, progress=timer)
            _synchronize(check.device)
            row["whole_s"] = time.perf_counter() - began
            row["final_generation_s"] = row["whole_s"] - (timer.stepped[-1] - began)
            row["warnings"] = read.warnings
            row["naive_minutes_per_hour"] = row["whole_s"] * 3600 / info.duration / 60  # the whole run, scaled
        except StopReading:
            row["cut_short_after_s"] = time.perf_counter() - began
        row |= timer.figures(began, batch)
        if "steady_frames_per_s" in row:
            row["minutes_per_hour"] = (3600 * 1.0 / row["steady_frames_per_s"] + generation_s) / 60
        if check.cpu or check.section_left() > 10:  # decoding alone, the same plan: is the loop waiting for it?
            alone = _decode_alone(video, sampling, 4.0 if check.cpu else min(4.0, check.section_left() - 5))
            row["decode_alone_frames_per_s"] = alone["frames_per_s"]
    return result


# --- 3: half precision on the GPU against float32 on the CPU ---------------------------------------------


def section_parity(check: Check) -> dict:
    import torch

    from models import CAPTION, GenerationSettings, Malmm
    from tests.tiny_models import build_model_folder

    folder = Path(tempfile.mkdtemp(prefix="parity-", dir=check.workdir)) / "model"
    with torch.device(check.device):  # random weights drawn on the device (fast), saved in float16
        build_model_folder(folder, _config(check, reduced=True), dtype=torch.float16)

    config = _config(check, reduced=True)
    size = config.vision_config.image_size
    pixels = torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(0))
    table = torch.randn(
        config.max_num_frames, config.vision_config.hidden_size, generator=torch.Generator().manual_seed(1)
    )
    table *= 0.1

    def read(device: str, dtype) -> dict:
        malmm = Malmm.from_pretrained(folder, device=device, dtype=dtype)
        with torch.no_grad():  # the same frame table on both sides (made on the CPU)
            malmm.model.frame_position_embedding.weight.copy_(table)
        output, _ = malmm.read(pixels.to(device), malmm.new_memory(CAPTION.prompt(), 4, total_frames=16))
        ids = malmm.tokenizer([CAPTION.prompt()], return_tensors="pt").input_ids.to(device)
        with torch.inference_mode():
            embeds = malmm.model.get_input_embeddings()
            inputs = torch.cat([malmm.model.language_inputs(output).to(embeds.weight.dtype), embeds(ids)], dim=1)
            logits = malmm.model.language_model(inputs_embeds=inputs).logits[0, -1].float().cpu()
        tokens = malmm.generate(output, CAPTION.prompt(), GenerationSettings(max_new_tokens=10, num_beams=1))[0]
        return {"output": output.float().cpu(), "logits": logits, "text": tokens}

    reference = read("cpu", torch.float32)
    result = {
        "weights": "2 ViT layers, 12 Q-Former layers, 2 LLM layers at vicuna-7b widths" if not check.cpu else "tiny",
        "frames": 16,
        "bank": 4,
        "against": "CPU float32",
        "rows": [],
    }
    others = {"bfloat16": torch.bfloat16} if check.cpu else {"float16": torch.float16, "bfloat16": torch.bfloat16}
    for name, dtype in others.items():
        got = read(check.device, dtype)
        scale = reference["output"].abs().max().item()
        result["rows"].append(
            {
                "dtype": name,
                "qformer_max_abs_diff": (got["output"] - reference["output"]).abs().max().item(),
                "qformer_max_abs": scale,
                "logits_cosine": torch.nn.functional.cosine_similarity(
                    got["logits"], reference["logits"], dim=0
                ).item(),
                "same_greedy_text": got["text"] == reference["text"],
            }
        )
    shutil.rmtree(folder.parent, ignore_errors=True)
    return result


# --- 4: drift over 5,000 frames, float32 against float64 ---------------------------------------------------


def _sizes_in_time_order(bank):
    """[B, used, N]: how many frames each remembered slot stands for, oldest first."""
    return bank.sizes.gather(1, bank.order[:, : bank.used])


def section_drift(check: Check) -> dict:
    """The memory path (frame position, Q-Former step, banks) read twice in lockstep on the same
    features: in float32, as malmm runs it on every device, and in float64 as the reference. After
    every frame the visual bank's slot sizes in time order are compared, per token position: equal
    sizes mean both merged the same neighbours so far (a different choice shows at once, and
    histories part from there). The Q-Former's own banks hold many entries that are the same at
    every frame (its first layer's all of them: query tokens and instruction), whose merges are
    exact ties that either precision may break either way, harmlessly: their contents are compared
    instead (a different choice between different entries shows there)."""
    import copy

    import torch
    from transformers import InstructBlipQFormerModel

    from models import CAPTION
    from models.memory import MemoryState
    from models.modeling import frame_position, max_num_frames
    from models.qformer import qformer_step
    from tests.tiny_models import qformer_tokenizer

    config = _config(check)
    frames = 120 if check.cpu else 5000  # past the bank's 40 slots: merging from frame 41 on
    bank = CAPTION.memory_bank_length
    tokens, width = _feature_shape(config)
    device = check.device
    torch.manual_seed(0)
    with torch.device(device):
        qformer = InstructBlipQFormerModel(config.qformer_config).eval().requires_grad_(False)
        query_tokens = torch.randn(1, config.num_query_tokens, config.qformer_config.hidden_size) * 0.5
        table = torch.randn(max_num_frames(config), width) * 0.1
        scenes = torch.randn(16, tokens, width)  # frames vary around a few scenes, as a video does
    reference = copy.deepcopy(qformer).double()
    instruction = qformer_tokenizer()([CAPTION.prompt()], return_tensors="pt")
    ids, mask = instruction.input_ids.to(device), instruction.attention_mask.to(device)
    state32 = MemoryState(ids, mask, bank, frames)
    state64 = MemoryState(ids.clone(), mask.clone(), bank, frames)
    generator = torch.Generator(device=device).manual_seed(1)
    visual_agrees = torch.zeros(frames, tokens, dtype=torch.bool, device=device)  # per token position
    finite = torch.ones((), dtype=torch.bool, device=device)
    differences, read = {}, 0

    def agreeing(a, b) -> torch.Tensor:  # [B, N]: whether each token position's slot sizes are the same
        return (_sizes_in_time_order(a) == _sizes_in_time_order(b)).all(dim=1)

    def bank_difference(a: MemoryState, b: MemoryState) -> float:  # the Q-Former banks' contents, in time order
        return max(((x.in_time_order()[0].double() - y.in_time_order()[0]).abs().max() / y.slots.abs().max()).item()
                   for x, y in zip(a.queries, b.queries, strict=True))  # fmt: skip

    def difference(out32: torch.Tensor, out64: torch.Tensor) -> dict:
        return {"max_abs_diff": (out32.double() - out64).abs().max().item(), "max_abs": out64.abs().max().item(),
                "query_banks": bank_difference(state32, state64)}  # fmt: skip

    started = time.perf_counter()
    with torch.inference_mode():
        for index in range(frames):
            if index % 50 == 0 and not check.cpu and check.section_left() < 5:  # out of time: stop, say where
                break
            feature = scenes[(index // 25) % 16] + 0.3 * torch.randn(tokens, width, device=device, generator=generator)
            out32 = qformer_step(qformer, query_tokens, state32, (feature + frame_position(table, index, frames))[None])
            frame64 = feature.double() + frame_position(table.double(), index, frames)
            out64 = qformer_step(reference, query_tokens.double(), state64, frame64[None])
            visual_agrees[index] = (agreeing(state32.visual, state64.visual))[0]
            finite &= torch.isfinite(out32).all()
            read = index + 1
            if read == 100:
                differences[read] = difference(out32, out64)
        differences[read] = difference(out32, out64)
    _synchronize(device)
    seconds = time.perf_counter() - started
    visual_agrees = visual_agrees[:read]
    disagree = (~visual_agrees.all(dim=1)).nonzero()
    banks = [state32.visual, *state32.queries]
    sums = [bool((_sizes_in_time_order(b).sum(1) == read).all()) for b in banks]
    slots_finite = all(bool(torch.isfinite(b.slots).all()) for b in banks)
    return {
        "frames": read,
        "frames_planned": frames,
        "bank": bank,
        "reference": "float64, same weights and features",
        "step_pair_ms": seconds * 1000 / read,
        "output_difference": {str(k): v for k, v in sorted(differences.items())},
        "visual_merges_agree": visual_agrees.all(dim=1).float().mean().item(),  # frames where all positions agree
        "visual_positions_agree": visual_agrees.float().mean().item(),  # (frame, position) pairs
        "first_visual_difference_at": int(disagree[0]) + 1 if len(disagree) else None,
        "finite": bool(finite) and slots_finite,
        "sizes_sum_to_frames": all(sums),
    }


# --- 5: vision throughput ---------------------------------------------------------------------------------


def vision_flops_per_frame(config) -> float:
    """Multiply-adds x 2 of one frame through the ViT: the linear layers and attention."""
    v = config.vision_config
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    linear = 4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size  # qkv + projection + MLP
    attention = 2 * tokens * v.hidden_size  # scores and weighted sum, per token
    patches = 3 * v.patch_size**2 * v.hidden_size * (tokens - 1)
    return 2 * (v.num_hidden_layers * tokens * (linear + attention) + patches)


def section_vision(check: Check) -> dict:
    import torch
    from transformers import InstructBlipVisionModel

    from models.modeling import encode_vision

    config = _config(check)
    flops = vision_flops_per_frame(config)
    batches = (2, 4) if check.cpu else (8, 16, 32, 64)
    dtypes = {"bfloat16": torch.bfloat16} if check.cpu else {"float16": torch.float16, "bfloat16": torch.bfloat16}
    result = {"tflop_per_frame": flops / 1e12, "peak_tflops": check.args.peak_tflops, "rows": []}
    with torch.device(check.device):
        vision = InstructBlipVisionModel(config.vision_config)
    vision.eval().requires_grad_(False)
    result["attention"] = vision.config._attn_implementation
    size = config.vision_config.image_size
    for dtype_name, dtype in dtypes.items():
        vision.to(dtype)
        vision.post_layernorm.float()  # as malmm runs it
        for batch in batches:
            pixels = torch.randn(batch, 3, size, size, device=check.device)
            with torch.inference_mode():
                for _ in range(2):
                    encode_vision(vision, pixels)  # warm-up
                _synchronize(check.device)
                repeats, started = 0, time.perf_counter()
                while repeats < 3 or time.perf_counter() - started < (0.2 if check.cpu else 1.0):
                    encode_vision(vision, pixels)
                    repeats += 1
                _synchronize(check.device)
            rate = batch * repeats / (time.perf_counter() - started)
            achieved = rate * flops / 1e12
            result["rows"].append({"dtype": dtype_name, "batch": batch, "frames_per_s": rate, "tflops": achieved,
                                   "share_of_peak": achieved / check.args.peak_tflops})  # fmt: skip
    return result


# --- 6: a consumer card --------------------------------------------------------------------------------------


@contextlib.contextmanager
def card(check: Check, gib: float) -> Iterator[dict]:
    """Run as if on a card of `gib` GiB: PyTorch's caching allocator is capped so that it and what
    the driver holds for this process outside it (CUDA context, libraries) fit in `gib`, and
    torch.cuda.mem_get_info, which malmm's loader and automatic batch sizes read, reports that
    card's free memory instead of this GPU's."""
    import torch

    if check.device != "cuda":
        yield {"card_gib": gib, "note": "no GPU: nothing capped"}
        return
    _fresh_peaks(check)
    total = torch.cuda.get_device_properties(0).total_memory
    driver = check.driver.read().get("driver_process_gib")
    outside = (driver * GIB - torch.cuda.memory_reserved()) if driver else 0.5 * GIB  # CUDA context, cuBLAS...
    cap = gib * GIB - outside
    torch.cuda.set_per_process_memory_fraction(cap / total)

    def card_memory(device: object = None) -> tuple[int, int]:
        return max(0, int(cap - torch.cuda.memory_reserved())), int(gib * GIB)

    try:
        with mock.patch.object(torch.cuda, "mem_get_info", card_memory):
            yield {"card_gib": gib, "outside_allocator_gib": outside / GIB, "allocator_cap_gib": cap / GIB}
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def _saved_random_model(check: Check) -> tuple[Path, float]:
    """A saved random model folder of the full architecture (float16, as on the hub), made once on
    the device and kept in the work folder. Returns it and the seconds its making took."""
    import torch

    from tests.tiny_models import build_model_folder

    folder = check.workdir / ("model-tiny" if check.cpu else "model-vicuna-7b")
    if (folder / "config.json").exists():
        return folder, 0.0
    started = time.perf_counter()
    partial = check.workdir / f".{folder.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    with torch.device(check.device):  # random weights drawn on the GPU: seconds, not minutes
        build_model_folder(partial, _config(check), dtype=torch.float16)
    partial.rename(folder)
    _fresh_peaks(check)
    return folder, time.perf_counter() - started


def _read_on_card(check: Check, malmm, frames: int, batch: int) -> dict:
    """Encode `frames` frames in vision batches of `batch`, step the memory (bank 40) with each and
    generate a caption (5 beams, 50 tokens): success or out of memory, with the peaks."""
    import torch

    from models import CAPTION

    _fresh_peaks(check)
    size = malmm.model.config.vision_config.image_size
    row: dict = {"frames": frames}
    started = time.perf_counter()
    try:
        state = malmm.new_memory(CAPTION.prompt(), CAPTION.memory_bank_length, total_frames=frames)
        output = None
        for first in range(0, frames, batch):
            count = min(batch, frames - first)
            pixels = torch.randn(count, 3, size, size, device=check.device)
            for offset, feature in enumerate(malmm.encode_frames(pixels)):
                output, state = malmm.step(state, feature.unsqueeze(0), first + offset)
        text = malmm.generate(output, CAPTION.prompt(), CAPTION.generation)[0]
        _synchronize(check.device)
        row |= {"ok": True, "caption_chars": len(text)}
    except Exception as error:
        if not _is_out_of_memory(error):
            raise
        row |= {"ok": False, "out_of_memory": str(error).splitlines()[0][:300]}
    row["seconds"] = time.perf_counter() - started
    return row | _snapshot(check)


def section_consumer(check: Check) -> dict:
    """An 8 GiB card as a user has it: the model loaded by malmm's own loader from a folder, in
    4-bit, the vision batch malmm picks itself, a caption of 100 and 3,600 frames at bank 40. Then,
    if time allows, a 12 GiB card with the ViT in 8-bit too (quantized after loading, as
    `Malmm.from_pretrained(quantize_vision=True)` does)."""
    import torch

    from malmm_cli.jobs.errors import SetupError
    from malmm_cli.jobs.loading import LoadOptions, load, vision_batch_size
    from models import CAPTION, Malmm
    from models.quantization import quantize_vision_8bit

    _release_model(check)
    folder, made_s = _saved_random_model(check)
    result: dict = {"folder_made_s": made_s, "cards": []}
    frame_counts = (10, 50) if check.cpu else (100, 3600)
    options = LoadOptions(model=str(folder), device=check.device, quantize="4bit",
                          memory_bank_length=CAPTION.memory_bank_length, num_beams=CAPTION.generation.num_beams,
                          max_new_tokens=CAPTION.generation.max_new_tokens)  # fmt: skip
    malmm = None
    try:
        with card(check, 8) as limits:
            row: dict = {**limits, "quantize": "4bit", "quantize_vision": "none"}
            result["cards"].append(row)
            started = time.perf_counter()
            try:
                malmm, _, plan = load(options, folder)
                row |= {"load_s": time.perf_counter() - started, "plan_gib": plan.total / GIB, "loaded": True}
            except SetupError as error:  # the plan says it does not fit: load past it, to see whether it does
                row |= {"refused_by_plan": str(error), "loaded": False}
                with contextlib.suppress(torch.OutOfMemoryError):
                    malmm = Malmm.from_pretrained(folder, dtype=check.half, device=check.device, quantize="4bit",
                                                  local_files_only=True)  # fmt: skip
                    row["loaded_past_the_plan"] = True
            except torch.OutOfMemoryError as error:
                row |= {"loaded": False, "out_of_memory_at_load": str(error).splitlines()[0][:300]}
            if malmm is not None:
                row["after_load"] = _snapshot(check, peaks=True)
                row["vision_batch"] = batch = vision_batch_size(malmm)  # automatic, on this card
                row["runs"] = [_read_on_card(check, malmm, frames, batch) for frames in frame_counts]
        first_card_s = sum(run["seconds"] for run in result["cards"][0].get("runs", []))
        if malmm is not None and (check.cpu or check.section_left() > 1.2 * first_card_s + 5):
            with card(check, 12) as limits:
                row = {**limits, "quantize": "4bit", "quantize_vision": "8bit"}
                result["cards"].append(row)
                quantize_vision_8bit(malmm.model)
                row["after_load"] = _snapshot(check, peaks=True)
                row["vision_batch"] = batch = vision_batch_size(malmm)
                row["runs"] = [_read_on_card(check, malmm, frames, batch) for frames in frame_counts]
    finally:
        del malmm
        _fresh_peaks(check)
    return result


# --- 7 to 10: generation, batching, watch, training on the shared 4-bit model --------------------------------


def section_generate(check: Check) -> dict:
    import torch

    from models import CAPTION, GenerationSettings

    malmm = _model_4bit(check)
    state = malmm.new_memory(CAPTION.prompt(), 4)
    features = torch.randn(1, *_feature_shape(malmm.model.config), device=check.device)
    output, _ = malmm.step(state, features)
    result = {"llm": _llm_kind(malmm)}
    for name, beams in (("beam5", 5), ("greedy", 1)):
        tokens = 10 if check.cpu else 50
        settings = GenerationSettings(max_new_tokens=tokens, min_new_tokens=tokens, num_beams=beams)
        malmm.generate(output, CAPTION.prompt(), settings)  # warm-up
        _synchronize(check.device)
        started = time.perf_counter()
        ids = malmm.generate(output, CAPTION.prompt(), settings)
        _synchronize(check.device)
        result[f"{name}_tokens_per_s"] = tokens / (time.perf_counter() - started)
        result[f"{name}_text_chars"] = len(ids[0])
    return result


def section_batching(check: Check) -> dict:
    """What reading several videos, or several questions, as one batch costs against one: the
    full-size Q-Former step (latency-bound on a GPU) and generation, on the 4-bit model."""
    import torch

    from models import CAPTION, QUESTION, GenerationSettings

    malmm = _model_4bit(check)
    features = torch.randn(1, *_feature_shape(malmm.model.config), device=check.device)
    steps = 5 if check.cpu else 40

    def step_ms(instructions: list[str], bank: int, videos: int) -> float:
        state = malmm.new_memory(instructions, bank, total_frames=steps, readers_per_video=len(instructions) // videos)
        frame = features.expand(videos, -1, -1)
        for index in range(3):  # warm-up
            malmm.step(state, frame, index)
        _synchronize(check.device)
        started = time.perf_counter()
        for index in range(3, steps):
            malmm.step(state, frame, index)
        _synchronize(check.device)
        return (time.perf_counter() - started) * 1000 / (steps - 3)

    caption, questions = CAPTION.prompt(), [QUESTION.prompt(f"question {n}: what happens here?") for n in range(10)]
    result = {
        "videos": 8,
        "step_ms_1_video": step_ms([caption], CAPTION.memory_bank_length, 1),
        "step_ms_8_videos": step_ms([caption] * 8, CAPTION.memory_bank_length, 8),
        "step_ms_1_question": step_ms(questions[:1], QUESTION.memory_bank_length, 1),
        "step_ms_10_questions": step_ms(questions, QUESTION.memory_bank_length, 1),
    }
    settings = GenerationSettings(max_new_tokens=20, min_new_tokens=20)
    output = malmm.step(malmm.new_memory(caption, 4), features)[0]
    for answers in (1, 8):
        malmm.generate(output.expand(answers, -1, -1), caption, settings)  # warm-up
        _synchronize(check.device)
        started = time.perf_counter()
        malmm.generate(output.expand(answers, -1, -1), caption, settings)
        _synchronize(check.device)
        result[f"generate_s_{answers}"] = time.perf_counter() - started
    return result


def section_watch(check: Check) -> dict:
    """How fast `malmm watch` reads on this model: the 720p clip given to it as a stream, read as
    fast as it decodes, with a buffer that never drops, at 2 frames/s and a caption every 10 s, for
    a minute of stream: the frames/s it reads is the densest --fps it could follow in real time."""
    from malmm_cli.jobs.loading import vision_batch_size
    from malmm_cli.jobs.watch import watch
    from malmm_cli.media.live import parse_source

    if importlib.util.find_spec("av") is None:
        return {"skipped": "`malmm watch` reads streams with PyAV, which is not installed"}
    video = check.clips.get("720p", timeout=_clip_wait(check, 15))
    malmm = _model_4bit(check)
    every, duration = (2.0, 4.0) if check.cpu else (10.0, 60.0)
    events = []
    _synchronize(check.device)
    started = time.perf_counter()
    summary = watch(malmm, parse_source(str(video)), every=every, fps=2.0, on_event=events.append, buffered=100_000,
                    duration=duration, batch_size=vision_batch_size(malmm))  # fmt: skip
    _synchronize(check.device)
    seconds = time.perf_counter() - started
    stream_seconds = events[-1].end if events else 0.0
    return {
        "every": every,
        "frames_read": summary.read,
        "dropped": summary.dropped,
        "events": len(events),
        "seconds": seconds,
        "frames_per_s": summary.read / seconds,
        "stream_seconds": stream_seconds,
        "realtime_factor": stream_seconds / seconds,
        "llm": _llm_kind(malmm),
        "peak_gib": _snapshot(check).get("peak_allocated_gib"),
    }


def section_training(check: Check) -> dict:
    """A training step as `malmm train` takes it once features are cached, on the 4-bit model (on
    the CPU the tiny model unquantized: its 4-bit layers there are not what a GPU trains); then one
    8-bit AdamW step on a 12 GiB card."""
    import torch

    from models.memory_plan import TrainingShape, plan_training
    from models.training import answer_loss, make_optimizer, parameter_groups, read_clip, trainable_parameters

    malmm = _malmm(_random_model(_config(check), "cpu", torch.float32, "none")) if check.cpu else _model_4bit(check)
    model = malmm.model
    batch, frames, bank = 4, (6 if check.cpu else 20), (3 if check.cpu else 20)
    prompts = ["Question: what is the man doing in the kitchen? Short answer:"] * batch
    targets = ["he is cutting vegetables for a soup"] * batch
    features = torch.randn(batch, frames, *_feature_shape(model.config), device=check.device)
    dtype = model.get_input_embeddings().weight.dtype
    trained = trainable_parameters(model)
    model.qformer.train()
    on_gpu = check.device == "cuda"
    if on_gpu:
        model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    result = {"batch": batch, "frames": frames, "bank": bank, "trained_m": sum(p.numel() for _, p in trained) / 1e6}

    def step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        with torch.enable_grad():
            state = malmm.new_memory(prompts, bank, total_frames=frames)
            loss = answer_loss(model, malmm.tokenizer, read_clip(model, state, features), prompts, targets)
            scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=False)

    try:
        for name in ("adamw", "adamw8bit"):
            optimizer = make_optimizer(name, parameter_groups(trained), 1e-5)
            scaler = torch.amp.GradScaler(check.device, enabled=dtype == torch.float16)
            step(optimizer, scaler)  # warm-up: gradients and optimiser state allocated
            _synchronize(check.device)
            _fresh_peaks(check)
            started = time.perf_counter()
            for _ in range(2):
                step(optimizer, scaler)
            _synchronize(check.device)
            seconds = (time.perf_counter() - started) / 2
            text = len(malmm.tokenizer(prompts[0] + " " + targets[0]).input_ids)
            instruction = len(malmm.qformer_tokenizer(prompts[0]).input_ids)
            shape = TrainingShape(batch, optimizer=name, checkpointing=on_gpu, text_tokens=text,
                                  instruction_tokens=instruction)  # fmt: skip
            quantize = "none" if check.cpu else "4bit"
            plan = plan_training(model.config, shape, quantize=quantize, dtype=dtype, memory_bank_length=bank,
                                 efficient_attention=on_gpu)  # fmt: skip
            result[name] = {"step_s": seconds, "examples_per_s": batch / seconds, "plan_gib": plan.total / GIB,
                            "plan": plan.describe(), **_snapshot(check)}  # fmt: skip
            del optimizer
            model.zero_grad(set_to_none=True)
        if on_gpu and check.section_left() > 10:
            _fresh_peaks(check)
            with card(check, 12) as limits:
                row = {**limits, "optimizer": "adamw8bit"}
                try:
                    optimizer = make_optimizer("adamw8bit", parameter_groups(trained), 1e-5)
                    step(optimizer, torch.amp.GradScaler(check.device, enabled=dtype == torch.float16))
                    _synchronize(check.device)
                    row["ok"] = True
                except Exception as error:
                    if not _is_out_of_memory(error):
                        raise
                    row |= {"ok": False, "out_of_memory": str(error).splitlines()[0][:300]}
                row |= _snapshot(check)
                optimizer = None
                model.zero_grad(set_to_none=True)
            result["card_12gib"] = row
    finally:
        model.zero_grad(set_to_none=True)
        model.requires_grad_(False)
        model.qformer.eval()
        if on_gpu:
            model.language_model.gradient_checkpointing_disable()
        _fresh_peaks(check)
    return result


# --- clips, made while the first sections run -------------------------------------------------------------


CLIPS = {  # name: (size, seconds of the encoded segment, times it is repeated) on the GPU; on the CPU
    "720p": ((1280, 720), 60, 60),  # an hour
    "1080p": ((1920, 1080), 60, 10),  # ten minutes
}
CPU_CLIPS = {"720p": ((160, 120), 4, 3), "1080p": ((192, 108), 2, 3)}


class Clips:
    """The clips the reading sections use, made in a background process while the first sections
    run, kept in the work folder for a follow-up run. A minute is encoded with PyAV's x264 (H.264,
    2.4 Mbit/s at 720p, camera-like noise, the encoder's keyframe interval) and repeated by copying
    its packets: an hour costs the encoding of a minute. Without PyAV, OpenCV writes 3 minutes of
    MPEG-4 Part 2 (its wheels have no H.264 encoder)."""

    def __init__(self, workdir: Path, plans: dict, given: dict[str, Path]):
        self.paths: dict[str, Path] = dict(given)
        self.process: subprocess.Popen | None = None
        wanted = []
        for name, (size, seconds, repeats) in plans.items():
            if name in self.paths:
                continue
            path = workdir / f"clip-{name}-{seconds * repeats}s.mp4"
            self.paths[name] = path
            if not path.exists():
                wanted += [f"{path}:{size[0]}x{size[1]}:{seconds}:{repeats}"]
        if wanted:  # one process, the clips in order: the first is needed first
            self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--make-clips", *wanted])

    def get(self, name: str, timeout: float) -> Path:
        """The clip, once made (waiting at most `timeout` s)."""
        path = self.paths[name]
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"the {name} clip could not be made")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {name} clip was not ready in {timeout:.0f} s")
            time.sleep(0.2)
        return path

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait()


def make_clip(path: Path, size: tuple[int, int], seconds: int, repeats: int) -> None:
    """Write the clip to `path` (through a partial file, so that a clip there is whole)."""
    partial = path.with_name(f".{path.name}.partial.mp4")
    try:
        import av  # noqa: F401
    except ImportError:
        _opencv_clip(partial, 180 if size[0] >= 1280 else seconds * repeats, size)
    else:
        from tests.media import make_video

        segment = path.with_name(f".{path.stem}.segment.mp4")
        make_video(segment, seconds=seconds, fps=30, size=size, noise=10, crf=23)
        repeat_segment(segment, repeats, partial)
        segment.unlink()
    partial.replace(path)


def repeat_segment(segment: Path, repeats: int, out: Path) -> None:
    """`out` holds `segment` `repeats` times in a row, its packets copied (no re-encoding), each
    copy's timestamps shifted past the one before. The segment starts with a keyframe, so every
    copy decodes on its own."""
    import av

    with av.open(str(out), "w") as output:
        stream, offset = None, 0
        for _ in range(repeats):
            with av.open(str(segment)) as source:
                template = source.streams.video[0]
                if stream is None:
                    stream = output.add_stream_from_template(template)
                first, end = None, 0
                for packet in source.demux(template):
                    if packet.dts is None:  # the demuxer's closing empty packet
                        continue
                    first = packet.pts if first is None else min(first, packet.pts)
                    end = max(end, packet.pts + (packet.duration or 0))
                    packet.pts += offset
                    packet.dts += offset
                    packet.stream = stream
                    output.mux(packet)
                offset += end - first


def _opencv_clip(path: Path, seconds: int, size: tuple[int, int], fps: int = 30) -> None:
    """An MPEG-4 Part 2 clip written by OpenCV: a pattern drifting right, a little noise."""
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    y, x = np.mgrid[0 : size[1], 0 : size[0] + 512]
    base = (128 + 80 * np.sin((x + y) / 11.0) * np.cos(y / 23.0)).astype(np.uint8)
    for i in range(seconds * fps):
        luma = base[:, (3 * i) % 512 : (3 * i) % 512 + size[0]]
        writer.write(np.dstack([luma, np.roll(luma, 7, 0), np.roll(luma, 13, 1)]))
    writer.release()


# --- the results, as a section of docs/benchmarks.md ---------------------------------------------------------


def _figure(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def merge(runs: list[dict]) -> dict:
    """One results file from a run and its follow-ups: each section from the first run that measured
    it (else its last word: an error, or why it was skipped)."""
    merged = {**runs[0], "sections": {}, "commands": [run["command"] for run in runs],
              "seconds": sum(run["seconds"] for run in runs)}  # fmt: skip
    for name in SECTIONS:
        tried = [run["sections"][name] for run in runs if name in run["sections"]]
        measured = [section for section in tried if "error" not in section and "skipped" not in section]
        if measured or tried:
            merged["sections"][name] = (measured or tried)[-1 if not measured else 0]
    return merged


def _gib(value: float | None) -> str:
    return _figure(value, ".2f")


def render(results: dict) -> str:
    """docs/benchmarks.md's GPU section from a (merged) results file."""
    machine, sections = results["machine"], results["sections"]
    lines = [
        "## GPU check (`benchmarks/gpu_check.py`)",
        "",
        f"{machine.get('gpu', 'no GPU')} ({machine.get('gpu_memory_gib', '?')} GiB), {machine['cpu_count']} cores; "
        f"Python {machine.get('python')}, torch {machine.get('torch')} (CUDA {machine.get('cuda')}), transformers "
        f"{machine.get('transformers')}, bitsandbytes {machine.get('bitsandbytes')}, PyAV {machine.get('av')}; "
        f"driver memory from {machine.get('driver_memory')}; run {results['date']}, {results['seconds']:.0f} s in "
        f"all, mode: {results['mode']}. Random weights throughout. Memory: PyTorch's allocated and reserved, and "
        "what the driver reports for the process (what nvidia-smi shows: CUDA context and reserve included).",
        "",
    ]

    def failed(name: str) -> bool:
        section = sections.get(name, {"skipped": "not run"})
        problem = section.get("error") or section.get("skipped")
        if problem:
            lines.extend([f"- {name}: **not measured**: {problem}", ""])
        return bool(problem)

    memory_rows = [sections[n] for n in ("memory_4bit", "memory_8bit") if not failed(n)]
    if memory_rows:
        low, high = memory_rows[0]["frames"]
        lines += [
            f"Memory, instructblip-vicuna-7b architecture, each model alone, bank {memory_rows[0]['bank']}, one "
            "vision batch of 8, a caption of 20 tokens (5 beams); GiB:",
            "",
            f"| LLM | weights | peak allocated, {low} frames | peak allocated, {high} | peak reserved, {high} | "
            f"driver, {high} | ratio {high}/{low} (allocated; driver) | step ms |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in memory_rows:
            a, b = row[f"frames_{low}"], row[f"frames_{high}"]
            ratio = (
                f"{_figure(row.get('ratio_peak_allocated'), '.3f')}; {_figure(row.get('ratio_driver_process'), '.3f')}"
            )
            lines.append(_row(row["mode"], _gib(row["weights"].get("allocated_gib")), _gib(a.get("peak_allocated_gib")),
                              _gib(b.get("peak_allocated_gib")), _gib(b.get("peak_reserved_gib")),
                              _gib(b.get("driver_process_gib")), ratio, f"{b['step_ms']:.2f}"))  # fmt: skip
        lines.append("")
    if not failed("per_hour"):
        hour = sections["per_hour"]
        lines += [
            f"Minutes per hour of video, `malmm caption --fps 1` (LLM {hour['llm']}, automatic vision batch "
            f"{hour['vision_batch']}): 60 / steady frames/s of the reading loop (decode + ViT + Q-Former, after the "
            f"first vision batch) + one final generation ({hour['generation_s']:.1f} s, 5 beams, 50 tokens):",
            "",
            "| clip | seek | decode workers | steady frames/s | decoding alone frames/s | start-up s | "
            "**minutes per hour** | whole run scaled (old way) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row in hour["rows"]:
            video = row.get("video", {})
            what = f"{video.get('size', row['clip'])} {video.get('codec', '')} {video.get('minutes', 0):.1f} min"
            if "minutes_per_hour" not in row:
                lines.append(_row(what, row["seek"], "", "", "", "", row.get("skipped") or row.get("error", "n/a"), ""))
                continue
            lines.append(_row(what, row["seek"], row.get("decode_workers"), f"{row['steady_frames_per_s']:.1f}",
                              _figure(row.get("decode_alone_frames_per_s"), ".1f"),
                              _figure(row.get("first_batch_s"), ".1f"), f"**{row['minutes_per_hour']:.2f}**",
                              _figure(row.get("naive_minutes_per_hour"), ".2f")))  # fmt: skip
        lines.append("")
    if not failed("parity"):
        parity = sections["parity"]
        lines += [
            f"Half precision on the GPU against {parity['against']} ({parity['weights']}, {parity['frames']} "
            f"frames, bank {parity['bank']}):",
            "",
            "| dtype | Q-Former max abs diff (of max abs) | next-token logits cosine | same greedy text |",
            "| --- | ---: | ---: | --- |",
        ]
        for row in parity["rows"]:
            difference = f"{row['qformer_max_abs_diff']:.2e} ({row['qformer_max_abs']:.2f})"
            lines.append(_row(row["dtype"], difference, _figure(row["logits_cosine"], ".5f"), row["same_greedy_text"]))
        lines.append("")
    if not failed("drift"):
        drift = sections["drift"]
        last = drift["output_difference"][str(drift["frames"])]
        short = (
            "" if drift["frames"] == drift["frames_planned"] else f" (cut short: {drift['frames_planned']:,} planned)"
        )
        lines += [
            f"Drift over {drift['frames']:,} frames{short} on the GPU (frame positions, Q-Former, bank "
            f"{drift['bank']}): "
            f"float32 against a float64 reference on the same features: final output max abs diff "
            f"{last['max_abs_diff']:.2e} (of {last['max_abs']:.2f}); the same slots merged at "
            f"{drift['visual_merges_agree']:.1%} of frames in the visual bank at every token position "
            f"({drift['visual_positions_agree']:.1%} of positions; first difference at frame "
            f"{drift['first_visual_difference_at']}); the Q-Former's banks differ from the reference's by at most "
            f"{last['query_banks']:.1e} of their largest entry; "
            f"all finite: {drift['finite']}; slot sizes add up to the frames read: {drift['sizes_sum_to_frames']}.",
            "",
        ]
    if not failed("vision"):
        vision = sections["vision"]
        lines += [
            f"Vision encoder (EVA ViT-g/14 shapes, {vision['tflop_per_frame']:.3f} TFLOP a frame, attention "
            f"{vision['attention']}), against {vision['peak_tflops']:g} TFLOP/s:",
            "",
            "| dtype | batch | frames/s | TFLOP/s | share of peak |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for row in vision["rows"]:
            lines.append(_row(row["dtype"], row["batch"], _figure(row["frames_per_s"], ".0f"),
                              _figure(row["tflops"], ".0f"), _figure(row["share_of_peak"], ".0%")))  # fmt: skip
        lines.append("")
    if not failed("consumer"):
        consumer = sections["consumer"]
        lines += [
            "A consumer card (this GPU capped; malmm's loader and automatic sizes see the card's free memory): "
            "the model loaded by malmm's loader from a saved folder in 4-bit, a caption at bank 40; GiB:",
            "",
            "| card | ViT | loaded | vision batch | frames | result | peak allocated | peak reserved | driver |",
            "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: |",
        ]
        refusals = []
        for row in consumer["cards"]:
            loaded = "yes" if row.get("loaded", True) else "out of memory"
            if row.get("refused_by_plan"):
                refusals.append(f"{row['card_gib']:g} GiB: {row['refused_by_plan']}")
                loaded = "refused by the plan; loaded past it" if row.get("loaded_past_the_plan") else "refused"
            for run in row.get("runs") or [{}]:
                outcome = ("ok" if run.get("ok") else "**out of memory**") if run else ""
                lines.append(_row(f"{row['card_gib']:g} GiB", row["quantize_vision"], loaded,
                                  row.get("vision_batch", ""), run.get("frames", ""), outcome,
                                  _gib(run.get("peak_allocated_gib")), _gib(run.get("peak_reserved_gib")),
                                  _gib(run.get("driver_process_gib"))))  # fmt: skip
        lines += ["", *(f"The memory plan's refusal ({refusal})." for refusal in refusals), ""] if refusals else [""]
    if not failed("generate"):
        generate = sections["generate"]
        lines += [
            f"4-bit LLM on CUDA ({generate['llm']}): {generate['beam5_tokens_per_s']:.1f} tokens/s with 5 "
            f"beams, {generate['greedy_tokens_per_s']:.1f} greedy.",
            "",
        ]
    if not failed("batching"):
        batch = sections["batching"]
        per_video = batch["step_ms_8_videos"] / 8
        questions = batch["step_ms_10_questions"] / batch["step_ms_1_question"]
        lines += [
            f"Batching (4-bit model): a Q-Former step of 8 videos at once {batch['step_ms_8_videos']:.1f} ms against "
            f"{batch['step_ms_1_video']:.1f} ms for one (**{batch['step_ms_1_video'] / per_video:.1f}x** the "
            f"videos per second); 10 questions on one video {batch['step_ms_10_questions']:.1f} ms a step against "
            f"{batch['step_ms_1_question']:.1f} ms for one (**{questions:.2f}x**); "
            f"generating 8 captions of 20 tokens (5 beams) at once {batch['generate_s_8']:.2f} s against "
            f"{batch['generate_s_1']:.2f} s for one.",
            "",
        ]
    if not failed("watch"):
        live = sections["watch"]
        lines += [
            f"`malmm watch` (LLM {live['llm']}): the clip as a stream at 2 frames/s, a caption every "
            f"{live['every']:g} s, read as fast as it decodes: {live['frames_read']} frames and {live['events']} "
            f"events in {live['seconds']:.1f} s -> **{live['frames_per_s']:.1f} frames/s read**, "
            f"{live['realtime_factor']:.1f}x real time at --fps 2.",
            "",
        ]
    if not failed("training"):
        training = sections["training"]
        lines += [
            f"Training step (`malmm train` with cached features; {training['trained_m']:.0f} M trained parameters, "
            f"batch {training['batch']}, {training['frames']} frames, bank {training['bank']}), against the "
            "training memory plan; GiB:",
            "",
            "| optimiser | s/step | examples/s | peak allocated | driver | plan |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name in ("adamw", "adamw8bit"):
            row = training[name]
            lines.append(_row(name, f"{row['step_s']:.2f}", f"{row['examples_per_s']:.2f}",
                              _gib(row.get("peak_allocated_gib")), _gib(row.get("driver_process_gib")),
                              f"{row['plan_gib']:.2f}"))  # fmt: skip
        capped = training.get("card_12gib")
        if capped:
            outcome = "fits" if capped.get("ok") else "**out of memory**"
            peak, driver = _gib(capped.get("peak_allocated_gib")), _gib(capped.get("driver_process_gib"))
            lines += [
                "",
                f"One 8-bit AdamW step on a 12 GiB card: {outcome} (peak allocated {peak} GiB, driver {driver} GiB).",
            ]
        lines.append("")
    timing = [f"{name} {s['seconds']:.0f}/{s['allowance']}" for name, s in sections.items() if "allowance" in s]
    if timing:
        lines += [f"Seconds taken / allowed, by section: {', '.join(timing)}.", ""]
    lines.append("_Commands: " + "; ".join(f"`{c}`" for c in results.get("commands", [results["command"]])) + "_")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(os.environ.get("OUT", ".")) / "gpu_check.json"))
    parser.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU, to check the script itself")
    parser.add_argument("--budget", type=float, default=400.0, help="seconds for the whole run")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="the GPU's dense float16/bfloat16 peak")
    parser.add_argument("--video", type=Path, help="a 720p clip for per_hour and watch (else one is made)")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help="sections to run, in this order: " + ",".join(SECTIONS)
    )
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="clips and model folders, kept")
    parser.add_argument("--render", type=Path, nargs="+", help="results files (a run, its follow-ups) into the docs")
    parser.add_argument("--make-clips", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_clips:
        for spec in args.make_clips:
            path, size, seconds, repeats = spec.rsplit(":", 3)
            width, height = (int(n) for n in size.split("x"))
            make_clip(Path(path), (width, height), int(seconds), int(repeats))
        return
    if args.render:
        from benchmarks.common import update_section

        update_section("gpu-check", render(merge([json.loads(p.read_text()) for p in args.render])), stamp=False)
        return
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    if unknown := [name for name in args.only if name not in SECTIONS]:
        parser.error(f"unknown sections {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    args.only = [name for name in SECTIONS if name in args.only]  # always in order of value

    import torch

    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: use --cpu to check the script itself")
    torch.set_grad_enabled(False)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # the device returns the output's last 12,000 characters
    check = Check(args)
    if {"per_hour", "watch"} & set(args.only):  # made while the first sections run
        given = {"720p": args.video} if args.video else {}
        check.clips = Clips(check.workdir, CPU_CLIPS if args.cpu else CLIPS, given)
    sections = {name: globals()[f"section_{name}"] for name in SECTIONS}
    try:
        for name in args.only:
            check.run(name, sections[name])
    finally:
        if check.clips is not None:
            check.clips.close()
    print(f"results: {check.out}", flush=True)
    print(render(merge([check.results])), flush=True)
    follow_up = check.follow_up()
    print(f"FOLLOW-UP ({follow_up['allowances_s']} s allowed): {follow_up['command']}" if follow_up
          else "FOLLOW-UP: none, every section ran", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
