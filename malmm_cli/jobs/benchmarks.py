"""MA-LMM's benchmarks and what a data file gives to score: the table eval's --dataset names,
and `load_items`, from the examples of a data file (jobs/dataset.py) to the scored items: one per
question or clip to classify, one per captioned clip with every reference caption of it, and for
LVU one per 100 s window. Importing this module loads no torch: the command line lists the
benchmarks, and a wrong name, split or file is said before the model loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from malmm_cli.jobs.dataset import TASK_PRESETS, DatasetError, Example, read_examples, task_of
from models.presets import CLASSIFICATION, GenerationSettings, Task

BEAMS = 5  # MA-LMM's beams, all returned: top-5 comes from them
EVAL_SPLIT = "val"  # of a file that holds several splits: the one MA-LMM evaluates (COIN)
LVU_TASKS = ("director", "genre", "relationship", "scene", "way_speaking", "writer", "year")


@dataclass(frozen=True)
class Benchmark:
    """How one dataset is read and scored (MA-LMM's evaluation scripts), and the paper's figures."""

    name: str
    task: str  # caption, ask or classify
    frames: int
    memory_bank_length: int
    first_word: bool = False  # QA: compare the first word of each beam (MSVD-QA, MSRVTT-QA)
    label_field: str | None = None  # of the annotation file (LVU's task)
    prompt: str | None = None  # the classification question
    max_new_tokens: int | None = None
    window: tuple[float, float] | None = None  # (length, stride) in seconds: scored per window (LVU)
    paper: dict[str, float] = field(default_factory=dict)  # MA-LMM fine-tuned, the paper's tables
    zero_shot: dict[str, float] = field(default_factory=dict)
    ignore_case: bool = False  # answers compared lower-cased and stripped (your own data)

    @property
    def preset(self) -> Task:
        """The MA-LMM preset its task is read with (instruction, generation limits)."""
        return TASK_PRESETS[self.task]

    def generation(self) -> GenerationSettings:
        if self.task == "caption":
            return self.preset.generation
        return self.preset.generation.with_overrides(num_beams=BEAMS, beams_returned=BEAMS,
                                                     max_new_tokens=self.max_new_tokens)  # fmt: skip

    def classification_prompt(self) -> str:
        return self.prompt or CLASSIFICATION.prompt()


def _lvu(task: str) -> Benchmark:
    question = f"what is the {task} of the movie?"
    return Benchmark(f"lvu-{task}", "classify", 100, 20, label_field=task, prompt=question, max_new_tokens=5,
                     window=(100.0, 20.0), paper={"top1": 63.0}, zero_shot={"top1": 32.8})  # fmt: skip


BENCHMARKS = {
    b.name: b
    for b in [
        Benchmark("msrvtt-qa", "ask", 20, 10, first_word=True, paper={"top1": 48.5}),
        Benchmark("msvd-qa", "ask", 20, 10, first_word=True, paper={"top1": 60.6}),
        Benchmark("activitynet-qa", "ask", 20, 10, paper={"top1": 49.8}, zero_shot={"top1": 37.2}),
        Benchmark("msrvtt-caption", "caption", 80, 40),
        Benchmark("msvd-caption", "caption", 80, 40),
        Benchmark("youcook2", "caption", 80, 40, paper={"CIDEr": 1.312}),
        *(_lvu(task) for task in LVU_TASKS),
        Benchmark(
            "breakfast",
            "classify",
            100,
            20,
            prompt="what type of breakfast is shown in the video?",
            paper={"top1": 93.0},
        ),
        Benchmark("coin", "classify", 100, 20, prompt="what is the activity in the video?", paper={"top1": 93.2}),
    ]
}
PAPER_NOTES = {"lvu": "the paper's 63.0 and 32.8 are the average over LVU's tasks"}


def own_benchmark(task: str) -> Benchmark:
    """Your own labelled clips: the task's presets, whole-string answers."""
    preset = TASK_PRESETS[task]
    return Benchmark(f"own-{task}", task, preset.frames, preset.memory_bank_length, ignore_case=True)


@dataclass(frozen=True)
class Item:
    """One scored example: a clip of a video, the question asked of it (ask), its references."""

    id: str
    video: Path
    start: float | None
    end: float | None
    references: tuple[str, ...]
    question: str | None = None

    @property
    def clip(self) -> tuple[str, float | None, float | None]:
        return (str(self.video), self.start, self.end)


def eval_items(examples: list[Example], benchmark: Benchmark) -> list[Item]:
    """What is scored: a caption item per clip with all its references, an LVU item per window,
    otherwise one item per example."""
    if benchmark.task == "caption":
        grouped: dict[tuple, list[Example]] = {}
        for example in examples:
            grouped.setdefault((str(example.video), example.start, example.end), []).append(example)
        names = [_clip_id(group, short=True) for group in grouped.values()]
        return [  # a clip is named by its annotation (YouCook2's segment), else by its video's name
            # and seconds, or its path where two videos share a name
            Item(name if names.count(name) == 1 else _clip_id(group, short=False), group[0].video,
                 group[0].start, group[0].end, tuple(e.caption for e in group))
            for name, group in zip(names, grouped.values(), strict=True)
        ]  # fmt: skip
    items = []
    for example in examples:
        reference = example.answer if benchmark.task == "ask" else example.label
        if benchmark.window is not None:
            items += [
                Item(f"{example.id}_{start:g}", example.video, start, end, (reference,))
                for start, end in windows(example.duration, *benchmark.window)
            ]
        else:
            items.append(Item(example.id, example.video, example.start, example.end, (reference,), example.question))
    return items


def windows(duration: float | None, length: float, stride: float) -> list[tuple[float, float | None]]:
    """LVU's windows: `length` seconds from 0, then every `stride` seconds while a whole window
    fits (MA-LMM's LVUCLSDataset: ends at start + length - 1, within the video)."""
    if duration is None:  # the annotation does not say: the first window (or the whole shorter video)
        return [(0.0, length - 1)]
    starts = [0.0] + [float(s) for s in range(int(stride), int(duration - length) + 1, int(stride))]
    return [(start, min(start + length - 1, duration)) for start in starts]


def _clip_id(group: list[Example], short: bool) -> str:
    """A clip's id: the annotation's name of it where all its captions give the same one (MA-LMM
    scores YouCook2 by `segment`, `xHr8X2Wpmno_0047_0060`), else its video and seconds."""
    example = group[0]
    if short and example.segment is not None and all(e.segment == example.segment for e in group):
        return example.segment
    video = example.video.stem if short else str(example.video)
    if example.start is None and example.end is None:
        return video
    return f"{video}_{example.start or 0:g}_{f'{example.end:g}' if example.end is not None else 'end'}"


def load_items(
    data: Path, benchmark: str | None, videos: Path | None, label_field: str | None, split: str | None = None
) -> tuple[Benchmark, list[Item]]:
    """The benchmark (named, or the task of DATA's columns) and its items; two items of one id
    (which resuming and scoring could not tell apart) are refused. split: of an annotation file
    that holds several (COIN.json), which to score (default: `val`, the split MA-LMM evaluates).

    An MA-LMM annotation file without its benchmark is refused: each benchmark scores answers
    its own way (MSVD-QA by the first word, ActivityNet-QA by the whole string), and scoring it
    by the own-data rule would give another figure under the same file's name."""
    if benchmark is not None and benchmark not in BENCHMARKS:
        raise DatasetError(f"unknown dataset {benchmark!r}: one of {', '.join(BENCHMARKS)}")
    chosen = BENCHMARKS.get(benchmark or "")
    examples = read_examples(data, chosen.task if chosen else None, videos,
                             label_field or (chosen.label_field if chosen else None), split, EVAL_SPLIT)  # fmt: skip
    task = chosen.task if chosen else task_of(dataclasses.asdict(examples[0]), str(data))
    if chosen is None and data.suffix.lower() == ".json":
        fitting = [name for name, b in BENCHMARKS.items() if b.task == task and not name.startswith("lvu-")]
        fitting += ["lvu-director ... lvu-year"] if task == "classify" else []
        raise DatasetError(
            f"{data.name} is an MA-LMM annotation file, scored by its benchmark's rule: name it with --dataset "
            f"({', '.join(fitting)}); to score it as your own data (whole answers, any case), make it JSONL or CSV"
        )
    chosen = chosen or own_benchmark(task)
    items = eval_items(examples, chosen)
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise DatasetError(f"{data.name}: two examples have the id {item.id!r}: give each its own")
        seen.add(item.id)
    return chosen, items


def label_set(benchmark: Benchmark, items: list[Item]) -> tuple[str, ...]:
    """What classification answers are ranked over: every label of the data (taken before any
    --limit, so that a partial run ranks over the same set)."""
    return tuple(sorted({item.references[0] for item in items})) if benchmark.task == "classify" else ()
