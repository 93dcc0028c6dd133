"""`malmm train --task dense|ground` (issue 30): tasks whose targets carry times, in TimeIT's
wording (reading/timed_text.py), and the figure each is validated by. No torch.

- dense: a video (or a clip of it) and its events (jobs/dense_data.py reads them); the target is
  `dense_text(events)`, "0.0 - 12.5 seconds, chop the onions. 12.5 - 30.0 seconds, fry them.".
- ground: a query and where it happens, from the rows and grounding files `--task find` reads
  (moments.read_moments); the whole video is read and the target is `span_text(start, end)`,
  "12.5 - 30.0 seconds". A query with several spans (QVHighlights) trains one example per span,
  as a caption file trains one per caption of a video: each is a right answer.

Every time is seconds from the start of what the memory reads (a row's clip, else the video),
the clock `ClipFeatures.timed` tells time-aware frames. Validation generates an answer, parses it
(`parse_timed`) and scores it: ground by the IoU of its first span with the nearest true span,
dense by the F1 of its spans against the events at IoU 0.5; an answer without a span scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from malmm_cli.jobs.dataset import DatasetError, Example
from malmm_cli.jobs.dense_data import DenseExample, read_dense
from malmm_cli.jobs.grounding import temporal_iou
from malmm_cli.jobs.training.moments import read_moments
from malmm_cli.reading.timed_text import parse_timed, span_text
from models.presets import DENSE, GROUND

TIMED_TASKS = {"dense": DENSE, "ground": GROUND}
# What validation reports for each (training.json's key): the best epoch is the highest.
VALIDATION_FIGURES = {"ground": "val_mean_iou", "dense": "val_f1"}
DENSE_IOU = 0.5  # a predicted event matches a true one at this IoU or more


@dataclass(frozen=True)
class GroundExample(Example):
    """A query about a whole video (`question`) and the span it trains on; `spans`: all of the
    query's spans, which validation scores against."""

    span: tuple[float, float] = (0.0, 0.0)
    spans: tuple[tuple[float, float], ...] = ()

    def target(self, task: str) -> str:
        return span_text(*self.span)


def read_timed(
    path: Path, task: str, videos: Path | None, label_field: str | None, split: str | None, default_split: str
) -> list[Example]:
    """The examples of a dense or ground file (see the module's docstring)."""
    if label_field is not None:
        raise DatasetError(f"--label-field names classify labels: {task} learns times")
    if task == "dense":
        return list(read_dense(path, videos, split, default_split))
    if split is not None:
        raise DatasetError(f"--split chooses among MA-LMM or YouCook2 annotations: {task} reads moments")
    return [
        GroundExample(id=moment.id if number == 0 else f"{moment.id} span {number + 1}", video=moment.video,
                      question=moment.query, duration=moment.duration, span=span, spans=moment.spans)
        for moment in read_moments(path, videos)
        for number, span in enumerate(moment.spans)
    ]  # fmt: skip


def ground_score(answer: str, spans: Sequence[tuple[float, float]]) -> float:
    """The IoU of an answer's first span with the true span it overlaps most (0: no span read)."""
    read = parse_timed(answer).spans
    if not read:
        return 0.0
    return max(temporal_iou((read[0].start, read[0].end), span) for span in spans)


def dense_score(answer: str, events: Sequence[tuple[float, float]]) -> float:
    """F1 of an answer's spans against the true events: each true event matched once, greedily by
    highest IoU, at IoU `DENSE_IOU` or more (0: no span read, or none matched)."""
    read = [(span.start, span.end) for span in parse_timed(answer).spans]
    pairs = sorted(((temporal_iou(p, t), i, j) for i, p in enumerate(read) for j, t in enumerate(events)),
                   reverse=True)  # fmt: skip
    used_read, used_true = set(), set()
    for iou, i, j in pairs:
        if iou >= DENSE_IOU and i not in used_read and j not in used_true:
            used_read.add(i)
            used_true.add(j)
    if not used_read:
        return 0.0
    precision, recall = len(used_read) / len(read), len(used_true) / len(events)
    return 2 * precision * recall / (precision + recall)


def timed_score(task: str, answer: str, example: Example) -> float:
    """Validation's score of one generated answer (`VALIDATION_FIGURES` names their mean)."""
    if task == "ground" and isinstance(example, GroundExample):
        return ground_score(answer, example.spans)
    if task == "dense" and isinstance(example, DenseExample):
        return dense_score(answer, [(event.start, event.end) for event in example.events])
    raise ValueError(f"no {task} score for {type(example).__name__}")


def target_chars(task: str, target: str) -> int:
    """A target's length for the memory plan's three-characters-a-token estimate: in timed text
    each digit counts as a token (LLaMA's tokenizer splits numbers into digits)."""
    return len(target) + (2 * sum(c.isdigit() for c in target) if task in TIMED_TASKS else 0)
