"""Does a Mamba temporal module help where order in time matters? (issue 17)

    python benchmarks/temporal_order.py [--epochs 12] [--lrs 2e-3,1e-2] [--seeds 0,1,2] [--train 60] [--held 60]

The task: each clip shows a first colour, then a second, then grey to the end (segment lengths
drawn per clip, colours two of red, green and blue); the label is the colour that came first.
Every clip holds both colours and ends in grey, so neither the last frame nor the set of frames
tells the answer: only their order does. The memory bank can encode order through its trained
frame positions, so the comparison is between
- bank: MA-LMM's training (Q-Former, query tokens, projection, frame positions), no module;
- bank + mamba: the Q-Former frozen as loaded, the Mamba module trained alone;
- bank + mamba + Q-Former: both trained together (--temporal-with-qformer);
each with `malmm train --task classify` on the same clips, epochs and batch (the same budget: the
same optimiser steps), at each learning rate of `--lrs` (the module alone starts behind a closed
gate, so it may want another rate than the Q-Former), then scored by `malmm predict --checkpoint
RUN` on held-out clips (other seeds, so other lengths and shades). Tiny random-weight models
(tests/tiny_models.py), on the CPU.

Then the module's cost per frame against the Q-Former step, at InstructBLIP's real widths (a
random-weight Q-Former of 12 layers and 768 features reading 257 tokens of 1408 through a bank
of 20, 32 queries; the module over those 32 queries), median of 100 frames after the bank filled.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from typer.testing import CliRunner

from benchmarks.common import update_section, write_colour_clip

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}
GREY = (128, 128, 128)
FRAMES = 8  # sampled per clip, one per equal segment
BANK = 4  # shorter than the clip: merging is part of what is trained
DECODED = 24  # frames in each file (3 s at 8 fps)
ARMS = {
    "bank": [],
    "bank + mamba": ["--temporal", "mamba"],
    "bank + mamba + Q-Former": ["--temporal", "mamba", "--temporal-with-qformer"],
}


def order_clip(path: Path, first: str, second: str, seed: int, size: int = 32) -> None:
    """first colour, then second, then grey: each segment at least a quarter of the clip long."""
    draw = np.random.default_rng(seed)
    a = int(draw.integers(DECODED // 4, DECODED // 2))
    b = int(draw.integers(DECODED // 4, DECODED - a - DECODED // 8))
    colours = [COLOURS[first]] * a + [COLOURS[second]] * b + [GREY] * (DECODED - a - b)
    write_colour_clip(path, colours, 8, size, draw)


def make_data(folder: Path, train: int, held: int) -> None:
    pairs = [(a, b) for a in COLOURS for b in COLOURS if a != b]
    (folder / "train").mkdir(parents=True)
    (folder / "held").mkdir()
    rows = []
    for i in range(train):
        first, second = pairs[i % len(pairs)]
        order_clip(folder / "train" / f"{i}.mp4", first, second, seed=i)
        rows.append(json.dumps({"video": f"train/{i}.mp4", "label": first}) + "\n")
    for i in range(held):
        first, second = pairs[i % len(pairs)]
        order_clip(folder / "held" / f"{first}-{i}.mp4", first, second, seed=100_000 + i)
    (folder / "labels.jsonl").write_text("".join(rows))
    (folder / "labels.txt").write_text("\n".join(COLOURS) + "\n")


def cli(*args: object) -> str:
    result = CliRunner().invoke(app(), [str(a) for a in args], catch_exceptions=False)
    if result.exit_code != 0:
        raise RuntimeError(result.output)
    return result.stdout


def app():
    from malmm_cli.cli import app as malmm_app

    return malmm_app


SMALL = ["--device", "cpu", "--frames", str(FRAMES), "--memory-bank-length", str(BANK)]


def held_out_accuracy(model: Path, data: Path, *checkpoint: object) -> float:
    out = cli("predict", data / "held", "--model", model, *SMALL, *checkpoint, "--labels", data / "labels.txt",
              "--top-k", "1", "--format", "jsonl", "-q")  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines()]
    return sum(Path(r["file"]).name.split("-")[0] == r["labels"][0]["label"] for r in rows) / len(rows)


def train_arm(model: Path, data: Path, run: Path, extra: list[str], epochs: int, lr: float, seed: int) -> dict:
    cli("train", data / "labels.jsonl", "--task", "classify", "--output", run, "--model", model, *SMALL,
        "--epochs", epochs, "--batch-size", 4, "--warmup-steps", 5, "--lr", lr, "--samplings", 2,
        "--seed", seed, "-q", *extra)  # fmt: skip
    info = json.loads((run / "training.json").read_text())
    return {"accuracy": held_out_accuracy(model, data, "--checkpoint", run),
            "train_loss": info["epochs"][-1]["train_loss"]}  # fmt: skip


def per_frame_cost(frames: int = 120, bank: int = 20) -> dict[str, float]:
    """Median ms per frame of the full-width Q-Former step and of the module after it."""
    from transformers import InstructBlipQFormerConfig, InstructBlipQFormerModel

    from models.memory import MemoryState
    from models.qformer import qformer_step
    from models.temporal import TemporalMamba, temporal_settings

    torch.manual_seed(0)
    config = InstructBlipQFormerConfig(encoder_hidden_size=1408)  # InstructBLIP's: 12 layers, 768 wide
    qformer = InstructBlipQFormerModel(config).eval()
    queries = torch.randn(1, 32, config.hidden_size)
    module = TemporalMamba(temporal_settings("mamba", config.hidden_size)).eval()
    with torch.no_grad():
        module.gate.fill_(0.5)
    state = MemoryState(torch.randint(5, 100, (1, 12)), torch.ones(1, 12, dtype=torch.long), bank)
    temporal_state = module.new_state()
    step_ms, module_ms = [], []
    with torch.inference_mode():
        for _ in range(frames):
            frame = torch.randn(1, 257, 1408)
            start = time.perf_counter()
            output = qformer_step(qformer, queries, state, frame)
            middle = time.perf_counter()
            module.step(output, temporal_state)
            end = time.perf_counter()
            step_ms.append((middle - start) * 1e3)
            module_ms.append((end - middle) * 1e3)
    tail = slice(frames - 100, frames)
    parameters = sum(p.numel() for p in module.parameters())
    state_bytes = sum(t.numel() * t.element_size() for t in state_tensors_of(temporal_state))
    return {"qformer_ms": statistics.median(step_ms[tail]), "module_ms": statistics.median(module_ms[tail]),
            "parameters": parameters, "state_bytes": state_bytes,
            "bank_bytes": state.nbytes()}  # fmt: skip


def state_tensors_of(cache) -> list[torch.Tensor]:
    from models.temporal import state_tensors

    return state_tensors(cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lrs", default="2e-3,1e-2")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train", type=int, default=60)
    parser.add_argument("--held", type=int, default=60)
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from tests.tiny_models import build_model_folder, tiny_config

    seeds = [int(s) for s in args.seeds.split(",")]
    lrs = [float(lr) for lr in args.lrs.split(",")]
    results: dict[tuple[str, float], list[dict]] = {(arm, lr): [] for arm in ARMS for lr in lrs}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["MALMM_CACHE_DIR"] = str(root / "cache")  # a private feature cache, gone afterwards
        model = build_model_folder(root / "model", tiny_config(llm_initializer_range=0.3))
        make_data(root / "data", args.train, args.held)
        untrained = held_out_accuracy(model, root / "data")
        print(f"untrained: {untrained:.2f}")
        for seed in seeds:
            for (arm, lr), runs in results.items():
                run = root / f"run-{seed}-{len(ARMS[arm])}-{lr:g}"
                runs.append(train_arm(model, root / "data", run, ARMS[arm], args.epochs, lr, seed))
                print(f"seed {seed} {arm} lr {lr:g}: {runs[-1]}", flush=True)
    minutes = (time.perf_counter() - started) / 60
    cost = per_frame_cost()
    print(cost)

    lines = [
        f"Held-out accuracy on {args.held} clips after training on {args.train} (the same budget for every row: "
        f"{args.epochs} epochs of batch 4, {FRAMES} frames, bank {BANK}; seeds {args.seeds}; chance 0.50 between "
        f"the clip's two colours, 0.33 among three). Untrained model: {untrained:.2f}. "
        f"{len(results) * len(seeds)} runs in {minutes:.0f} minutes.",
        "",
        "| trained | lr | held-out accuracy per seed | mean | train loss, last epoch (mean) |",
        "|---|---|---|---|---|",
    ]
    for (arm, lr), runs in results.items():
        accuracies = [r["accuracy"] for r in runs]
        lines.append(
            f"| {arm} | {lr:g} | {', '.join(f'{a:.2f}' for a in accuracies)} | {statistics.mean(accuracies):.2f} | "
            f"{statistics.mean(r['train_loss'] for r in runs):.3f} |"
        )
    lines += [
        "",
        "Cost per frame at InstructBLIP's widths (random weights, CPU, median of 100 frames after a bank of 20 "
        "filled):",
        "",
        "| Q-Former step | Mamba module (1 layer, state 16, expand 1) | module / step | module parameters | "
        "module state | memory bank state |",
        "|---|---|---|---|---|---|",
        f"| {cost['qformer_ms']:.1f} ms | {cost['module_ms']:.2f} ms | {cost['module_ms'] / cost['qformer_ms']:.1%} | "
        f"{cost['parameters'] / 1e6:.2f} M | {cost['state_bytes'] / 1024:.0f} KiB | "
        f"{cost['bank_bytes'] / 1024**2:.1f} MiB |",
    ]
    body = "## Temporal module: order in time (`benchmarks/temporal_order.py`)\n\n" + "\n".join(lines)
    print(body)
    if not args.no_doc:
        update_section("temporal-order", body)


if __name__ == "__main__":
    main()
