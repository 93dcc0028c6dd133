"""`malmm eval` for answers that carry times (issue 30), with a checkpoint trained for them
(`malmm train --task dense|ground`, best with --time-aware):

- dense captioning (`--dataset youcook2-dense`, `--dataset anet-captions-dense`): each video read
  once with models/presets.DENSE's instruction, its answer parsed by reading/timed_text.parse_timed
  into events and scored by dense_metrics.py as TimeChat scores YouCook2 (SODA_c, CIDEr, METEOR,
  F1). An answer that does not parse is a video that predicted no event: it scores 0, and is
  counted (`unparsed`).
- grounding by generation (`--by generate` on Charades-STA, QVHighlights, ActivityNet Captions):
  each query asked with GROUND's instruction (one read answers all the queries of a video), the
  spans of the answer taken as its moments in the order given, and scored by
  grounding.grounding_metrics, the scorer `malmm find`'s eval uses. An answer without a span is a
  miss, and counted. QVHighlights' HIT@1 and HL-mAP need per-clip scores, which a generated span
  does not give: only its moment retrieval figures come.

The run, the folder and resuming are find_eval.GroundingEvaluation's (predictions.jsonl a line per
video or query, metrics.json, eval.json); this module gives it other readers, rows and scores.
Importing it loads no torch.

The reading is the reading side's (`caption --dense`'s and `ask --timed`'s readers, their answers
read by timed_text.parse_timed onto the video's clock: a span past the end of what was read is
cut there, one starting after it dropped and counted as a problem), and the dense annotation
files are the training data's (dense_data.read_dense_annotations), so that eval scores what the
commands show, on the events training learns from.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from malmm_cli.jobs.dataset import DatasetError
from malmm_cli.jobs.dense_data import read_dense_annotations
from malmm_cli.jobs.dense_metrics import IOU_THRESHOLDS, dense_caption_metrics
from malmm_cli.jobs.errors import SetupError, UsageError
from malmm_cli.jobs.eval_run import PREDICTIONS, ClipsDone, EvalRequest, read_predictions, run_evaluation, unseen
from malmm_cli.jobs.find_eval import GroundingEvaluation, by_video, check_grounding_videos, grounding_queries
from malmm_cli.jobs.grounding import GROUNDING_BENCHMARKS, grounding_metrics
from malmm_cli.jobs.model import RunOptions, check_checkpoint, check_output_dir, load_model
from malmm_cli.reading.results import TimedText
from malmm_cli.wording import counted
from models.presets import DENSE, GROUND, Task

if TYPE_CHECKING:
    from malmm_cli.jobs.reporting import Reporter
    from malmm_cli.reading.pipeline import Reader
    from malmm_cli.reading.results import VideoResult

YOUCOOK2, ANET_DENSE = "youcook2-dense", "anet-captions-dense"
BY = ("find", "generate")  # how `malmm eval` grounds a query: find's ranking, or the model saying the times


@dataclass(frozen=True)
class DenseBenchmark:
    """A dense captioning benchmark and the published figures to compare with (percent)."""

    name: str
    reference: dict[str, float] = field(default_factory=dict)
    reference_model: str = ""


# TimeChat's paper (arXiv 2312.02051), Tab. 2: TimeChat-7B zero-shot on YouCook2's validation
# videos, as recalled: not checked against the paper (docs/evaluation.md says so).
DENSE_BENCHMARKS = {
    YOUCOOK2: DenseBenchmark(
        YOUCOOK2, {"SODA_c": 1.2, "CIDEr": 3.4, "F1": 12.6}, "TimeChat-7B, zero-shot (as recalled, unchecked)"
    ),
    ANET_DENSE: DenseBenchmark(ANET_DENSE),
}


@dataclass(frozen=True)
class DenseVideo:
    """A video to caption densely and its reference events (named as GroundingExample's fields,
    so that find_eval's run groups and resumes them: one video, one row)."""

    qid: str
    video_id: str
    events: tuple[TimedText, ...]


@dataclass(frozen=True)
class TimedEvalSettings:
    """What made the predictions (eval.json): a resumed run must keep them (--limit is not one)."""

    data: str
    data_content: str
    benchmark: str
    by: str
    instruction: str
    model: str
    checkpoint: str | None
    fps: float | None
    frames: int | None
    memory_bank_length: int
    memory: str = "malmm"
    generation: dict[str, Any] = field(default_factory=dict)
    precision: dict[str, str] = field(default_factory=dict)
    videos: str | None = None
    split: str | None = None


def evaluate_timed(
    request: EvalRequest,
    options: RunOptions,
    reporter: Reporter,
    name: str,
    progress: Callable[[int, int], AbstractContextManager[ClipsDone]] = unseen,
) -> dict[str, Any]:
    """eval_run.evaluate_data for answers that carry times: `name` a dense benchmark, or a
    grounding benchmark asked by generation. Everything that can be checked before the model
    loads is."""
    dense = name in DENSE_BENCHMARKS
    if request.label_field is not None:
        raise UsageError(f"--label-field is for MA-LMM's annotation files, not {name}", option="--label-field")
    if request.window is not None or request.score != "likelihood" or request.threshold != 0.5 or request.min_gap:
        raise UsageError("--window, --score, --threshold and --min-gap are find's: not with --by generate "
                         "or a dense benchmark", option="--window")  # fmt: skip
    if options.fps is not None:
        raise UsageError("--fps is find's: a generated answer reads --frames", option="--fps")
    if dense and importlib.util.find_spec("pycocoevalcap") is None:
        raise SetupError("dense caption metrics need pycocoevalcap: pip install 'malmm[eval]' (and Java for METEOR)")
    task = DENSE if dense else GROUND
    examples: list[Any]
    if dense:
        try:
            examples, videos = dense_videos(request.data, name, request.videos or request.data.parent, request.split)
        except DatasetError as error:
            raise SetupError(str(error)) from error
        examples = examples[: request.limit] if request.limit else examples
    else:
        if request.split is not None:
            raise UsageError(f"--split is not for {name}", option="--split")
        examples, videos = grounding_queries(request, name)
    check_checkpoint(options)
    check_output_dir(request.folder, "--output")
    check_grounding_videos(examples, videos, request.folder, reporter)

    settings = timed_settings(request, options, name, task)
    options = dataclasses.replace(options, memory_bank_length=settings.memory_bank_length)
    readers = 1 if dense else max((len({e.query for e in g}) for g in by_video(examples)), default=1)
    malmm = load_model(options, task, reporter, readers=readers, frames=options.most_frames(task))
    from malmm_cli.jobs.videos import model_reading

    reading = model_reading(malmm, options, task, task.name, readers, options.cache(reporter))
    run = TimedEvaluation(reading, name, examples, videos, settings, request.folder,
                          on_unreadable=lambda video, reason: reporter.error(f"{video}: {reason}"))  # fmt: skip
    what = counted(len(examples), "video" if dense else "query")
    described = f"{name} ({'dense captions' if dense else 'generated spans'}): {what}"
    return run_evaluation(run, [e.qid for e in examples], described, reporter, progress)


def dense_videos(path: Path, name: str, folder: Path, split: str | None) -> tuple[list[DenseVideo], dict[str, Path]]:
    """A dense benchmark's videos with their events, and where each video is: the training data's
    reader of YouCook2's and ActivityNet Captions' files (dense_data.read_dense_annotations),
    YouCook2's validation subset unless --split names another."""
    if path.suffix.lower() != ".json":
        raise DatasetError(f"{name} is read from its annotation .json, not {path.name}")
    examples = read_dense_annotations(path, folder, split, default_split="validation")
    return [DenseVideo(e.id, e.id, e.events) for e in examples], {e.id: e.video for e in examples}


def timed_settings(request: EvalRequest, options: RunOptions, name: str, task: Task) -> TimedEvalSettings:
    from malmm_cli.jobs.loading import resolve_device
    from malmm_cli.jobs.records import checkpoint_identity, file_identity, model_identity

    try:
        device_type = resolve_device(options.device).split(":")[0]
    except SetupError as error:
        raise UsageError(str(error), option="--device") from error
    return TimedEvalSettings(
        data=str(request.data.resolve()), data_content=file_identity(request.data), benchmark=name,
        by="dense" if task is DENSE else "generate", instruction=task.instruction,
        model=model_identity(options.model), checkpoint=checkpoint_identity(options.checkpoint), fps=options.fps,
        frames=options.frames or task.frames, memory_bank_length=options.bank(task), memory=options.memory,
        generation=dataclasses.asdict(options.generation(task)),
        precision={"device": device_type, "dtype": options.dtype, "quantize": options.quantize,
                   "quantize_vision": options.quantize_vision},
        videos=str(request.videos.resolve()) if request.videos else None, split=request.split,
    )  # fmt: skip


class TimedEvaluation(GroundingEvaluation):
    """find_eval's run (folder, resuming, a video at once) with generated answers: DENSE's one
    answer per video, or GROUND's one per distinct query of a video."""

    def __init__(self, reading: Any, name: str, examples: list[Any], videos: dict[str, Path],
                 settings: TimedEvalSettings, output: Path,
                 on_unreadable: Callable[[Path, str], None] = lambda video, reason: None):  # fmt: skip
        self.name, self.dense = name, name in DENSE_BENCHMARKS
        benchmark = None if self.dense else GROUNDING_BENCHMARKS[name]
        super().__init__(reading, benchmark, examples, videos, settings, output, on_unreadable)  # type: ignore[arg-type]

    def readers(self, group: list[Any]) -> list[Reader]:
        """The reading side's readers: `caption --dense`'s, or `ask --timed`'s for the queries."""
        from malmm_cli.reading.pipeline import dense_readers, question_readers

        return dense_readers() if self.dense else question_readers(_queries(group), timed=True)

    def error_row(self, example: Any, video: Path, reason: str) -> dict[str, Any]:
        return {"id": example.qid, "video": str(video), "error": reason}

    def predicted_rows(self, group: list[Any], video: Path, result: VideoResult) -> list[dict[str, Any]]:
        """The answer read as times: the video's events, or each query's spans."""
        if self.dense:
            return [timed_row(group[0], video, result.caption or "", result.events, result.problems)]
        answers = {answer.question: answer for answer in result.answers}
        return [timed_row(e, video, answers[e.query].answer, answers[e.query].spans or (), answers[e.query].problems)
                for e in group]  # fmt: skip

    def score(self) -> dict[str, Any]:
        """The metrics of every prediction in the folder (of this run's videos or queries)."""
        wanted = {e.qid for e in self.examples}
        rows = {row["id"]: row for row in read_predictions(self.output / PREDICTIONS) if row["id"] in wanted}
        scored = [e for e in self.examples if e.qid in rows and "error" not in rows[e.qid]]
        metrics: dict[str, Any] = {}
        if scored and self.dense:
            predicted = {e.qid: [TimedText(*event) for event in rows[e.qid]["events"]] for e in scored}
            metrics = dense_caption_metrics(predicted, {e.qid: e.events for e in scored}, IOU_THRESHOLDS)
        elif scored:
            moments = {e.qid: [(s, end, 1.0 / rank) for rank, (s, end, _) in enumerate(rows[e.qid]["events"], 1)]
                       for e in scored}  # fmt: skip
            metrics = grounding_metrics(scored, moments)
        reference = DENSE_BENCHMARKS[self.name] if self.dense else GROUNDING_BENCHMARKS[self.name]
        return {
            "dataset": self.name,
            "method": "malmm dense" if self.dense else "malmm generate",
            "examples": len(scored),
            "unreadable": sum("error" in row for row in rows.values()),
            "missing": len(wanted) - len(rows),
            # answers with no span (scored as no events, or a miss), and with spans and something unread
            "unparsed": sum(not rows[e.qid]["events"] for e in scored),
            "partly_parsed": sum(bool(rows[e.qid]["events"] and rows[e.qid]["problems"]) for e in scored),
            "metrics": metrics,
            "reference": reference.reference,
            "reference_model": reference.reference_model,
            "settings": dataclasses.asdict(self.settings),  # type: ignore[call-overload]
        }


def _queries(group: list[Any]) -> list[str]:
    """The distinct queries of a video's group, asked in one read."""
    return list(dict.fromkeys(e.query for e in group))


def timed_row(example: Any, video: Path, answer: str, spans: Sequence[Any], problems: Sequence[str]) -> dict[str, Any]:
    """A prediction row: the answer as generated, the spans read from it (seconds on the video's
    clock, sentence), what could not be read, and the truth."""
    row: dict[str, Any] = {"id": example.qid, "video": str(video)}
    if isinstance(example, DenseVideo):
        row["references"] = [[e.start, e.end, e.text] for e in example.events]
    else:
        row |= {"query": example.query, "windows": [list(w) for w in example.windows]}
    return row | {
        "prediction": answer,
        "events": [[s.start, s.end, s.text] for s in spans],
        "problems": list(problems),
    }
