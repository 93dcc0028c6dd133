"""`malmm eval`: read labelled clips, keep every prediction, score them as MA-LMM does.

Where an example goes: `eval_items` turns the examples of a data file (malmm_cli/dataset.py)
into what is scored: one item per question or clip to classify, one per captioned clip with every
reference caption of it, and for LVU one per 100 s window. `Evaluation.run` reads each clip once
(every question about a clip is a reader of the same read), clips of equal sampling in lockstep
(lockstep.py: whole videos together, windows of the same times together), appends each clip's
predictions to predictions.jsonl as soon as it and the clips before it are read, so that a
stopped run goes on where it stopped, and `score` computes the metrics from that file
(scoring.py), so a resumed run ends with the same figures as one never stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from malmm_cli.dataset import DatasetError, Example, read_examples, task_of
from malmm_cli.feature_cache import FeatureCache
from malmm_cli.loading import ReadingSizes, planned_bank, reading_sizes
from malmm_cli.lockstep import Clip, read_in_lockstep
from malmm_cli.pipeline import Memory, Reader, Sampling, VideoFiles, question_readers
from malmm_cli.records import changed_values
from malmm_cli.results import VideoResult
from malmm_cli.scoring import caption_scores, ranked_accuracy, top_k_accuracy
from malmm_cli.stream import VISION_BATCH
from malmm_cli.video import VideoError
from malmm_cli.writers import write_atomic, write_json
from models import CAPTION, CLASSIFICATION, QUESTION, GenerationSettings, Malmm

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
SETTINGS = "eval.json"
BEAMS = 5  # MA-LMM's beams, all returned: top-5 comes from them
EVAL_SPLIT = "val"  # of a file that holds several splits: the one MA-LMM evaluates (COIN)
LVU_TASKS = ("director", "genre", "relationship", "scene", "way_speaking", "writer", "year")


class EvaluationError(Exception):
    """An evaluation that cannot start or go on, with what to do about it."""


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

    def generation(self) -> GenerationSettings:
        if self.task == "caption":
            return CAPTION.generation
        base = QUESTION.generation if self.task == "ask" else CLASSIFICATION.generation
        return base.with_overrides(num_beams=BEAMS, beams_returned=BEAMS, max_new_tokens=self.max_new_tokens)

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
    preset = {"caption": CAPTION, "ask": QUESTION, "classify": CLASSIFICATION}[task]
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


@dataclass(frozen=True)
class EvalSettings:
    """What made the predictions (eval.json): a resumed run must keep them (it may score more or
    fewer of the examples: --limit is not one of them)."""

    data: str
    benchmark: str
    model: str  # records.model_identity: hub id and revision, or folder and its files
    checkpoint: str | None  # records.checkpoint_identity: its content hash
    frames: int
    memory_bank_length: int
    memory: str = "malmm"
    data_content: str | None = None  # records.file_identity: an edited file (rows, references) is another
    precision: dict[str, str] = field(default_factory=dict)  # device type, dtype, quantize(-vision) as asked
    label_field: str | None = None
    videos: str | None = None
    labels: tuple[str, ...] = ()  # what classification answers are ranked over


class Evaluation:
    """One evaluation: its items, the folder its predictions go to, and how clips are read."""

    def __init__(
        self,
        malmm: Malmm,
        benchmark: Benchmark,
        items: list[Item],
        settings: EvalSettings,
        output: Path,
        cache: FeatureCache | None = None,
        on_unreadable: Callable[[Path, str], None] = lambda video, reason: None,
        video_batch: int | None = None,
    ):
        """Classification answers are ranked over `settings.labels` (`label_set`). on_unreadable(video,
        reason): a video that could not be read (its items get error rows, read again by a rerun).
        video_batch: clips read in lockstep at most (None: as many as half the free memory holds)."""
        self.malmm, self.benchmark, self.items, self.settings, self.output = malmm, benchmark, items, settings, output
        self.cache = cache
        self.on_unreadable = on_unreadable
        self.video_batch = video_batch
        self.labels = list(settings.labels) if settings is not None else []

    def start(self) -> set[str]:
        """Prepare the folder; returns the ids already predicted by an earlier run of the same
        settings (another run's folder is refused). Refuses before any video is read what could
        not be scored at the end."""
        if self.benchmark.task == "caption" and importlib.util.find_spec("pycocoevalcap") is None:
            raise EvaluationError("caption metrics need pycocoevalcap: pip install 'malmm[eval]' (and Java for METEOR)")
        self.output.mkdir(parents=True, exist_ok=True)
        info = self.output / SETTINGS
        current = json.loads(json.dumps(dataclasses.asdict(self.settings)))  # as stored: lists, not tuples
        if info.is_file():
            stored = json.loads(info.read_text())
            if stored != current:
                changed = changed_values(stored, current)
                raise EvaluationError(f"{self.output} holds predictions made otherwise ({changed}): "
                                      "use another --output or the same settings")  # fmt: skip
        else:
            write_json(info, current)
        return self._whole_clips()

    def _whole_clips(self) -> set[str]:
        """The ids of the clips predicted whole. Rows of a clip cut short (a kill while they were
        written) are removed, so that the clip is read again as one, as an unstopped run reads it;
        so are the error rows of a video that could not be read, which may have been fixed since."""
        path = self.output / PREDICTIONS
        rows = read_predictions(path)
        done = {row["id"] for row in rows if "error" not in row}
        partial = {item.id for clip in self._by_clip(self.items) if not all(i.id in done for i in clip)
                   for item in clip if item.id in done}  # fmt: skip
        kept = [row for row in rows if row["id"] in done - partial]
        if len(kept) < len(rows):
            write_atomic(path, "".join(json.dumps(row) + "\n" for row in kept))
        return done - partial

    @staticmethod
    def _by_clip(items: list[Item]) -> list[list[Item]]:
        grouped: dict[tuple, list[Item]] = {}
        for item in items:
            grouped.setdefault(item.clip, []).append(item)
        return list(grouped.values())

    def clips(self, done: set[str]) -> list[list[Item]]:
        """The items still to predict, grouped by clip (one read answers all the questions of a clip)."""
        return self._by_clip([item for item in self.items if item.id not in done])

    def run(
        self, on_clip: Callable[[int, float], None] = lambda items, seconds: None, done: set[str] | None = None
    ) -> dict[str, Any]:
        """Predict every item not yet predicted, then score all of them. on_clip(items, seconds)
        after each clip; done: what `start` returned, if the caller called it."""
        done = self.start() if done is None else done
        with open(self.output / PREDICTIONS, "a", encoding="utf-8") as file:
            last = time.monotonic()

            def write(clip: list[Item], rows: list[dict[str, Any]]) -> None:
                nonlocal last
                file.write("".join(json.dumps(row) + "\n" for row in rows))  # a clip at once
                file.flush()
                os.fsync(file.fileno())
                now = time.monotonic()
                on_clip(len(clip), now - last)
                last = now

            self.predict(self.clips(done), write)
        metrics = self.score()
        write_json(self.output / METRICS, metrics)
        return metrics

    def readers(self, clip: list[Item]) -> list[Reader]:
        if self.benchmark.task == "caption":
            return [Reader("caption", CAPTION.prompt(), at_end=CAPTION.prompt())]
        if self.benchmark.task == "ask":
            return question_readers([item.question or "" for item in clip])
        prompt = self.benchmark.classification_prompt()
        return [Reader("question", prompt, at_end=prompt, question=prompt),  # generated, 5 beams
                Reader("labels", prompt, at_end=prompt, labels=tuple(self.labels), top_k=BEAMS)]  # fmt: skip

    def predict(
        self, clips: list[list[Item]], on_predicted: Callable[[list[Item], list[dict[str, Any]]], None]
    ) -> None:
        """Predict the clips' items, those of equal sampling read in lockstep (lockstep.py).
        on_predicted(clip, rows): each clip's prediction rows (an unreadable video: rows with its
        error), in the clips' order, as soon as the clip and those before it are read."""
        if not clips:
            return
        frames, sizes = self.settings.frames, self.reading_sizes()
        reads = [Clip(clip[0].video, Sampling(frames=frames, start=clip[0].start, end=clip[0].end),
                      tuple(self.readers(clip))) for clip in clips]  # fmt: skip
        ready: dict[int, list[dict[str, Any]]] = {}
        given = 0  # clips handed to on_predicted

        def read(number: int, result: VideoResult | Exception) -> None:
            nonlocal given
            ready[number] = self._rows(clips[number], result)
            while given in ready:
                on_predicted(clips[given], ready.pop(given))
                given += 1

        read_in_lockstep(self.malmm, reads, VideoFiles(self.malmm, cache=self.cache), self.benchmark.task,
                         videos_at_once=sizes.videos, memory=Memory(self.settings.memory_bank_length,
                         self.settings.memory), settings=self.benchmark.generation(), answers_per_batch=sizes.answers,
                         on_done=read)  # fmt: skip

    def _rows(self, clip: list[Item], result: VideoResult | Exception) -> list[dict[str, Any]]:
        """The prediction rows of one clip's items; a video that cannot be read: rows with its error."""
        if isinstance(result, (VideoError, OSError)):
            reason = str(result) or type(result).__name__
            self.on_unreadable(clip[0].video, reason)
            return [{**_row(item), "error": reason} for item in clip]
        if isinstance(result, Exception):  # not the video's fault: the run stops, as it always has
            raise result
        return [{**_row(item), **_predicted(self.benchmark, result, n)} for n, item in enumerate(clip)]

    def reading_sizes(self) -> ReadingSizes:
        """Clips read in lockstep and read-outs answered at once, sized as the local engine sizes
        them (loading.reading_sizes), for the most readers a clip has."""
        generation = self.benchmark.generation()
        return reading_sizes(
            self.malmm, memory_bank_length=planned_bank(self.settings.memory_bank_length, self.settings.frames),
            readers=readers_per_clip(self.benchmark, self.items), num_beams=generation.num_beams,
            max_new_tokens=generation.max_new_tokens, vision_batch=VISION_BATCH, videos=self.video_batch,
        )  # fmt: skip

    def score(self) -> dict[str, Any]:
        """The metrics of every prediction in the folder (of this run's items)."""
        wanted = {item.id for item in self.items}
        rows = [row for row in read_predictions(self.output / PREDICTIONS) if row["id"] in wanted]
        scored = [row for row in rows if "error" not in row]
        task = self.benchmark.task
        if task == "caption":
            metrics = caption_scores({r["id"]: r["prediction"] for r in scored},
                                     {r["id"]: r["references"] for r in scored})  # fmt: skip
        else:
            metrics = top_k_accuracy([r["beams"] for r in scored], [r["references"][0] for r in scored],
                                     first_word=self.benchmark.first_word, k=BEAMS,
                                     ignore_case=self.benchmark.ignore_case)  # fmt: skip
            if task == "classify":
                metrics |= ranked_accuracy([r["ranked"] for r in scored], [r["references"][0] for r in scored])
        return {
            "dataset": self.benchmark.name,
            "examples": len(scored),
            "unreadable": len(rows) - len(scored),
            "missing": len(wanted) - len(rows),
            "metrics": metrics,
            "paper": self.benchmark.paper,
            "zero_shot": self.benchmark.zero_shot,
            "settings": dataclasses.asdict(self.settings),
        }


def _row(item: Item) -> dict[str, Any]:
    row: dict[str, Any] = {"id": item.id, "video": str(item.video)}
    if item.start is not None or item.end is not None:
        row |= {"start": item.start, "end": item.end}
    if item.question is not None:
        row["question"] = item.question
    return row | {"references": list(item.references)}


def _predicted(benchmark: Benchmark, result: VideoResult, number: int) -> dict[str, Any]:
    """What the model said about item `number` of a clip."""
    if benchmark.task == "caption":
        return {"prediction": result.caption}
    answer = result.answers[number if benchmark.task == "ask" else 0]
    row: dict[str, Any] = {"prediction": answer.answer, "beams": list(answer.beams or (answer.answer,))}
    if benchmark.task == "classify":
        row["ranked"] = [ranked.label for ranked in result.labels]
    return row


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """The rows of a predictions file; a last line cut short by a kill is dropped (and the file
    truncated to its last whole line, so that appending goes on cleanly)."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) < len(data):
        with open(path, "r+b") as file:
            file.truncate(len(whole))
    rows = []
    for number, line in enumerate(whole.decode("utf-8").splitlines(), start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise EvaluationError(f"{path} line {number} is not JSON ({error.msg}): remove it to go on") from error
    return rows


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


def missing_videos(items: list[Item], output: Path | None = None) -> tuple[list[Path], int]:
    """(the videos still to read that do not exist, each once, in order; how many videos are
    still to read), said before the model loads. output: an earlier run's folder, whose
    predicted items need no video (a finished run is scored again without its videos)."""
    done: set[str] = set()
    if output is not None:
        with contextlib.suppress(EvaluationError, KeyError, TypeError):  # reported as it is when the run starts
            done = {row["id"] for row in read_predictions(output / PREDICTIONS) if "error" not in row}
    videos = dict.fromkeys(item.video for item in items if item.id not in done)
    return [video for video in videos if not video.is_file()], len(videos)


def label_set(benchmark: Benchmark, items: list[Item]) -> tuple[str, ...]:
    """What classification answers are ranked over: every label of the data (taken before any
    --limit, so that a partial run ranks over the same set)."""
    return tuple(sorted({item.references[0] for item in items})) if benchmark.task == "classify" else ()


def readers_per_clip(benchmark: Benchmark, items: list[Item]) -> int:
    """The most memories one read steps: a clip's questions, or classification's two readers."""
    if benchmark.task == "classify":
        return 2
    return max((len(clip) for clip in Evaluation._by_clip(items)), default=1) if benchmark.task == "ask" else 1
