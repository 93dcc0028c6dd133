"""Frames per second of malmm's reading loop against a reference-style loop, same weights and frames.

    python benchmarks/encode_throughput.py [--size mid] [--frames 80] [--bank 40] [--device cpu] [--repeats 3]

Reference-style, as MA-LMM's LAVIS code runs: the whole clip is loaded first as one tensor, then
each frame goes through the vision encoder alone and through the Q-Former, whose every layer
re-projects its whole memory bank to keys and values. malmm: the vision encoder takes frames in
batches, and the banks keep their keys and values (memory.py), so a frame costs its own
projection only. Both produce the same Q-Former outputs (checked here to 1e-4). Frames are
random pixels: decoding is measured by benchmarks/decode.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.common import model_folder, update_section
from models import CAPTION, Malmm
from models.memory import compress_slots
from models.modeling import frame_position
from models.qformer import attend, project


@dataclass
class ReferenceMemory:
    """The reference's memory: raw banks in time order, concatenated and compressed each frame."""

    length: int
    total_frames: int
    frames_seen: int = 0
    visual: tuple[torch.Tensor, torch.Tensor] | None = None  # (slots [B, S, N, C], sizes [B, S, N])
    queries: list[tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=list)


def remember(bank: tuple[torch.Tensor, torch.Tensor] | None, entry: torch.Tensor, length: int) -> tuple:
    ones = torch.ones(entry.shape[0], 1, entry.shape[1])
    slots, sizes = (entry.unsqueeze(1), ones) if bank is None else (
        torch.cat([bank[0], entry.unsqueeze(1)], dim=1), torch.cat([bank[1], ones], dim=1))  # fmt: skip
    return compress_slots(slots, sizes) if slots.shape[1] > length else (slots, sizes)


def flat(bank: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return bank[0].reshape(bank[0].shape[0], -1, bank[0].shape[-1])


def reference_step(model, memory: ReferenceMemory, ids, mask, features: torch.Tensor) -> torch.Tensor:
    """The reference's per-frame computation: every layer re-projects its whole bank, every frame."""
    qformer = model.qformer
    table = model.frame_position_embedding.weight
    frame = features + frame_position(table, memory.frames_seen, memory.total_frames)
    queries = model.query_tokens.expand(ids.shape[0], -1, -1)
    hidden = qformer.embeddings(input_ids=ids, query_embeds=queries)
    token_mask = torch.cat([torch.ones(ids.shape[0], queries.shape[1], dtype=torch.bool), mask.bool()], dim=1)
    visual = frame if memory.visual is None else torch.cat([flat(memory.visual), frame], dim=1)
    memory.queries = memory.queries or [None] * len(qformer.encoder.layer)
    for number, layer in enumerate(qformer.encoder.layer):
        past = memory.queries[number]
        context = hidden if past is None else torch.cat([flat(past), hidden], dim=1)
        steps = 1 if past is None else past[0].shape[1] + 1
        attended = attend(layer.attention, hidden, project(layer.attention, context), token_mask.repeat(1, steps))
        memory.queries[number] = remember(past, hidden, memory.length)
        query = attended[:, : queries.shape[1]]
        if layer.has_cross_attention:
            query = attend(layer.crossattention, query, project(layer.crossattention, visual))
        text = attended[:, queries.shape[1] :]
        hidden = torch.cat([layer.output_query(layer.intermediate_query(query), query),
                            layer.output(layer.intermediate(text), text)], dim=1)  # fmt: skip
    memory.visual = remember(memory.visual, frame, memory.length)
    memory.frames_seen += 1
    return hidden[:, : queries.shape[1]]


@torch.inference_mode()
def reference_loop(malmm: Malmm, clip: torch.Tensor, bank: int) -> torch.Tensor:
    tokens = malmm.qformer_tokenizer([CAPTION.prompt()], return_tensors="pt")
    memory = ReferenceMemory(bank, clip.shape[0])
    output = None
    for frame in clip:  # one frame at a time through the vision encoder, then the Q-Former
        features = malmm.model.vision_features(frame.unsqueeze(0).to(malmm.device))
        output = reference_step(malmm.model, memory, tokens.input_ids, tokens.attention_mask, features)
    return output


@torch.inference_mode()
def malmm_loop(malmm: Malmm, frames: list[torch.Tensor], bank: int, batch: int) -> torch.Tensor:
    state = malmm.new_memory(CAPTION.prompt(), bank, total_frames=len(frames))
    output = None
    for start in range(0, len(frames), batch):  # frames arrive as a stream; the ViT takes a batch
        features = malmm.encode_frames(torch.stack(frames[start : start + batch]).to(malmm.device))
        for feature in features:
            output, state = malmm.step(state, feature.unsqueeze(0))
    return output


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mid", choices=["tiny", "mid", "full"])
    parser.add_argument("--frames", type=int, default=CAPTION.frames)
    parser.add_argument("--bank", type=int, default=CAPTION.memory_bank_length)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3, help="alternated runs of each loop; the median counts")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/malmm-bench"))
    args = parser.parse_args()
    dtype = torch.float32 if args.device == "cpu" else torch.float16
    quantize = "4bit" if args.size == "full" else "none"
    malmm = Malmm.from_pretrained(model_folder(args.workdir, args.size), device=args.device, dtype=dtype,
                                  quantize=quantize)  # fmt: skip
    size = malmm.model.config.vision_config.image_size
    clip = torch.randn(args.frames, 3, size, size, generator=torch.Generator().manual_seed(0))  # loaded first
    frames = list(clip)
    malmm_loop(malmm, frames[:2], args.bank, args.batch)  # warm-up
    timings: dict[str, list[float]] = {"reference-style loop": [], "malmm": []}
    outputs = {}
    for repeat in range(args.repeats):  # alternated, so a slow spell of a shared machine hits both
        for name, run in (("reference-style loop", lambda: reference_loop(malmm, clip, args.bank)),
                          ("malmm", lambda: malmm_loop(malmm, frames, args.bank, args.batch))):  # fmt: skip
            synchronize(malmm.device)
            started = time.perf_counter()
            outputs[name] = run()
            synchronize(malmm.device)
            timings[name].append(time.perf_counter() - started)
            seconds = timings[name][-1]
            print(f"run {repeat + 1}, {name}: {args.frames / seconds:.2f} frames/s ({seconds:.1f} s)", flush=True)
    difference = (outputs["malmm"].float() - outputs["reference-style loop"].float()).abs().max().item()
    speedups = [r / m for r, m in zip(timings["reference-style loop"], timings["malmm"], strict=True)]
    speedup = statistics.median(speedups)
    print(f"speed-up {speedup:.2f}x (median of {', '.join(f'{x:.2f}' for x in speedups)}), "
          f"max output difference {difference:.1e}")  # fmt: skip
    # Same computation, other summation order (keys in another order, merged projections): after 80
    # frames through 12 layers float32 drifts by ~1e-4. Exactness is the golden tests' job (1e-5).
    if difference > (1e-3 if dtype == torch.float32 else 5e-2):
        raise SystemExit(f"outputs differ by {difference:.1e}: the comparison is not fair")
    vision = malmm.model.config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    qformer_layers = malmm.model.config.qformer_config.num_hidden_layers

    def row(name: str, seconds: list[float]) -> str:
        each = " / ".join(f"{x:.1f}" for x in seconds)
        return f"| {name} | {args.frames / statistics.median(seconds):.2f} | {each} |"

    lines = [
        f"## Reading throughput: malmm vs a reference-style loop ({args.size} model, {args.device})",
        "",
        f"{args.frames} frames, memory bank {args.bank}, vision batch {args.batch}, {dtype}; "
        f"ViT {vision.hidden_size} wide, {vision.num_hidden_layers} layers, {tokens} tokens per frame; "
        f"Q-Former {qformer_layers} layers. Same weights and frames; outputs agree to {difference:.1e}.",
        "",
        "| loop | frames/s (median) | seconds, each run |",
        "| --- | ---: | --- |",
        *(row(name, seconds) for name, seconds in timings.items()),
        "",
        f"**Speed-up: {speedup:.2f}x** (median over {args.repeats} alternated run(s): "
        f"{', '.join(f'{x:.2f}x' for x in speedups)}).",
    ]
    update_section(f"encode-throughput-{args.size}-{args.device.split(':')[0]}", "\n".join(lines))


if __name__ == "__main__":
    main()
