"""A training step at vicuna-7b's real widths: examples/s and peak memory, features cached.

    python benchmarks/train_step.py [--batch 4] [--frames 20] [--bank 20] [--llm-layers 2]
                                    [--steps 3] [--quantize none|8bit|4bit] [--device cpu|cuda]
                                    [--optimizer adamw|adamw8bit]

What `malmm train` does per optimiser step once the vision features are in the feature cache:
the memory reads each clip (the Q-Former with all 12 layers, bank `--bank`; every step but the
last without gradients), the frozen LLM scores the target and the AdamW step updates the 189 M
trained parameters. Random weights with the real widths (ViT 1408 wide, 257 tokens a frame;
LLaMA 4096 wide, 32,002-token vocabulary) and `--llm-layers` LLM layers (vicuna-7b has 32: on a
GPU pass --llm-layers 32 for the whole model). Features are random, as cached features are read
back. Peak memory: the CUDA allocator's peak on a GPU, the process's peak RSS (VmHWM) on a CPU,
both after the model is built (the weights are counted apart). Beside it, what the training
memory plan (models/memory_plan.py, what `malmm train` checks before loading) expects a step's
activations to be, and what one step really held at its peak, tensor by tensor
(tests/memory_trace.py: every tensor made between the start of the step and the end of its
backward pass, weights, gradients and optimiser state apart).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import update_section
from models.presets import OPTIMIZERS

GIB = 1024**3


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--bank", type=int, default=20)
    parser.add_argument("--llm-layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed optimiser steps, after one warm-up step")
    parser.add_argument("--quantize", default="none", choices=("none", "8bit", "4bit"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--optimizer", default="adamw", choices=tuple(OPTIMIZERS))
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    import torch
    from transformers import BlipImageProcessorPil

    from models.architectures import architecture, reduced_depth
    from models.malmm import Malmm
    from models.memory_plan import TrainingShape, plan_training
    from models.modeling import MalmmForConditionalGeneration
    from models.quantization import quantization_config
    from models.training import answer_loss, make_optimizer, parameter_groups, read_clip, trainable_parameters
    from tests.memory_trace import LiveTensorBytes
    from tests.tiny_models import llama_tokenizer, qformer_tokenizer

    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    config = reduced_depth(architecture("vicuna-7b"), vision_layers=1, llm_layers=args.llm_layers)
    model = MalmmForConditionalGeneration._from_config(config, dtype=dtype)
    if args.quantize != "none":  # quantize as from_pretrained would, through a save and reload
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="malmm-train-step-"))
        model.save_pretrained(folder)
        model = MalmmForConditionalGeneration.from_pretrained(
            folder, dtype=dtype, device_map={"": str(device)},
            quantization_config=quantization_config(args.quantize, compute_dtype=dtype),
        )  # fmt: skip
    model.to(device) if args.quantize == "none" else None
    model.eval().requires_grad_(False)
    model.keep_memory_path_in_float32()
    malmm = Malmm(model, llama_tokenizer(), qformer_tokenizer(), BlipImageProcessorPil())
    trained = trainable_parameters(model)
    model.qformer.train()
    if device.type == "cuda":
        model.language_model.train()
        model.language_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = make_optimizer(args.optimizer, parameter_groups(trained), lr=1e-5)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    vision = config.vision_config
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    prompts = ["Question: what is the man doing in the kitchen? Short answer:"] * args.batch
    targets = ["cooking food"] * args.batch

    def forward_backward() -> None:
        features = torch.randn(args.batch, args.frames, tokens, vision.hidden_size, device=device, dtype=dtype)
        state = malmm.new_memory(prompts, args.bank, total_frames=args.frames)
        loss = answer_loss(model, malmm.tokenizer, read_clip(model, state, features), prompts, targets)
        scaler.scale(loss).backward()

    def step() -> None:
        forward_backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated, as the plan counts them

    built_rss = peak_rss()
    step()  # warm-up: allocates the gradients and the optimiser state
    held = [*model.parameters(), *model.buffers(), *(p.grad for _, p in trained)]
    held += [v for s in optimizer.state.values() for v in _tensors(s)]
    with LiveTensorBytes(held) as traced:
        forward_backward()
    optimizer.zero_grad(set_to_none=False)
    text = len(malmm.tokenizer(prompts[0] + " " + targets[0]).input_ids)
    instruction = len(malmm.qformer_tokenizer(prompts[0]).input_ids)
    shape = TrainingShape(args.batch, optimizer=args.optimizer, checkpointing=device.type == "cuda",
                          text_tokens=text, instruction_tokens=instruction)  # fmt: skip
    plan = plan_training(config, shape, quantize=args.quantize, dtype=dtype, memory_bank_length=args.bank,
                         efficient_attention=device.type == "cuda")  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = f"{torch.cuda.max_memory_allocated() / GIB:.2f} GiB allocated (CUDA peak)"
    else:
        peak = f"{peak_rss() / GIB:.2f} GiB peak RSS ({(peak_rss() - built_rss) / GIB:.2f} GiB above the built model)"
    seconds = (time.perf_counter() - started) / args.steps
    count = sum(p.numel() for _, p in trained)
    precision = str(dtype).removeprefix("torch.")
    table = (
        "| batch | frames | bank | LLM layers | LLM | optimiser | device | s/step | examples/s | peak memory "
        "| a step's activations: measured / plan |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
        f"| {args.batch} | {args.frames} | {args.bank} | {args.llm_layers} of 32 | {args.quantize}, {precision} | "
        f"{args.optimizer} | {device.type} | {seconds:.2f} | {args.batch / seconds:.2f} | {peak} "
        f"| {traced.peak / GIB:.2f} / {plan.activations / GIB:.2f} GiB |"
    )
    body = (
        f"### Training step at full width, {args.optimizer} (`benchmarks/train_step.py`)\n\nTrained parameters: "
        f"{count / 1e6:.1f} M (the Q-Former with its query tokens, the projection, the vision LayerNorm, "
        f"the frame table). Features cached; mean of {args.steps} optimiser steps after one warm-up.\n\n{table}"
    )
    print(body)
    if not args.no_doc:
        update_section(f"train-step-{device.type}" + ("" if args.optimizer == "adamw" else f"-{args.optimizer}"), body)


def _tensors(state: dict) -> list:
    """The tensors of one parameter's optimiser state (bitsandbytes nests some in a dict)."""
    import torch

    found = []
    for value in state.values():
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, dict):
            found += _tensors(value)
    return found


if __name__ == "__main__":
    main()
