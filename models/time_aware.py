"""Time-aware frames (TimeChat's timestamp-aware frame encoder, arXiv 2312.02051): the Q-Former
reads each frame with a sentence that says when the frame was sampled, so what a frame shows is
bound to when it shows it.

TimeChat's Q-Former reads only that sentence, "This frame is sampled at 12.0 second." (the time
rounded to a tenth of a second). MA-LMM's Q-Former also reads the task's instruction, so here it
reads both, the frame's time first: [time sentence ; instruction]. The time sentence has a fixed
number of token positions (`TIME_TOKENS`, padded and masked), so that the instruction keeps its
positions whatever the time, and a video reads the same alone or batched with others.

An option of the model (`config.time_aware`: the wording, None when off), stored in `malmm train`
checkpoints: a model trained with it reads with it. Off by default: InstructBLIP and the released
MA-LMM weights were trained without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

TIMECHAT_WORDING = "This frame is sampled at {time} second."  # TimeChat's, "{time}" its seconds
TIME_TOKENS = 16  # Q-Former positions of the time sentence ([CLS] ... [SEP], then padding)


def time_sentence(wording: str, seconds: float) -> str:
    """The sentence of a frame sampled `seconds` after the start of what is read (TimeChat writes
    the time as Python prints it rounded to a tenth: 0.0, 12.5, 125.0)."""
    return wording.format(time=round(float(seconds), 1))


@dataclass(frozen=True)
class TimeTokens:
    """Each reader's time sentence at one step, in Q-Former tokens: ids and mask [R, TIME_TOKENS]."""

    ids: torch.Tensor
    mask: torch.Tensor


def time_tokens(
    tokenizer: PreTrainedTokenizerBase, wording: str, times: Sequence[float], readers_per_video: int = 1
) -> TimeTokens:
    """The time sentences of one step: `times` [V] (one per video, seconds from its start), each
    repeated for the video's readers (rows video-major, as MemoryState's)."""
    sentences = [time_sentence(wording, t) for t in times for _ in range(readers_per_video)]
    tokens = tokenizer(
        sentences, padding="max_length", truncation=True, max_length=TIME_TOKENS, return_tensors="pt"
    )  # truncation only past ~6 digits of seconds; the left side of the time is cut (the tokenizer's side)
    return TimeTokens(tokens.input_ids, tokens.attention_mask)
