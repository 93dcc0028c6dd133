"""The prepared GPU check: what this project must measure on a GPU, unattended, in one run, one file.

    pip install --no-index --no-deps .whl/*.whl         # bitsandbytes, pillow, psutil: see docs/benchmarks.md
    python benchmarks/gpu_check.py --out $OUT/gpu_check.json [--video .whl/clip-720p.mp4] [--budget 470]
    python benchmarks/gpu_check.py --render gpu_check.json   # back on a workstation: into docs/benchmarks.md
    python benchmarks/gpu_check.py --cpu --out /tmp/check.json  # tiny shapes on the CPU (the test suite runs it)

Sections, each timed, each written to the results file as soon as it is done; one that fails is
recorded with its error and the next one runs; one that would not fit the time left is skipped:

1. memory: instructblip-vicuna-7b's architecture (random weights made on the GPU) with the LLM in
   4-bit and in 8-bit as malmm quantizes it: weights, and peak memory after one vision batch, 100
   or 3,600 frames through the memory step (vision features of that batch, varied a little) and
   one caption generation; the ratio 3,600 / 100 (goal <= 1.05).
2. generate: beam search (5 beams, 50 new tokens) and greedy decoding with the 4-bit LLM on CUDA.
3. vision: ViT-g/14 frames/s at batches 8-64 in float16 and bfloat16, against the FLOP limit.
4. parity: GPU float16 and bfloat16 against CPU float32 on the same reduced-depth, full-width
   weights (2 ViT layers, the 12-layer Q-Former, 2 LLM layers): Q-Former output, next-token
   logits, greedy tokens, after 16 frames through a bank of 4.
5. end to end: `caption_video` at 1 frame/s with 16 decode workers on a 720p clip, and decoding
   alone, scaled to one hour of video.
6. batching: several videos, or several questions, as one batch against one.
7. training: `malmm train`'s step on the 4-bit model (cached features, batch 4, 20 frames, bank
   20, the LLM checkpointed), AdamW and 8-bit AdamW: time, examples/s and peak memory against the
   training memory plan (models/memory_plan.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 1024**3
SECTIONS = ("memory", "generate", "training", "vision", "parity", "end_to_end", "batching", "watch")
# Seconds each section needs at most; a section starts only if that much time is left.
NEEDS = {"memory": 150, "generate": 30, "training": 60, "vision": 60, "parity": 90, "end_to_end": 120, "batching": 40,
         "watch": 60}  # fmt: skip


class Check:
    """The run's settings, its deadline and its results, written after every section."""

    def __init__(self, args: argparse.Namespace):
        import torch

        self.args = args
        self.cpu = args.cpu
        self.device = "cpu" if args.cpu else "cuda"
        self.half = torch.bfloat16 if args.cpu else torch.float16  # the CPU stands in with bfloat16
        self.started = time.monotonic()
        self.out = Path(args.out)
        self.results: dict = {
            "format": "malmm-gpu-check-v1",
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]]),
            "mode": "cpu (tiny shapes: checks the script, measures nothing)" if args.cpu else "gpu",
            "machine": _machine(),
            "sections": {},
        }
        self.shared: dict = {}  # what one section leaves for a later one (the 4-bit model, the vision batch)
        self.save()

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.started)

    def save(self) -> None:
        self.results["seconds"] = round(time.monotonic() - self.started, 1)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.results, indent=2) + "\n")

    def run(self, name: str, section: Callable[[Check], dict]) -> None:
        if not self.cpu and self.left() < NEEDS[name]:
            self.results["sections"][name] = {"skipped": f"out of time ({self.left():.0f} s left, needs {NEEDS[name]})"}
            self.save()
            return
        print(f"[{time.monotonic() - self.started:6.1f} s] {name} ...", flush=True)
        started = time.monotonic()
        try:
            result = section(self)
        except Exception as error:
            result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
        result["seconds"] = round(time.monotonic() - started, 1)
        self.results["sections"][name] = result
        self.save()
        print(f"[{time.monotonic() - self.started:6.1f} s] {name}: {json.dumps(result)[:400]}", flush=True)


def _machine() -> dict:
    info = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    for package in ("torch", "transformers", "bitsandbytes", "av", "opencv-python-headless", "pillow"):
        try:
            from importlib.metadata import version

            info[package] = version(package)
        except Exception:
            info[package] = None
    try:
        import torch

        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / GIB, 1)
    except Exception as error:
        info["torch_error"] = str(error)
    return info


# --- models made on the device, random weights ---------------------------------------------------------


def _config(check: Check, reduced: bool = False):
    from models.architectures import architecture, reduced_depth
    from tests.tiny_models import tiny_config

    if check.cpu:
        return tiny_config()
    config = architecture("vicuna-7b")
    return reduced_depth(config, 2, 2) if reduced else config


def _random_model(config, device: str, dtype, quantize: str):
    """MA-LMM of `config` with random weights made where it runs (no download, no disk), the ViT and
    LLM in `dtype`, the memory path in float32, the LLM's linear layers quantized as malmm's loading
    quantizes them (nf4 with double quantization / LLM.int8; lm_head and everything else kept)."""
    import torch
    from torch import nn

    from models.modeling import MalmmForConditionalGeneration

    torch.manual_seed(0)
    with torch.device(device):  # made and initialised where it runs (buffers such as rotary tables included)
        model = MalmmForConditionalGeneration(config)
    with torch.no_grad():
        model.query_tokens.normal_(std=0.5)
    model.to(dtype)
    model.keep_memory_path_in_float32()
    if quantize != "none":
        import bitsandbytes as bnb

        for parent in list(model.language_model.modules()):
            for child_name, child in list(parent.named_children()):
                if type(child) is not nn.Linear or child_name == "lm_head":
                    continue
                if quantize == "4bit":
                    layer = bnb.nn.Linear4bit(
                        child.in_features,
                        child.out_features,
                        bias=child.bias is not None,
                        compute_dtype=dtype,
                        compress_statistics=True,
                        quant_type="nf4",
                    )
                    layer.weight = bnb.nn.Params4bit(
                        child.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=True
                    )
                else:  # Int8Params quantizes when moved off the CPU, as in malmm's quantize_vision_8bit
                    layer = bnb.nn.Linear8bitLt(
                        child.in_features,
                        child.out_features,
                        bias=child.bias is not None,
                        has_fp16_weights=False,
                        threshold=6.0,
                    )
                    layer.weight = bnb.nn.Int8Params(
                        child.weight.data.cpu(), requires_grad=False, has_fp16_weights=False
                    )
                if child.bias is not None:
                    layer.bias = nn.Parameter(child.bias.data, requires_grad=False)
                setattr(parent, child_name, layer.to(device))
    model.eval().requires_grad_(False)
    if device == "cuda":
        torch.cuda.empty_cache()
    return model


def _malmm(model):
    """A Malmm around a model, with the test tokenizers (their ids fit any vocabulary)."""
    from transformers import BlipImageProcessorPil

    from models import Malmm
    from tests.tiny_models import llama_tokenizer, qformer_tokenizer

    size = model.config.vision_config.image_size
    processor = BlipImageProcessorPil(size={"height": size, "width": size})
    return Malmm(model, llama_tokenizer(), qformer_tokenizer(), processor)


def _synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


# --- 1 and 2: memory at 4-bit and 8-bit; generation ------------------------------------------------------


def section_memory(check: Check) -> dict:
    import torch

    from models import CAPTION, GenerationSettings

    frame_counts = (10, 50) if check.cpu else (100, 3600)
    modes = ("4bit", "8bit") if _has_bitsandbytes() else ()
    if not modes:
        return {"error": "bitsandbytes is not installed: install the carried wheel first"}
    result = {"frames": list(frame_counts), "bank": CAPTION.memory_bank_length, "modes": {}}
    for mode in modes:
        model = _random_model(_config(check), check.device, check.half, mode)
        malmm = _malmm(model)
        size = model.config.vision_config.image_size
        row = {"weights_gib": _allocated(check) / GIB}
        generator = torch.Generator(device=check.device).manual_seed(0)
        for frames in frame_counts:
            _reset_peak(check)
            pixels = torch.randn(8, 3, size, size, device=check.device, generator=generator)
            features = malmm.encode_frames(pixels)  # [8, N, C]: one real vision batch
            state = malmm.new_memory(CAPTION.prompt(), CAPTION.memory_bank_length, total_frames=frames)
            started = time.perf_counter()
            for index in range(frames):
                jitter = 0.05 * torch.randn(features.shape[1:], device=check.device, generator=generator)
                output, state = malmm.step(state, (features[index % 8] + jitter).unsqueeze(0), index)
            _synchronize(check.device)
            step_ms = (time.perf_counter() - started) * 1000 / frames
            text = malmm.generate(output, CAPTION.prompt(), GenerationSettings(max_new_tokens=20))[0]
            row[f"peak_gib_{frames}"] = _peak(check) / GIB
            row[f"step_ms_{frames}"] = step_ms
            row["state_mib"] = state.nbytes() / 1024**2
            row["caption_chars"] = len(text)
        low, high = (row[f"peak_gib_{n}"] for n in frame_counts)
        row["ratio"] = high / low if low else None
        result["modes"][mode] = row
        if mode == "4bit":
            check.shared["malmm_4bit"] = malmm
        else:
            del malmm, model
            if check.device == "cuda":
                torch.cuda.empty_cache()
    return result


def section_generate(check: Check) -> dict:
    import torch

    from models import CAPTION, GenerationSettings

    malmm = check.shared.get("malmm_4bit")
    if malmm is None:
        return {"skipped": "no 4-bit model (the memory section did not make one)"}
    state = malmm.new_memory(CAPTION.prompt(), 4)
    features = torch.randn(1, *_feature_shape(malmm), device=check.device)
    output, _ = malmm.step(state, features)
    result = {"llm": type(malmm.model.language_model.model.layers[0].mlp.down_proj).__name__}
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


def section_training(check: Check) -> dict:
    """A training step as `malmm train` takes it once features are cached, on the 4-bit model (on
    the CPU the tiny model unquantized: its 4-bit layers there are not what a GPU trains)."""
    import torch

    from models.memory_plan import TrainingShape, plan_training
    from models.training import answer_loss, make_optimizer, parameter_groups, read_clip, trainable_parameters

    malmm = _malmm(_random_model(_config(check), "cpu", torch.float32, "none")) if check.cpu else None
    malmm = malmm or check.shared.get("malmm_4bit")
    if malmm is None:
        return {"skipped": "no 4-bit model (the memory section did not make one)"}
    model = malmm.model
    batch, frames, bank = 4, (6 if check.cpu else 20), (3 if check.cpu else 20)
    prompts = ["Question: what is the man doing in the kitchen? Short answer:"] * batch
    targets = ["he is cutting vegetables for a soup"] * batch
    features = torch.randn(batch, frames, *_feature_shape(malmm), device=check.device)
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
            _reset_peak(check)
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
            result[name] = {"step_s": seconds, "examples_per_s": batch / seconds, "peak_gib": _peak(check) / GIB,
                            "plan_gib": plan.total / GIB, "plan": plan.describe()}  # fmt: skip
            model.zero_grad(set_to_none=True)
    finally:
        model.requires_grad_(False)
        model.qformer.eval()
        if on_gpu:
            model.language_model.gradient_checkpointing_disable()
            torch.cuda.empty_cache()
    return result


def section_batching(check: Check) -> dict:
    """What reading several videos, or several questions, as one batch costs against one: the
    full-size Q-Former step (latency-bound on a GPU) and generation, on the 4-bit model."""
    import torch

    from models import CAPTION, QUESTION, GenerationSettings

    malmm = check.shared.get("malmm_4bit")
    if malmm is None:
        return {"skipped": "no 4-bit model (the memory section did not make one)"}
    features = torch.randn(1, *_feature_shape(malmm), device=check.device)
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


def _feature_shape(malmm) -> tuple[int, int]:
    v = malmm.model.config.vision_config
    return (v.image_size // v.patch_size) ** 2 + 1, v.hidden_size


def _has_bitsandbytes() -> bool:
    try:
        import models.quantization  # noqa: F401, I001  (its log filters before bitsandbytes loads)
        import bitsandbytes  # noqa: F401
    except ImportError:
        return False
    return True


def _allocated(check: Check) -> int:
    import torch

    return torch.cuda.memory_allocated() if check.device == "cuda" else 0


def _reset_peak(check: Check) -> None:
    import torch

    if check.device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak(check: Check) -> int:
    import torch

    return torch.cuda.max_memory_allocated() if check.device == "cuda" else 0


# --- 3: vision throughput ---------------------------------------------------------------------------------


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
                while repeats < 3 or time.perf_counter() - started < (0.2 if check.cpu else 1.5):
                    encode_vision(vision, pixels)
                    repeats += 1
                _synchronize(check.device)
            rate = batch * repeats / (time.perf_counter() - started)
            achieved = rate * flops / 1e12
            result["rows"].append(
                {
                    "dtype": dtype_name,
                    "batch": batch,
                    "frames_per_s": rate,
                    "tflops": achieved,
                    "share_of_peak": achieved / check.args.peak_tflops,
                }
            )
    best = max(result["rows"], key=lambda row: row["frames_per_s"])
    check.shared["best_batch"] = best["batch"]
    return result


# --- 4: half precision on the GPU against float32 on the CPU ---------------------------------------------


def section_parity(check: Check) -> dict:
    import torch

    from models import CAPTION, GenerationSettings, Malmm
    from tests.tiny_models import build_model_folder

    folder = Path(tempfile.mkdtemp(prefix="malmm-parity-")) / "model"
    build_model_folder(folder, _config(check, reduced=True), dtype=torch.float16)  # the weights both sides use

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
    return result


# --- 5: end to end ------------------------------------------------------------------------------------------


def _make_clip(path: Path, seconds: int, size: tuple[int, int], fps: int = 30) -> subprocess.Popen:
    """Write a clip with OpenCV (mp4v: OpenCV's wheels cannot encode H.264) in another process."""
    code = (
        "import cv2, numpy as np, sys\n"
        f"w = cv2.VideoWriter({str(path)!r}, cv2.VideoWriter_fourcc(*'mp4v'), {fps}, {size})\n"
        f"y, x = np.mgrid[0:{size[1]}, 0:{size[0]} + 512]\n"
        "base = (128 + 80 * np.sin((x + y) / 11.0) * np.cos(y / 23.0)).astype(np.uint8)\n"
        f"for i in range({seconds * fps}):\n"
        f"    luma = base[:, (3 * i) % 512:(3 * i) % 512 + {size[0]}]\n"
        "    w.write(np.dstack([luma, np.roll(luma, 7, 0), np.roll(luma, 13, 1)]))\n"
        "w.release()\n"
    )
    return subprocess.Popen([sys.executable, "-c", code])


def section_end_to_end(check: Check) -> dict:
    from malmm_cli.media.parallel import ParallelReader
    from malmm_cli.media.plans import plan_times
    from malmm_cli.media.probe import probe
    from malmm_cli.reading.pipeline import Sampling, caption_video

    video = check.shared["video"]
    writer = check.shared.get("video_writer")
    if writer is not None and writer.wait(timeout=max(1, check.left() - 60)) != 0:
        return {"error": "the clip could not be written"}
    info = probe(video)
    workers = 2 if check.cpu else 16
    times = plan_times(info, fps=1.0).times
    started = time.perf_counter()
    with ParallelReader(video, info, workers) as reader:
        decoded = sum(1 for _ in reader.frames(times))
    decode_seconds = time.perf_counter() - started
    malmm = check.shared.get("malmm_4bit")
    if malmm is None:
        malmm = _malmm(_random_model(_config(check), check.device, check.half, "none"))
    batch = check.shared.get("best_batch", 8)
    _synchronize(check.device)
    started = time.perf_counter()
    result = caption_video(malmm, video, sampling=Sampling(fps=1.0, decode_workers=workers), batch_size=batch)
    _synchronize(check.device)
    seconds = time.perf_counter() - started
    per_hour = 3600 / info.duration
    return {
        "video": {
            "name": video.name,
            "codec": info.codec,
            "size": f"{info.width}x{info.height}",
            "fps": info.fps,
            "minutes": info.duration / 60,
        },
        "frames": result.frames,
        "decode_workers": workers,
        "vision_batch": batch,
        "llm": type(malmm.model.language_model.model.layers[0].mlp.down_proj).__name__,
        "seconds": seconds,
        "decode_only_seconds": decode_seconds,
        "decoded": decoded,
        "minutes_per_hour_of_video": seconds * per_hour / 60,
        "decode_minutes_per_hour_of_video": decode_seconds * per_hour / 60,
        "peak_gib": _peak(check) / GIB if check.device == "cuda" else None,
        "warnings": result.warnings,
    }


def section_watch(check: Check) -> dict:
    """How fast `malmm watch` reads on this model: the clip given to it as a stream, read as fast as
    it decodes, with a buffer that never drops, at 2 frames/s and a caption every 10 s: the
    frames/s it reads is the densest --fps it could follow in real time."""
    from malmm_cli.jobs.watch import watch
    from malmm_cli.media.live import parse_source

    video = check.shared["video"]
    writer = check.shared.get("video_writer")
    if writer is not None and writer.wait(timeout=max(1, check.left() - 40)) != 0:
        return {"error": "the clip could not be written"}
    malmm = check.shared.get("malmm_4bit")
    if malmm is None:
        malmm = _malmm(_random_model(_config(check), check.device, check.half, "none"))
    every = 2.0 if check.cpu else 10.0
    events = []
    _synchronize(check.device)
    started = time.perf_counter()
    summary = watch(malmm, parse_source(str(video)), every=every, fps=2.0, on_event=events.append, buffered=100_000,
                    batch_size=check.shared.get("best_batch", 8))  # fmt: skip
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
        "llm": type(malmm.model.language_model.model.layers[0].mlp.down_proj).__name__,
        "peak_gib": _peak(check) / GIB if check.device == "cuda" else None,
    }


# --- the results, as a section of docs/benchmarks.md ---------------------------------------------------------


def _figure(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def render(results: dict) -> str:
    """docs/benchmarks.md's GPU section from a results file."""
    machine, sections = results["machine"], results["sections"]
    lines = [
        "## GPU check (`benchmarks/gpu_check.py`)",
        "",
        f"{machine.get('gpu', 'no GPU')} ({machine.get('gpu_memory_gib', '?')} GiB), {machine['cpu_count']} cores; "
        f"torch {machine.get('torch')} (CUDA {machine.get('cuda')}), transformers {machine.get('transformers')}, "
        f"bitsandbytes {machine.get('bitsandbytes')}, PyAV {machine.get('av')}; run {results['date']}, "
        f"{results['seconds']:.0f} s in all, mode: {results['mode']}. Random weights throughout.",
        "",
    ]

    def failed(name: str) -> bool:
        section = sections.get(name, {"skipped": "not run"})
        problem = section.get("error") or section.get("skipped")
        if problem:
            lines.extend([f"- {name}: **not measured**: {problem}", ""])
        return bool(problem)

    if not failed("memory"):
        memory = sections["memory"]
        low, high = memory["frames"]
        lines += [
            f"Peak GPU memory, instructblip-vicuna-7b architecture, bank {memory['bank']}, one vision batch of 8, "
            "a caption of 20 tokens (5 beams):",
            "",
            f"| LLM | weights GiB | peak GiB, {low} frames | peak GiB, {high} frames | ratio | step ms |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for mode, row in memory["modes"].items():
            figures = [(row["weights_gib"], ".2f"), (row[f"peak_gib_{low}"], ".2f"), (row[f"peak_gib_{high}"], ".2f"),
                       (row["ratio"], ".3f"), (row[f"step_ms_{high}"], ".2f")]  # fmt: skip
            lines.append(_row(mode, *(_figure(value, spec) for value, spec in figures)))
        lines.append("")
    if not failed("generate"):
        generate = sections["generate"]
        lines += [
            f"4-bit LLM on CUDA ({generate['llm']}): {generate['beam5_tokens_per_s']:.1f} tokens/s with 5 "
            f"beams, {generate['greedy_tokens_per_s']:.1f} greedy.",
            "",
        ]
    if not failed("training"):
        training = sections["training"]
        lines += [
            f"Training step (`malmm train` with cached features; {training['trained_m']:.0f} M trained parameters, "
            f"batch {training['batch']}, {training['frames']} frames, bank {training['bank']}), peak GPU memory "
            "against the training memory plan:",
            "",
            "| optimiser | s/step | examples/s | peak GiB | plan GiB |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name in ("adamw", "adamw8bit"):
            row = training[name]
            lines.append(_row(name, f"{row['step_s']:.2f}", f"{row['examples_per_s']:.2f}",
                              f"{row['peak_gib']:.2f}", f"{row['plan_gib']:.2f}"))  # fmt: skip
        lines.append("")
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
    if not failed("end_to_end"):
        e2e = sections["end_to_end"]
        video = e2e["video"]
        lines += [
            f"End to end, `caption_video` at 1 frame/s, {e2e['decode_workers']} decode workers, vision batch "
            f"{e2e['vision_batch']}, LLM {e2e['llm']}, on a {video['minutes']:.1f}-minute {video['size']} "
            f"{video['codec']} clip at {video['fps']:g} fps: {e2e['seconds']:.1f} s for {e2e['frames']} frames "
            f"(decoding alone {e2e['decode_only_seconds']:.1f} s) -> **{e2e['minutes_per_hour_of_video']:.1f} "
            f"minutes per hour of video** (decoding alone {e2e['decode_minutes_per_hour_of_video']:.1f}).",
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
    lines.append(f"_Command: `{results['command']}`_")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(os.environ.get("OUT", ".")) / "gpu_check.json"))
    parser.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU, to check the script itself")
    parser.add_argument("--budget", type=float, default=470.0, help="seconds for the whole run")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="the GPU's dense float16/bfloat16 peak")
    parser.add_argument("--video", type=Path, help="a clip for the end-to-end section (else one is written)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections to run")
    parser.add_argument("--render", type=Path, help="write a results file into docs/benchmarks.md and exit")
    args = parser.parse_args()
    if args.render:
        from benchmarks.common import update_section

        update_section("gpu-check", render(json.loads(args.render.read_text())), stamp=False)
        return

    import torch

    if not args.cpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: use --cpu to check the script itself")
    torch.set_grad_enabled(False)
    check = Check(args)
    wanted = args.only.split(",")
    if "end_to_end" in wanted or "watch" in wanted:  # written while the other sections run
        if args.video is not None and args.video.exists():
            check.shared["video"] = args.video
        else:
            clip = Path(tempfile.mkdtemp(prefix="malmm-clip-")) / "clip-720p.mp4"
            seconds, size = (4, (160, 120)) if args.cpu else (180, (1280, 720))
            check.shared["video"], check.shared["video_writer"] = clip, _make_clip(clip, seconds, size)
    sections = {
        "memory": section_memory,
        "generate": section_generate,
        "vision": section_vision,
        "parity": section_parity,
        "end_to_end": section_end_to_end,
        "batching": section_batching,
        "training": section_training,
        "watch": section_watch,
    }
    for name in SECTIONS:
        if name in wanted:
            check.run(name, sections[name])
    print(f"results: {check.out}", flush=True)
    print(render(check.results), flush=True)


if __name__ == "__main__":
    main()
