"""What training a model whose answers carry times needs on one GPU (issue 30): the memory plan
`malmm train` checks before it loads anything, for TimeChat-like recipes on vicuna-7b.

    python benchmarks/timed_training_plan.py [--no-doc]

Estimates, not measurements: `models.memory_plan.plan_training` at vicuna-7b's shapes
(models/architectures.py), float16, the LLM checkpointed and fused attention as on a GPU, the
time-aware frames' 16 extra Q-Former tokens counted. The plan is checked against measurement on a
CPU (tests/test_training.py; `benchmarks/train_step.py` at vicuna-7b's widths), not yet on a GPU.
Text lengths: ground, GROUND's prompt with a query and a `12.5 - 30.0 seconds` target (~64
tokens: every digit is a token); dense, DENSE's prompt and a full 256-token target (~300).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import update_section

GIB = 1024**3
TEXT_TOKENS = {"ground": 64, "dense": 300}  # prompt + target, LLM tokens
INSTRUCTION_TOKENS = {"ground": 40, "dense": 36}  # the Q-Former's instruction, before the time sentence
# (task, bank, batch, optimizer, --lora Q-Former rank, --lora-llm rank, LLM quantization, ViT 8-bit)
RECIPES = [
    ("ground", 20, 4, "adamw", 0, 0, "4bit", False),
    ("ground", 20, 4, "adamw", 0, 8, "4bit", False),
    ("ground", 20, 4, "adamw8bit", 0, 16, "4bit", False),
    ("ground", 20, 1, "adamw8bit", 8, 8, "4bit", True),
    ("ground", 20, 4, "adamw", 0, 8, "8bit", False),
    ("dense", 40, 1, "adamw8bit", 8, 8, "4bit", True),
    ("dense", 40, 2, "adamw8bit", 0, 8, "4bit", False),
    ("dense", 40, 4, "adamw", 0, 8, "4bit", False),
    ("dense", 40, 4, "adamw", 0, 8, "none", False),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    from models.architectures import architecture
    from models.memory_plan import TrainingShape, count_parameters, plan_training

    config = architecture("vicuna-7b")
    counts = count_parameters(config)
    rows = [
        "| task | bank | batch | optimizer | `--lora` | `--lora-llm` | LLM | ViT | LLM adapter | estimate |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task, bank, batch, optimizer, lora, llm_lora, quantize, vision_8bit in RECIPES:
        shape = TrainingShape(batch, optimizer=optimizer, lora_rank=lora, llm_lora_rank=llm_lora, time_aware=True,
                              text_tokens=TEXT_TOKENS[task], instruction_tokens=INSTRUCTION_TOKENS[task])  # fmt: skip
        plan = plan_training(config, shape, quantize=quantize, quantize_vision=vision_8bit,
                             memory_bank_length=bank, counts=counts)  # fmt: skip
        adapter = f"{plan.llm_adapter / 1e6:.1f} M" if plan.llm_adapter else "-"
        rows.append(f"| {task} | {bank} | {batch} | {optimizer} | {lora or '-'} | {llm_lora or '-'} | {quantize} | "
                    f"{'8-bit' if vision_8bit else 'float16'} | {adapter} | ~{plan.total / GIB:.1f} GiB |")  # fmt: skip
    body = "\n".join([
        "## Training answers that carry times: memory plans (`benchmarks/timed_training_plan.py`)",
        "",
        "What `malmm train --time-aware --task ground|dense` plans to hold on one GPU for vicuna-7b "
        "(float16, the LLM checkpointed): estimates of models/memory_plan.py, not measurements (see the "
        "script's docstring for the text lengths assumed).",
        "",
        *rows,
    ])  # fmt: skip
    print(body)
    if not args.no_doc:
        update_section("timed-training-plan", body)


if __name__ == "__main__":
    main()
