"""MA-LMM's per-task settings: instruction, frames, memory bank length and generation limits.

Values are those of the MA-LMM evaluation scripts (captioning on MSR-VTT, question answering on
MSR-VTT/MSVD/ActivityNet, classification on LVU/Breakfast/COIN).
"""

from __future__ import annotations

from dataclasses import dataclass

from models.generation import GenerationSettings


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
TASKS = {task.name: task for task in (CAPTION, QUESTION, CLASSIFICATION)}
