"""How long `--quantize-vision 8bit` takes to quantize the ViT at load, before and after the 8-bit
layers were made on the `meta` device (CPU).

    python benchmarks/vision_8bit_load.py [--layers 39] [--repeats 3]

`quantize_vision_8bit` replaces each of the ViT's linear layers by a bitsandbytes 8-bit one and
hands it the loaded weight. Made on the CPU, each new layer first drew a random initialisation of
its full-size weight (serially, about 1 G values for ViT-g) that the next line threw away; made
on `meta` it draws nothing. "before" runs that earlier procedure (copied below, nothing else
changed), "after" the current `models.quantization.quantize_vision_8bit`, each in a fresh process
on the same ViT at EVA ViT-g/14 widths (weights filled with a constant: their values do not change
the work), timing the replacement alone, not the model's construction, on one thread. The CPU
seconds of the process are the figure: on a shared machine its wall seconds vary twofold.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median, run_child, update_section


def _before(model) -> int:
    """quantize_vision_8bit as it was (each 8-bit layer made, and randomly initialised, on the CPU)."""
    import bitsandbytes as bnb
    from torch import nn

    replaced = 0
    for parent in list(model.vision_model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            device = child.weight.device
            layer = bnb.nn.Linear8bitLt(
                child.in_features, child.out_features, bias=child.bias is not None, has_fp16_weights=False
            )
            layer.weight = bnb.nn.Int8Params(child.weight.data.cpu(), requires_grad=False, has_fp16_weights=False)
            if child.bias is not None:
                layer.bias = nn.Parameter(child.bias.data.cpu(), requires_grad=False)
            setattr(parent, name, layer.to(device))
            replaced += 1
    return replaced


def measure(way: str, layers: int) -> dict:
    """One measurement, in this process: build the ViT, then time the replacement."""
    import torch
    from torch import nn
    from transformers import InstructBlipVisionModel

    torch.set_num_threads(1)  # CPU seconds = the work, whatever else the machine runs
    from models.architectures import architecture
    from models.quantization import quantize_vision_8bit

    config = architecture("vicuna-7b").vision_config
    config.num_hidden_layers = layers
    with torch.device("meta"):  # the shapes, then memory of our own filled cheaply: no random draw here either
        vision = InstructBlipVisionModel(config)
    vision.to_empty(device="cpu")
    with torch.no_grad():
        for parameter in vision.parameters():
            parameter.fill_(0.02)
    holder = nn.Module()
    holder.vision_model = vision
    parameters = sum(m.weight.numel() for m in vision.modules() if type(m) is nn.Linear)
    started, cpu_started = time.perf_counter(), time.process_time()
    replaced = (_before if way == "before" else quantize_vision_8bit)(holder)
    cpu_seconds, seconds = time.process_time() - cpu_started, time.perf_counter() - started
    return {"way": way, "seconds": seconds, "cpu_seconds": cpu_seconds, "layers_replaced": replaced,
            "linear_weights": parameters}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=39, help="ViT layers (EVA ViT-g/14 has 39)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", choices=["before", "after"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.layers)))
        return

    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(args.repeats):
        for way in runs:  # interleaved, so a slow spell of the shared machine hits both
            child = run_child([str(Path(__file__).resolve()), "--child", way, "--layers", str(args.layers)],
                              env=None, timeout=3600)  # fmt: skip
            if child.returncode != 0:
                raise SystemExit(f"{way} failed:\n{child.stderr[-3000:]}")
            result = json.loads(child.stdout.strip().splitlines()[-1])
            result["peak_rss_mib"] = child.peak_rss_mib
            runs[way].append(result)
            print(f"{way}: {result['cpu_seconds']:.2f} CPU s ({result['seconds']:.2f} s), peak RSS "
                  f"{child.peak_rss_mib:.0f} MiB", flush=True)  # fmt: skip
    before, after = (median([r["cpu_seconds"] for r in runs[way]]) for way in ("before", "after"))
    first = runs["after"][0]
    lines = [
        "## 8-bit vision encoder at load: layers made on `meta` (`benchmarks/vision_8bit_load.py`)",
        "",
        f"`quantize_vision_8bit` on a ViT at EVA ViT-g/14 widths ({args.layers} layers, {first['layers_replaced']} "
        f"linear layers, {first['linear_weights'] / 1e9:.2f} G weights), CPU, float32, one fresh process per "
        f"run, one thread, median of {args.repeats} (runs in brackets); the replacement alone is timed. Before: "
        "each 8-bit layer made on the CPU, which draws a random weight of full size and throws it away "
        f"({first['linear_weights'] / 1e9:.2f} G values); after: made on `meta` (none; tests/test_quantization.py "
        "counts them).",
        "",
        "| | CPU s | runs (CPU s) | wall s, runs | peak RSS MiB |",
        "| --- | ---: | --- | --- | ---: |",
    ]
    for way, median_s in (("before", before), ("after", after)):
        listed = "/".join(f"{r['cpu_seconds']:.1f}" for r in runs[way])
        wall = "/".join(f"{r['seconds']:.1f}" for r in runs[way])
        peak = max(r["peak_rss_mib"] for r in runs[way])
        lines.append(f"| {way} | {median_s:.2f} | {listed} | {wall} | {peak:.0f} |")
    lines += ["", f"**{before - after:.1f} CPU s less** per `--quantize-vision 8bit` load ({before / after:.2f}x)."]
    print("\n".join(lines))
    update_section("vision-8bit-load", "\n".join(lines))


if __name__ == "__main__":
    main()
