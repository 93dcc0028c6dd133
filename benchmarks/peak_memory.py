"""Peak memory against the number of frames read: malmm beside transformers' InstructBlipVideo.

    python benchmarks/peak_memory.py [--size small] [--device cpu] [--quantize none]
                                     [--frames 100,1000,3600] [--compare-video] [--limit-gb 12]

Each measurement is a fresh process: load the model, read N frames (random pixels, streamed in
batches for malmm; all at once for InstructBlipVideo, which takes the whole clip as one tensor and
puts 32 query tokens per frame into the LLM), then generate a caption. On CPU the figure is the
process's peak RSS; on a GPU, torch's peak allocated memory. InstructBlipVideo runs under an
address-space limit (--limit-gb) so that it fails cleanly instead of taking the machine down.

Sizes: tiny (32 px frames), small (the tiny model at 224 px, 257 tokens a frame), mid (~0.4B
parameters), full (instructblip-vicuna-7b shapes: needs a GPU). Weights are random.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import model_folder, run_child, update_section

VISION_BATCH = 8


def child(kind: str, folder: Path, frames: int, device: str, quantize: str) -> None:
    """One measurement; prints a JSON line. Runs in its own process."""
    import torch

    from models import CAPTION, GenerationSettings, Malmm

    dtype = torch.float32 if device == "cpu" else torch.float16
    malmm = Malmm.from_pretrained(folder, device=device, dtype=dtype, quantize=quantize)
    size = malmm.model.config.vision_config.image_size
    generator = torch.Generator().manual_seed(0)
    settings = GenerationSettings(max_new_tokens=10)
    with torch.inference_mode():
        if kind == "malmm":
            state = malmm.new_memory(CAPTION.prompt(), CAPTION.memory_bank_length, total_frames=frames)
            for start in range(0, frames, VISION_BATCH):
                pixels = torch.randn(min(VISION_BATCH, frames - start), 3, size, size, generator=generator)
                for feature in malmm.encode_frames(pixels.to(device)):
                    output, state = malmm.step(state, feature.unsqueeze(0))
            text = malmm.generate(output, CAPTION.prompt(), settings)[0]
        else:
            text = instructblip_video(malmm, folder, frames, size, generator, settings, device, dtype)
    peak_gpu = torch.cuda.max_memory_allocated() / 1024**2 if device.startswith("cuda") else None
    print(json.dumps({"frames": frames, "peak_gpu_mib": peak_gpu, "text": text}))


def instructblip_video(malmm, folder, frames, size, generator, settings, device, dtype) -> str:
    """transformers' InstructBlipVideo on the same weights: every frame at once, 32 tokens each."""
    import torch
    from transformers import InstructBlipVideoConfig, InstructBlipVideoForConditionalGeneration

    from models import CAPTION

    source = malmm.model.config
    config = InstructBlipVideoConfig(
        vision_config=source.vision_config.to_dict(), qformer_config=source.qformer_config.to_dict(),
        text_config=source.text_config.to_dict(), num_query_tokens=source.num_query_tokens,
        video_token_index=source.image_token_index,
    )  # fmt: skip
    video = InstructBlipVideoForConditionalGeneration(config).to(device, dtype).eval()
    video.load_state_dict(malmm.model.state_dict(), strict=False)  # same module names
    del malmm.model
    pixels = torch.randn(1, frames, 3, size, size, generator=generator).to(device, dtype)  # the whole clip
    qformer = malmm.qformer_tokenizer([CAPTION.prompt()], return_tensors="pt").to(device)
    prompt = malmm.tokenizer([CAPTION.prompt()], return_tensors="pt").input_ids.to(device)
    video_tokens = torch.full((1, config.num_query_tokens * frames), config.video_token_index, device=device)
    input_ids = torch.cat([video_tokens, prompt], dim=1)
    output = video.generate(
        pixel_values=pixels, qformer_input_ids=qformer.input_ids, qformer_attention_mask=qformer.attention_mask,
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), num_beams=settings.num_beams,
        max_new_tokens=settings.max_new_tokens, pad_token_id=malmm.tokenizer.pad_token_id,
    )  # fmt: skip
    return malmm.tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True)


def measure(kind: str, folder: Path, frames: int, device: str, quantize: str, limit_gb: float | None) -> dict:
    command = [__file__, "--child", kind, "--folder", str(folder), "--frames", str(frames),
               "--device", device, "--quantize", quantize]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    run = run_child(command, env=env, limit_bytes=int(limit_gb * 1024**3) if limit_gb else None)
    if run.returncode != 0:
        reason = "out of memory" if "MemoryError" in run.stderr or "memory" in run.stderr.lower() else "failed"
        tail = run.stderr.strip().splitlines()[-1:] or [f"exit {run.returncode}"]
        return {"ok": False, "reason": f"{reason} ({tail[0][:120]})", "seconds": run.seconds}
    data = json.loads(run.stdout.strip().splitlines()[-1])
    return {"ok": True, "rss": run.peak_rss_mib, "gpu": data["peak_gpu_mib"], "seconds": run.seconds}


def cell(result: dict, device: str) -> str:
    if not result["ok"]:
        return result["reason"]
    figure = result["gpu"] if device.startswith("cuda") else result["rss"]
    return f"{figure:.0f} MiB ({result['seconds']:.0f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "mid", "full"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quantize", default="none", choices=["none", "8bit", "4bit"])
    parser.add_argument("--frames", default="100,1000,3600")
    parser.add_argument("--compare-video", action="store_true", help="also run transformers' InstructBlipVideo")
    parser.add_argument("--limit-gb", type=float, default=12.0, help="address-space limit for InstructBlipVideo")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/malmm-bench"))
    parser.add_argument("--child", choices=["malmm", "video"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    frame_counts = [int(n) for n in args.frames.split(",")]
    if args.child:
        child(args.child, args.folder, frame_counts[0], args.device, args.quantize)
        return
    folder = model_folder(args.workdir, args.size)
    rows = {}
    for frames in frame_counts:
        rows[frames] = {"malmm": measure("malmm", folder, frames, args.device, args.quantize, None)}
        if args.compare_video:
            rows[frames]["video"] = measure("video", folder, frames, args.device, args.quantize, args.limit_gb)
        print(frames, {k: cell(v, args.device) for k, v in rows[frames].items()}, flush=True)
    unit = "peak GPU memory allocated" if args.device.startswith("cuda") else "peak RSS"
    first, last = rows[frame_counts[0]]["malmm"], rows[frame_counts[-1]]["malmm"]
    key = "gpu" if args.device.startswith("cuda") else "rss"
    ratio = last[key] / first[key] if first["ok"] and last["ok"] else float("nan")
    header = "| frames | malmm |" + (" InstructBlipVideo |" if args.compare_video else "")
    lines = [
        f"## Peak memory against frames read ({args.size} model, {args.device}, quantize {args.quantize})",
        "",
        f"{unit} of a fresh process that loads the model, reads N frames and generates a caption",
        "(wall seconds in brackets).",
    ]
    if args.compare_video:
        lines += [
            "InstructBlipVideo (transformers) takes all frames at once and puts 32 query tokens per frame",
            f"into the LLM; it runs under a {args.limit_gb:g} GiB address-space limit.",
        ]
    lines += ["", header, "| ---: | ---: |" + (" ---: |" if args.compare_video else "")]
    for frames, results in rows.items():
        lines.append(f"| {frames} | " + " | ".join(cell(results[k], args.device) for k in results) + " |")
    if len(frame_counts) > 1:
        lines += ["", f"**malmm, {frame_counts[-1]} / {frame_counts[0]} frames: {ratio:.3f}.**"]
    update_section(f"peak-memory-{args.size}-{args.device.split(':')[0]}-{args.quantize}", "\n".join(lines))


if __name__ == "__main__":
    main()
