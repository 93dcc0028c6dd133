"""The Python API: load MA-LMM once, then read any number of videos with it.

    from models import Malmm, CAPTION
    malmm = Malmm.from_pretrained("Salesforce/instructblip-vicuna-7b", checkpoint="checkpoint_best.pth")
    state = malmm.new_memory(CAPTION.prompt(), CAPTION.memory_bank_length, total_frames=80)
    for pixels in frame_batches:                      # [F, 3, 224, 224] each, in time order
        output, state = malmm.read(pixels, state)
    print(malmm.generate(output, CAPTION.prompt(), CAPTION.generation))

Each video gets its own `MemoryState` (updated in place as frames are read); nothing about a video
is kept on the model, so videos never leak into each other. The model knows nothing of files:
pixels come from the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, BlipImageProcessorPil, InstructBlipConfig, PreTrainedTokenizerBase

from models.checkpoint import (
    CheckpointError,
    CheckpointReport,
    checkpoint_llm_lora,
    checkpoint_temporal,
    checkpoint_time_aware,
    load_checkpoint,
)
from models.generation import generate, generate_beams, score_labels
from models.lora import LoraError, add_llm_lora
from models.memory import MemoryState
from models.modeling import MalmmForConditionalGeneration
from models.presets import DEFAULT_MODEL, GenerationSettings
from models.quantization import cpu_4bit_packs_weights, quantization_config, quantize_vision_8bit, unfit_for_cpu_4bit
from models.time_aware import TIME_TOKENS, TimeTokens, time_tokens

INSTRUCTION_MAX_TOKENS = 128  # MA-LMM's max_txt_len for the Q-Former instruction


@dataclass
class Malmm:
    """A loaded model with its tokenizers and image preprocessing settings."""

    model: MalmmForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase  # the LLM's
    qformer_tokenizer: PreTrainedTokenizerBase
    image_processor: BlipImageProcessorPil
    checkpoint_report: CheckpointReport | None = None
    notes: list[str] = field(default_factory=list)  # what loading changed from what was asked

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = DEFAULT_MODEL,
        *,
        checkpoint: str | Path | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        quantize: str = "none",
        quantize_vision: bool = False,
        local_files_only: bool = False,
        **model_kwargs: Any,
    ) -> Malmm:
        """Load an InstructBLIP checkpoint in Hugging Face format (hub id or local folder).

        checkpoint: an MA-LMM fine-tuned LAVIS `.pth` (or `.safetensors`), or a `malmm train` run
        (its folder or its model.safetensors), loaded on top; a run trained with a temporal module
        (`--temporal mamba`) gives the model that module first, and one trained with time-aware
        frames (`--time-aware`) makes the model read with them (`step` then needs the frames' times), and
        one trained with an LLM adapter (`--lora-llm`) gives the LLM that adapter (on a 4-/8-bit LLM too).
        quantize: "none", "8bit" or "4bit" for the LLM; quantize_vision: the ViT in 8-bit too.
        dtype (default float32) is that of the ViT and the LLM; the memory path (Q-Former, banks,
        frame positions, projection) is float32 whatever it is (see models/modeling.py). The
        weights load onto `device` (default CPU) unless a device_map is given. Other keyword
        arguments go to transformers' `from_pretrained`.
        """
        source = str(name_or_path)
        dtype = dtype or torch.float32
        device = torch.device(device or "cpu")
        model_kwargs.setdefault("device_map", {"": str(device)})  # weights load straight onto the device
        config = InstructBlipConfig.from_pretrained(source, local_files_only=local_files_only)
        keep, notes = [], []
        if quantize == "4bit" and device.type == "cpu" and cpu_4bit_packs_weights():
            keep = unfit_for_cpu_4bit(config)
            if keep:
                notes.append(
                    f"{len(keep)} LLM layers kept in full precision: bitsandbytes' 4-bit kernel for this CPU "
                    "needs out_features divisible by 32 and in_features by 64"
                )
        model = MalmmForConditionalGeneration.from_pretrained(
            source,
            config=config,
            dtype=dtype,
            quantization_config=quantization_config(quantize, compute_dtype=dtype, keep=keep),
            local_files_only=local_files_only,
            **model_kwargs,
        )
        model.eval().requires_grad_(False)  # frozen: outputs of inference_mode calls stay usable anywhere
        model.keep_memory_path_in_float32()
        if checkpoint is not None and (temporal := checkpoint_temporal(checkpoint)):
            model.set_temporal(temporal)  # the module the run trained, then its weights
        if checkpoint is not None:
            model.set_time_aware(checkpoint_time_aware(checkpoint))  # read frames as the run trained them
        if checkpoint is not None and (llm_lora := checkpoint_llm_lora(checkpoint)):
            try:  # the adapter the run trained on the LLM, then its weights
                add_llm_lora(model, llm_lora)
            except LoraError as error:
                raise CheckpointError(f"{checkpoint}: {error}") from error
        report = load_checkpoint(model, checkpoint) if checkpoint is not None else None
        if quantize_vision:
            quantize_vision_8bit(model)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
        qformer_tokenizer = AutoTokenizer.from_pretrained(
            source, subfolder="qformer_tokenizer", local_files_only=local_files_only, truncation_side="left"
        )
        image_processor = BlipImageProcessorPil.from_pretrained(source, local_files_only=local_files_only)
        return cls(model, tokenizer, qformer_tokenizer, image_processor, report, notes)

    @property
    def device(self) -> torch.device:
        return self.model.query_tokens.device

    def new_memory(
        self,
        instruction: str | list[str],
        memory_bank_length: int,
        total_frames: int | Sequence[int] | None = None,
        *,
        strategy: str = "malmm",
        readers_per_video: int = 1,
    ) -> MemoryState:
        """An empty memory for one video (a string) or a batch of readers (a list, one instruction
        each; `readers_per_video` consecutive ones per video share its visual bank, e.g. several
        questions about one video). strategy: how the past is kept (models.memory.STRATEGIES)."""
        instructions = [instruction] if isinstance(instruction, str) else list(instruction)
        tokens = self.qformer_tokenizer(
            instructions,
            padding="longest",
            truncation=True,
            max_length=self.instruction_limit,
            return_tensors="pt",
        )
        return self.model.new_memory(
            tokens.input_ids, tokens.attention_mask, memory_bank_length, total_frames,
            strategy=strategy, readers_per_video=readers_per_video,
        )  # fmt: skip

    @property
    def instruction_limit(self) -> int:
        """Q-Former tokens of an instruction that are read: MA-LMM's 128, or fewer if the Q-Former
        has fewer positions (time-aware frames take TIME_TOKENS of them first)."""
        positions = self.model.config.qformer_config.max_position_embeddings
        return min(INSTRUCTION_MAX_TOKENS, positions - (TIME_TOKENS if self.time_aware else 0))

    @property
    def time_aware(self) -> str | None:
        """The wording of each frame's time sentence when the model reads frames with their times
        (models/time_aware.py), else None."""
        return self.model.time_aware

    def time_tokens(self, state: MemoryState, times: Sequence[float] | None) -> TimeTokens | None:
        """What `step` gives a time-aware model for frames at `times` (seconds from the start of
        what each video's memory reads, one per video); None for a model without time-aware frames."""
        wording = self.time_aware
        if wording is None:
            return None
        if times is None:
            raise ValueError("this model reads every frame with its time (trained with --time-aware): pass times")
        if len(times) != state.videos:
            raise ValueError(f"{len(times)} frame times for a state of {state.videos} videos")
        tokens = time_tokens(self.qformer_tokenizer, wording, times, state.readers_per_video)
        return TimeTokens(tokens.ids.to(self.device), tokens.mask.to(self.device))

    def instruction_length(self, instruction: str) -> int:
        """Q-Former tokens of an instruction before truncation (see `instruction_limit`)."""
        return len(self.qformer_tokenizer(instruction).input_ids)

    @torch.inference_mode()
    def encode_frames(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """[F, 3, H, W] preprocessed frames -> [F, N, C] vision features (normalize=False: before
        the vision LayerNorm, which training trains)."""
        return self.model.vision_features(pixel_values, normalize)

    @torch.inference_mode()
    def step(
        self,
        state: MemoryState,
        features: torch.Tensor,
        index: int | Sequence[int] | None = None,
        times: Sequence[float] | None = None,
    ) -> tuple[torch.Tensor, MemoryState]:
        """One frame per video of the batch: features [V, N, C] -> (what the LLM would read now, one
        per reader [R, T, D], state).

        index: the frame's place in the plan of `total_frames` (default: frames read so far), so
        that frames skipped or missing do not shift the positions of later ones.
        times: when each video's frame was sampled, in seconds from the start of what its memory
        reads (a clip's start, else the video's); needed by a time-aware model, unused by others.
        """
        return self.model.step(state, features, index, self.time_tokens(state, times))

    @torch.inference_mode()
    def read(
        self, pixel_values: torch.Tensor, state: MemoryState, times: Sequence[float] | None = None
    ) -> tuple[torch.Tensor, MemoryState]:
        """Read consecutive frames [F, 3, H, W] of a single video; returns the output after the last.
        times: each frame's time (s), for a time-aware model."""
        if state.batch_size != 1:
            raise ValueError("read() takes frames of one video; use step() for a batch of videos")
        if pixel_values.shape[0] == 0:
            raise ValueError("no frames to read")
        features = self.encode_frames(pixel_values)
        if times is not None and len(times) != len(features):
            raise ValueError(f"{len(times)} times for {len(features)} frames")
        output = None
        for number, frame in enumerate(features):
            output, state = self.step(state, frame.unsqueeze(0), times=None if times is None else [times[number]])
        return output, state

    def generate(
        self, query_output: torch.Tensor, prompt: str | list[str], settings: GenerationSettings = GenerationSettings()
    ) -> list[str]:
        """One answer per video from the query output of its last frame."""
        prompts = [prompt] * query_output.shape[0] if isinstance(prompt, str) else list(prompt)
        return generate(self.model, self.tokenizer, query_output, prompts, settings)

    def generate_beams(
        self,
        query_output: torch.Tensor,
        prompt: str | list[str],
        settings: GenerationSettings = GenerationSettings(),
        on_text: Callable[[int, str], None] | None = None,
    ) -> list[list[str]]:
        """The `settings.beams_returned` best answers per video, best first; on_text(video, text so
        far) while they are generated, when decoding is greedy (generation.generate_beams)."""
        prompts = [prompt] * query_output.shape[0] if isinstance(prompt, str) else list(prompt)
        return generate_beams(self.model, self.tokenizer, query_output, prompts, settings, on_text)

    def score_labels(self, query_output: torch.Tensor, prompt: str | list[str], labels: list[str]) -> torch.Tensor:
        """[B, K] log-likelihood of each candidate label as the answer (higher is likelier)."""
        prompts = [prompt] * query_output.shape[0] if isinstance(prompt, str) else list(prompt)
        return score_labels(self.model, self.tokenizer, query_output, prompts, labels)
