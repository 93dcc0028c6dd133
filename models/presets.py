"""MA-LMM's settings as plain data: the default model, per-task instructions, frames, memory bank
lengths and generation limits, and the names of choices the command line offers.

Task values are those of the MA-LMM evaluation scripts (captioning on MSR-VTT, question answering
on MSR-VTT/MSVD/ActivityNet, classification on LVU/Breakfast/COIN). This module imports nothing
heavy, so the command line can show its defaults without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

DEFAULT_MODEL = "Salesforce/instructblip-vicuna-7b"
# How a memory keeps the past (models/memory.py says what each does); MA-LMM's merging first.
MEMORY_STRATEGIES = ("malmm", "fifo", "avgpool", "concat", "none")
TRAINED_WEIGHTS = "model.safetensors"  # the trained tensors in a `malmm train` run folder
# The optimisers `malmm train` can use, as the user names them and as they are shown
# (models/memory_plan.py counts their state, models/training.py makes them).
OPTIMIZERS = {"adamw": "AdamW", "adamw8bit": "8-bit AdamW"}
TEMPORAL_KINDS = ("none", "mamba")  # the temporal modules after the Q-Former (models/temporal.py)


@dataclass(frozen=True)
class GenerationSettings:
    """Beam search settings; the defaults are MA-LMM's evaluation settings for captions."""

    max_new_tokens: int = 50
    num_beams: int = 5
    repetition_penalty: float = 1.5
    length_penalty: float = 1.0
    min_new_tokens: int = 1
    beams_returned: int = 1  # the best beams kept per answer, best first (evaluation's top-5)

    def with_overrides(self, **changes: object) -> GenerationSettings:
        """A copy with the given fields changed; None values are ignored."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class Task:
    """How MA-LMM reads a video for one kind of output."""

    name: str
    instruction: str  # the Q-Former instruction and LLM prompt; "{question}" is filled in for QA
    frames: int  # frames sampled uniformly over the video
    memory_bank_length: int
    generation: GenerationSettings

    def prompt(self, question: str | None = None) -> str:
        if "{question}" in self.instruction:
            if not question or not question.strip():
                raise ValueError(f"the {self.name} task needs a question")
            return self.instruction.format(question=question.strip())
        return self.instruction


CAPTION = Task("caption", "what does the video describe?", 80, 40, GenerationSettings(max_new_tokens=50))
QUESTION = Task(
    "qa", "Question: {question} Short answer:", 20, 10, GenerationSettings(max_new_tokens=10, length_penalty=0.0)
)
CLASSIFICATION = Task(
    "classification", "what is the activity in the video?", 100, 20, GenerationSettings(max_new_tokens=20)
)
# find (malmm_cli/reading/find.py) ranks its queries under the caption instruction: nothing is generated.
# It samples a rate (1 frame/s) unless --frames is given; frames is then the count, as for the others.
FIND = Task("find", CAPTION.instruction, 80, 10, GenerationSettings(max_new_tokens=1, num_beams=1))
# Tasks whose answers carry times (issue 30, TimeChat's TimeIT tasks): the model is trained to
# answer in malmm_cli/reading/timed_text.py's wording ("12.5 - 30.0 seconds, ..."), which is then
# parsed back into spans. Useful only with a checkpoint trained for them (`malmm train --task
# dense|ground`, best with --time-aware). No repetition penalty: the digits of times repeat.
DENSE = Task(
    "dense",
    "Find the events of the video and describe each in a sentence, with its start and end in seconds, "
    "as 'start - end seconds, sentence.'",
    80, 40, GenerationSettings(max_new_tokens=256, repetition_penalty=1.0),
)  # fmt: skip
GROUND = Task(
    "ground",
    "Find the part of the video where '{question}' happens, and give its start and end in seconds, as "
    "'start - end seconds'.",
    80, 20, GenerationSettings(max_new_tokens=20, repetition_penalty=1.0),
)  # fmt: skip
