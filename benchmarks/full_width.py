"""Full-width smoke run: `malmm caption` at instructblip-vicuna-7b's and flan-t5-xl's real widths on CPU.

    python benchmarks/full_width.py [--workdir DIR] [--vision-layers 2] [--llm-layers 2]
                                    [--frames 8,24] [--modes none,8bit,4bit] [--repeats 3]

Random weights with the real widths (ViT 1408 wide, 16 heads, 257 tokens a frame; all 12 Q-Former
layers; LLaMA 4096 wide, 32 heads, 32,002-token vocabulary; T5 2048 wide, 32 heads, 32,128
tokens) and few ViT and LLM layers, built directly in float16 (a model of these widths never exists
in float32 while building) and saved once in the work folder. Each run is a fresh `malmm caption`
process on a 640x360 clip; its peak RSS is the child's own VmHWM. Seconds per frame are the
difference between the read times of runs at two frame counts, generating one token greedily (a
caption's length varies with the frames and costs seconds: it would swamp the difference),
divided by the frames between them; the whole command is timed with the default caption
settings. Each figure is the median of --repeats runs, the models and modes taken in turn so that
the machine's slow and fast moments spread over all of them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median, run_child, update_section

READ_LINE = re.compile(r": (\d+) frames in ([\d.]+) s")


def prepare(workdir: Path, vision_layers: int, llm_layers: int) -> tuple[dict[str, Path], Path]:
    import torch

    from models.architectures import architecture, reduced_depth
    from tests.media import make_video
    from tests.tiny_models import build_model_folder

    workdir.mkdir(parents=True, exist_ok=True)
    folders = {}
    for name in ("vicuna-7b", "flan-t5-xl"):
        folder = workdir / f"{name}-width-v{vision_layers}-l{llm_layers}"
        if not (folder / "config.json").exists():
            print(f"building {folder.name} ...", flush=True)
            config = reduced_depth(architecture(name), vision_layers, llm_layers)
            build_model_folder(folder.with_suffix(".partial"), config, dtype=torch.float16)
            folder.with_suffix(".partial").rename(folder)
        folders[name] = folder
    clip = workdir / "clip-60s-640x360.mp4"
    if not clip.exists():
        make_video(clip.with_suffix(".partial.mp4"), seconds=60, fps=30, size=(640, 360), noise=4)
        clip.with_suffix(".partial.mp4").rename(clip)
    return folders, clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/malmm-bench"))
    parser.add_argument("--vision-layers", type=int, default=2)
    parser.add_argument("--llm-layers", type=int, default=2)
    parser.add_argument("--frames", default="8,24", help="two frame counts")
    parser.add_argument("--modes", default="none,8bit,4bit")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    few, many = (int(n) for n in args.frames.split(","))
    folders, clip = prepare(args.workdir, args.vision_layers, args.llm_layers)
    malmm = str(Path(sys.executable).parent / "malmm")
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count())}
    runs = [("vicuna-7b", mode) for mode in args.modes.split(",")] + [("flan-t5-xl", "none")]
    quick = ["--max-new-tokens", "1", "--num-beams", "1"]
    cases = {"few": (few, quick), "many": (many, quick), "default": (few, [])}
    measured: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    for _ in range(args.repeats):
        for name, mode in runs:
            for case, (frames, generation) in cases.items():
                command = [malmm, "caption", str(clip), "--model", str(folders[name]), "--device", "cpu",
                           "--quantize", mode, "--frames", str(frames), "--no-cache", "--format", "json",
                           *generation]  # fmt: skip
                run = run_child(command, env=env)
                read = READ_LINE.search(run.stderr)
                if run.returncode != 0 or read is None:
                    raise SystemExit(f"malmm failed ({name}, {mode}, {frames} frames):\n{run.stderr[-3000:]}")
                measured.setdefault((name, mode, case), []).append(
                    (run.seconds, float(read.group(2)), run.peak_rss_mib)
                )
    rows = []
    for name, mode in runs:
        low, high, default = (tuple(median(list(v)) for v in zip(*measured[name, mode, case], strict=True))
                              for case in cases)  # fmt: skip
        per_frame = (high[1] - low[1]) / (many - few)
        rows.append((name, mode, default, per_frame))
        print(f"{name} {mode}: {per_frame:.2f} s/frame, caption {default[0]:.1f} s, peak RSS {default[2]:.0f} MiB")

    lines = [
        "## Full-width smoke run (`malmm caption` at real widths, CPU)",
        "",
        f"Random weights with the real widths of instructblip-vicuna-7b and instructblip-flan-t5-xl, "
        f"{args.vision_layers} ViT layers, all 12 Q-Former layers, {args.llm_layers} LLM layers "
        "(vicuna: 0.9 B parameters instead of 8 B), built in float16, run in float32 (the CPU dtype) with the "
        "LLM as `--quantize` says. Each run is one fresh process on a 60 s 640x360 clip; medians of "
        f"{args.repeats} runs. Caption: the whole command at {few} frames with the default caption settings "
        "(bank 40, 5 beams, up to 50 new tokens). s/frame: reading (decode, ViT, Q-Former step), from the "
        f"read times at {many} and {few} frames with one greedy token. Peak RSS: the caption run.",
        "",
        "| model | --quantize | caption, whole command s | s/frame | peak RSS MiB |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, mode, default, per_frame in rows:
        lines.append(f"| {name} | {mode} | {default[0]:.1f} | {per_frame:.2f} | {default[2]:.0f} |")
    update_section("full-width-cpu", "\n".join(lines))


if __name__ == "__main__":
    main()
