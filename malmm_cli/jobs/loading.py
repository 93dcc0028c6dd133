"""Getting the model onto a device that can hold it, or saying in one line why not.

Order: find the model (local folder, cache, or download), read its config, pick dtype and
quantization, compare the memory plan with what the device has free, then load.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from malmm_cli.jobs.errors import SetupError
from malmm_cli.jobs.hub import DownloadProgress, ModelUnavailable, resolve
from models.memory_plan import (
    GIB,
    MemoryPlan,
    TrainingShape,
    choose_quantization,
    count_parameters,
    generation_bytes,
    memory_state_bytes,
    plan_memory,
    plan_training,
    vision_activation_per_frame,
)

MAX_VISION_BATCH = 64
MAX_ANSWERS_PER_BATCH = 64  # read-outs (x beams) the LLM generates at once
MAX_VIDEO_BATCH = 8  # videos read at once
CPU_VISION_BATCH = 8  # larger batches buy nothing on a CPU

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass(frozen=True)
class LoadOptions:
    model: str
    checkpoint: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "auto"
    quantize_vision: bool = False
    memory_bank_length: int = 40
    readers: int = 1  # memories reading each video (questions)
    num_beams: int = 5
    max_new_tokens: int = 50
    vision_batch: int = 8
    training: TrainingShape | None = None  # plan for `malmm train` instead of reading videos
    frames: int | None = None  # the most frames a video reads (None: not known): the bank holds no more


def planned_bank(memory_bank_length: int, frames: int | None) -> int:
    """Memory bank slots to plan for: a bank never holds more entries than frames were read, so
    `-b 100000 --frames 20` plans 20, not 100,000 (which would drive --quantize auto or a refusal)."""
    return memory_bank_length if frames is None else max(1, min(memory_bank_length, frames))


def resolve_device(name: str) -> str:
    """auto: the first CUDA GPU, else Apple's MPS, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if torch.backends.mps.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SetupError("CUDA is not available on this machine: use --device cpu (or auto)")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise SetupError(f"no GPU {name}: this machine has {torch.cuda.device_count()} (cuda:0...)")
        return name
    if name == "mps" and not torch.backends.mps.is_available():
        raise SetupError("MPS is not available on this machine: use --device cpu (or auto)")
    if name not in ("cpu", "mps"):
        raise SetupError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return name


def choose_dtype(device: str, llm_type: str, requested: str = "auto") -> torch.dtype:
    """float32 on CPU (half-precision matmuls are 7-90x slower there); on GPUs float16, except
    bfloat16 for T5 LLMs, which overflow in float16."""
    if requested != "auto":
        if requested not in DTYPES:
            raise SetupError(f"unknown dtype {requested!r}: use auto, float16, bfloat16 or float32")
        return DTYPES[requested]
    if device == "cpu":
        return torch.float32
    if llm_type == "t5":
        bf16 = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    return torch.float16


def free_memory(device: str) -> int | None:
    """Bytes free where the weights will go: GPU memory, or available RAM for the CPU."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    if device == "cpu":
        import psutil

        return psutil.virtual_memory().available
    return None  # MPS shares memory with the system and reports no reliable free figure


def plan(config: Any, options: LoadOptions, device: str, dtype: torch.dtype) -> tuple[str, MemoryPlan]:
    """The quantization to use and its memory plan; SetupError (with what would fit) if none fits."""
    counts = count_parameters(config)
    timed, adapter_rank = checkpoint_additions(options.checkpoint)

    def estimate(option: LoadOptions, mode: str) -> MemoryPlan:
        common = dict(
            quantize=mode,
            quantize_vision=option.quantize_vision,
            dtype=dtype,
            vision_batch=option.vision_batch,
            memory_bank_length=planned_bank(option.memory_bank_length, option.frames),
            counts=counts,
        )
        if option.training is not None:  # on a GPU: fused attention, and the trainer checkpoints the LLM
            gpu = device.startswith("cuda")
            shape = dataclasses.replace(
                option.training, checkpointing=gpu, time_aware=option.training.time_aware or timed
            )
            return plan_training(config, shape, efficient_attention=gpu, **common)
        return plan_memory(config, readers=option.readers, num_beams=option.num_beams,
                           max_new_tokens=option.max_new_tokens, time_aware=timed, llm_lora_rank=adapter_rank,
                           **common)  # fmt: skip

    free = free_memory(device)
    if options.quantize == "auto":  # the most precise that fits (on CPU quantized layers are slower, but fit)
        plans = {m: estimate(options, m) for m in ("none", "8bit", "4bit")}
        fitting = choose_quantization(plans, free) if free else None
        mode = fitting or ("4bit" if free else "none")
    else:
        mode = options.quantize
    chosen = estimate(options, mode)
    if free is not None and chosen.total > free:
        fits = []
        for group in alternatives(options, mode):  # the first that fits of each group
            for flags, option, option_mode in group:
                alternative = estimate(option, option_mode)
                if alternative.total <= free:
                    fits.append(f"{flags} (~{alternative.total / GIB:.1f} GiB)")
                    break
        where = "RAM" if device == "cpu" else device
        raise SetupError(
            f"{options.model} needs {chosen.describe()} but only {free / GIB:.1f} GiB of {where} is free; "
            + (f"settings that fit: {', '.join(fits[:3])}" if fits
               else "no setting fits here: try a smaller model or another device")
        )  # fmt: skip
    return mode, chosen


def checkpoint_additions(checkpoint: Path | None) -> tuple[bool, int]:
    """What a checkpoint adds to the model's memory: whether it reads frames with their times,
    and the rank of its LLM adapter (0: none). A file that cannot be read adds nothing here:
    loading says what is wrong with it."""
    from models.checkpoint import CheckpointError, checkpoint_llm_lora, checkpoint_time_aware

    if checkpoint is None:
        return False, 0
    try:
        adapter = checkpoint_llm_lora(checkpoint)
        return checkpoint_time_aware(checkpoint) is not None, int(adapter["rank"]) if adapter else 0
    except CheckpointError:
        return False, 0


Alternative = tuple[str, LoadOptions, str]  # command-line flags, the options they make, quantization


def alternatives(options: LoadOptions, mode: str) -> list[list[Alternative]]:
    """Settings to suggest when these do not fit, in groups of which the first that fits is
    suggested, the fewest changes first: for inference another quantization; for training a
    smaller batch (with as many more accumulation steps), 8-bit AdamW, LoRA adapters, a stronger
    quantization, an 8-bit vision encoder, alone or together."""
    levels = ("none", "8bit", "4bit")
    shape = options.training
    if shape is None:
        return [
            [(f"--quantize {m}" + (" --quantize-vision 8bit" if v else ""),
              dataclasses.replace(options, quantize_vision=v), m)]
            for m in levels for v in (False, True)
        ]  # fmt: skip
    choices = itertools.product(
        levels[levels.index(mode) :],
        dict.fromkeys([shape.optimizer, "adamw8bit"]),
        dict.fromkeys([shape.lora_rank, shape.lora_rank or 8]),
        dict.fromkeys([options.quantize_vision, True]),
    )
    groups = []
    for quantize, optimizer, lora, vision in choices:
        changes = [f"--optimizer {optimizer}"] if optimizer != shape.optimizer else []
        changes += [f"--lora {lora}"] if lora != shape.lora_rank else []
        changes += [f"--quantize {quantize}"] if quantize != mode else []
        changes += ["--quantize-vision 8bit"] if vision != options.quantize_vision else []
        group = []
        for batch in _halvings(shape.batch_size):
            smaller = [f"--batch-size {batch} --grad-accum {shape.grad_accum * shape.batch_size // batch}"]
            flags = (smaller if batch != shape.batch_size else []) + changes
            if flags:
                trained = dataclasses.replace(shape, batch_size=batch, optimizer=optimizer, lora_rank=lora)
                option = dataclasses.replace(options, training=trained, quantize_vision=vision)
                group.append((" ".join(flags), option, quantize))
        groups.append((len(changes), group))
    return [group for _, group in sorted(groups, key=lambda pair: pair[0])]  # stable: the order above within


def _halvings(batch: int) -> list[int]:
    """batch, batch / 2, ... 1 (the batch sizes that keep the same examples per update)."""
    sizes = [batch]
    while sizes[-1] > 1 and sizes[-1] % 2 == 0:
        sizes.append(sizes[-1] // 2)
    return sizes if sizes[-1] == 1 else [*sizes, 1]


def locate(model: str, progress: DownloadProgress | None = None) -> Path:
    """The model's local folder (downloading it if needed and possible), or SetupError."""
    try:
        return resolve(model, progress)
    except ModelUnavailable as error:
        raise SetupError(str(error)) from error


def load(options: LoadOptions, folder: Path) -> tuple[Any, str, MemoryPlan]:
    """Load the model in `folder` as planned. Returns (Malmm, quantization used, plan)."""
    from transformers import InstructBlipConfig

    from models.malmm import Malmm
    from models.quantization import quiet_bitsandbytes

    quiet_bitsandbytes()  # before anything imports it: 8-bit vision, 8-bit AdamW, the CPU's 4-bit kernel

    device = resolve_device(options.device)
    try:
        config = InstructBlipConfig.from_pretrained(folder)
    except (OSError, ValueError) as error:
        raise SetupError(f"{options.model}: not an InstructBLIP model ({str(error).splitlines()[0]})") from error
    llm_type = config.text_config.model_type
    dtype = choose_dtype(device, llm_type, options.dtype)
    mode, memory = plan(config, options, device, dtype)
    malmm = Malmm.from_pretrained(
        folder, checkpoint=options.checkpoint, dtype=dtype, device=device, quantize=mode,
        quantize_vision=options.quantize_vision, local_files_only=True,
    )  # fmt: skip
    return malmm, mode, memory


def vision_batch_size(malmm: Any, requested: int | None = None) -> int:
    """Frames the ViT encodes at once: as asked, else 8 on CPU, else what half the free GPU memory holds."""
    if requested:
        return requested
    device = malmm.device
    if device.type != "cuda":
        return CPU_VISION_BATCH
    free = torch.cuda.mem_get_info(device)[0]
    per_frame = vision_activation_per_frame(malmm.model.config, malmm.model.frame_position_embedding.weight.dtype)
    return max(1, min(MAX_VISION_BATCH, int(free * 0.5 // per_frame)))


@dataclass(frozen=True)
class ReadingSizes:
    """How much is done at once, sized by the memory plan to half of what is free after loading."""

    videos: int  # videos read in lockstep
    answers: int  # read-outs the LLM answers in one batch (each with its beams)


def reading_sizes(
    malmm: Any, *, memory_bank_length: int, readers: int, num_beams: int, max_new_tokens: int,
    vision_batch: int = CPU_VISION_BATCH, videos: int | None = None, frames: int | None = None,
    free: int | None = None,
) -> ReadingSizes:  # fmt: skip
    """Videos at once (as asked, else what fits, at most MAX_VIDEO_BATCH) and read-outs per
    generation batch (questions x beams, at most MAX_ANSWERS_PER_BATCH), in half of the memory
    left free after loading and the vision batch. frames: the most a video reads (None: not known),
    which bounds the bank planned (`planned_bank`)."""
    config = malmm.model.config
    dtype = malmm.model.language_model.get_input_embeddings().weight.dtype
    device = malmm.device
    if free is None:
        free = free_memory(str(device)) if device.type in ("cuda", "cpu") else None
    vision = vision_batch * vision_activation_per_frame(config, dtype)
    budget = max(0, (free or 8 * GIB) - vision) // 2
    per_answer = generation_bytes(config, dtype, num_beams, max_new_tokens)
    answers = max(1, min(MAX_ANSWERS_PER_BATCH, budget // per_answer))
    if videos is None:
        per_video = memory_state_bytes(config, planned_bank(memory_bank_length, frames), readers)
        videos = max(1, min(MAX_VIDEO_BATCH, (budget - min(answers, readers) * per_answer) // per_video))
    return ReadingSizes(videos=int(videos), answers=int(answers))
