"""LLM tokens per second on the CPU, unquantized against bitsandbytes 8-bit and 4-bit.

    python benchmarks/cpu_quantized_speed.py [--size mid] [--tokens 32]

Why `--quantize auto` means no quantization on a CPU: bitsandbytes works there and saves memory,
but each generated token costs more. Greedy decoding of --tokens new tokens after the same
query tokens and prompt, in one process per precision; the first (warm-up) generation is not timed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import model_folder, update_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mid", choices=["tiny", "small", "mid"])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/malmm-bench"))
    args = parser.parse_args()

    import torch

    from models import CAPTION, GenerationSettings, Malmm

    folder = model_folder(args.workdir, args.size)
    settings = GenerationSettings(max_new_tokens=args.tokens, min_new_tokens=args.tokens, num_beams=1)
    rates = {}
    for mode in ("none", "8bit", "4bit"):
        malmm = Malmm.from_pretrained(folder, quantize=mode)
        queries = torch.randn(1, malmm.model.config.num_query_tokens, malmm.model.config.qformer_config.hidden_size)
        malmm.generate(queries, CAPTION.prompt(), GenerationSettings(max_new_tokens=2, num_beams=1))  # warm-up
        started = time.perf_counter()
        malmm.generate(queries, CAPTION.prompt(), settings)
        rates[mode] = args.tokens / (time.perf_counter() - started)
        print(f"{mode}: {rates[mode]:.1f} tokens/s", flush=True)
        del malmm
    lines = [
        f"## LLM speed on the CPU by precision ({args.size} model)",
        "",
        f"Greedy generation of {args.tokens} tokens after the query tokens and the caption prompt, float32 compute.",
        "",
        "| LLM weights | tokens/s | slower than float32 |",
        "| --- | ---: | ---: |",
        *(f"| {mode} | {rate:.1f} | {rates['none'] / rate:.1f}x |" for mode, rate in rates.items()),
    ]
    update_section(f"cpu-quantized-speed-{args.size}", "\n".join(lines))


if __name__ == "__main__":
    main()
