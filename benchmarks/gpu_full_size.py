"""Full-size MA-LMM on a GPU: vision encoding against the FLOP limit, and time per hour of video.

    python benchmarks/gpu_full_size.py [--device cuda] [--size full] [--quantize 4bit]
                                      [--batches 8,16,32,64] [--peak-tflops 790] [--minutes 10]

Random weights with instructblip-vicuna-7b's shapes (EVA ViT-g/14 at 224 px, 39 layers; the
Q-Former; a 7B LLaMA, here in 4-bit). Vision throughput is timed per batch size with CUDA
synchronisation and set against the model's FLOPs per frame (counted from its shapes) and the
GPU's peak. End to end: `caption_video` at 1 frame/s on a synthetic 720p H.264 video, with the
time decoding alone takes beside it, scaled to one hour. On CPU, `--size mid --device cpu` runs
the same code (for checking the script; the figures that matter need a GPU).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import model_folder, update_section
from benchmarks.second_question import clip


def vision_flops_per_frame(config) -> float:
    """Multiply-adds x 2 of one frame through the ViT: the linear layers and attention."""
    v = config.vision_config
    tokens = (v.image_size // v.patch_size) ** 2 + 1
    linear = 4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size  # qkv + projection + MLP
    attention = 2 * tokens * v.hidden_size  # scores and weighted sum, per token
    patches = 3 * v.patch_size**2 * v.hidden_size * (tokens - 1)
    return 2 * (v.num_hidden_layers * tokens * (linear + attention) + patches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", default="full", choices=["tiny", "small", "mid", "full"])
    parser.add_argument("--quantize", default="4bit", choices=["none", "8bit", "4bit"])
    parser.add_argument("--batches", default="8,16,32,64")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="the GPU's dense bf16/fp16 peak")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the end-to-end video")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/malmm-bench"))
    parser.add_argument("--video", type=Path, help="an existing clip to use instead of making one")
    args = parser.parse_args()

    import torch

    from malmm_cli.pipeline import Sampling, caption_video
    from malmm_cli.video import VideoReader, probe, sample_times
    from models import Malmm

    cuda = args.device.startswith("cuda")
    dtype = torch.float16 if cuda else torch.float32
    folder = model_folder(args.workdir, args.size)
    malmm = Malmm.from_pretrained(folder, device=args.device, dtype=dtype, quantize=args.quantize)
    size = malmm.model.config.vision_config.image_size
    flops = vision_flops_per_frame(malmm.model.config)

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize()

    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        pixels = torch.randn(batch, 3, size, size, device=args.device, dtype=dtype)
        malmm.encode_frames(pixels)  # warm-up
        synchronize()
        repeats = max(3, 256 // batch) if cuda else 2
        started = time.perf_counter()
        for _ in range(repeats):
            malmm.encode_frames(pixels)
        synchronize()
        rate = batch * repeats / (time.perf_counter() - started)
        achieved = rate * flops / 1e12
        rows.append((batch, rate, achieved))
        print(f"batch {batch}: {rate:.1f} frames/s, {achieved:.1f} TFLOP/s", flush=True)

    video = args.video or clip(args.workdir, args.minutes)
    started = time.perf_counter()
    with VideoReader(video, probe(video)) as reader:
        decoded = sum(1 for _ in reader.frames(sample_times(probe(video).duration, fps=1.0)))
    decode_seconds = time.perf_counter() - started
    batch = max(rows, key=lambda row: row[1])[0]
    started = time.perf_counter()
    result = caption_video(malmm, video, sampling=Sampling(fps=1.0), batch_size=batch)
    total_seconds = time.perf_counter() - started
    per_hour = 3600 / result.duration
    peak = torch.cuda.max_memory_allocated() / 1024**3 if cuda else float("nan")
    print(f"end to end: {total_seconds:.1f} s for {result.frames} frames; decoding alone {decode_seconds:.1f} s")

    unit = f"{args.peak_tflops:g} TFLOP/s peak" if cuda else "CPU"
    lines = [
        f"## Full-size reading speed ({args.size} shapes, LLM {args.quantize}, {args.device})",
        "",
        f"Vision encoder: {flops / 1e12:.3f} TFLOP per frame (from its shapes), {dtype}.",
        "",
        "| vision batch | frames/s | TFLOP/s | share of " + unit + " |",
        "| ---: | ---: | ---: | ---: |",
        *(f"| {b} | {r:.1f} | {a:.1f} | {a / args.peak_tflops:.0%} |" for b, r, a in rows),
        "",
        f"End to end, `caption_video` at 1 frame/s on {video.name} ({result.duration / 60:.1f} minutes, "
        f"{result.frames} frames, vision batch {batch}): {total_seconds:.1f} s, of which decoding alone takes "
        f"{decode_seconds:.1f} s "
        f"({decoded} frames) -> **{total_seconds * per_hour / 60:.1f} minutes per hour of video**"
        + (f"; peak GPU memory {peak:.1f} GiB." if cuda else "."),
    ]
    update_section(f"full-size-{args.size}-{args.device.split(':')[0]}-{args.quantize}", "\n".join(lines))


if __name__ == "__main__":
    main()
