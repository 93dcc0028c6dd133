"""`malmm eval`'s run: read labelled clips, keep every prediction, score them as MA-LMM does.

What is scored comes from benchmarks.py (the items of a data file); the job that checks, loads
and calls this is eval_run.py, which also says what the output folder holds. `Evaluation.run`
reads each clip once (every question about a clip is a reader of the same read), clips of equal
sampling in lockstep (reading/lockstep.py: whole videos together, windows of the same times
together), appends each clip's predictions to predictions.jsonl as soon as it and the clips
before it are read, so that a stopped run goes on where it stopped, and `score` computes the
metrics from that file (scoring.py), so a resumed run ends with the same figures as one never
stopped.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from malmm_cli.jobs.benchmarks import BEAMS, Benchmark, Item
from malmm_cli.jobs.eval_run import (
    METRICS,
    PREDICTIONS,
    SETTINGS,
    EvalSettings,
    EvaluationError,
    appending_predictions,
    check_scorable,
    read_predictions,
)
from malmm_cli.jobs.loading import ReadingSizes, reading_sizes
from malmm_cli.jobs.records import changed_values
from malmm_cli.jobs.scoring import caption_scores, ranked_accuracy, top_k_accuracy
from malmm_cli.media.plans import VideoError
from malmm_cli.media.sampling import Sampling
from malmm_cli.output.writers import write_atomic, write_json
from malmm_cli.reading.feature_cache import FeatureCache
from malmm_cli.reading.lockstep import Clip, read_in_lockstep
from malmm_cli.reading.pipeline import Memory, Reader, VideoFiles, question_readers
from malmm_cli.reading.results import VideoResult
from malmm_cli.reading.stream import VISION_BATCH
from models import CAPTION, Malmm


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
        check_scorable(self.benchmark)
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
        with appending_predictions(self.output / PREDICTIONS, on_clip) as write:  # a clip at once
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
            self.malmm, memory_bank_length=self.settings.memory_bank_length, frames=self.settings.frames,
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


def readers_per_clip(benchmark: Benchmark, items: list[Item]) -> int:
    """The most memories one read steps: a clip's questions, or classification's two readers."""
    if benchmark.task == "classify":
        return 2
    return max((len(clip) for clip in Evaluation._by_clip(items)), default=1) if benchmark.task == "ask" else 1
