"""`malmm eval` as one call, and the folder it fills.

`evaluate_data` checks all it can before torch is imported (the data file and its benchmark, the
checkpoint, the output folder, the videos), then loads the model and runs the `Evaluation`
(evaluate.py). The folder holds predictions.jsonl (a row per scored item, appended as each clip is
read), metrics.json, and eval.json (`EvalSettings`: what made the predictions, which a resumed run
must keep). Importing this module loads no torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from malmm_cli.jobs.benchmarks import Benchmark, Item, label_set, load_items
from malmm_cli.jobs.dataset import DatasetError
from malmm_cli.jobs.errors import SetupError, UsageError
from malmm_cli.jobs.model import RunOptions, check_checkpoint, check_output_dir, load_model
from malmm_cli.wording import counted

if TYPE_CHECKING:
    from malmm_cli.jobs.reporting import Reporter

PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
SETTINGS = "eval.json"


@contextlib.contextmanager
def appending_predictions(
    path: Path, on_group: Callable[[int, float], None]
) -> Iterator[Callable[[Sequence[object], list[dict[str, Any]]], None]]:
    """write(group, rows): a group's prediction rows appended to the JSON-lines file at once and
    synced to disk (a killed run keeps every group it finished, for resuming); on_group(members,
    seconds since the last group) after each."""
    with open(path, "a", encoding="utf-8") as file:
        last = time.monotonic()

        def write(group: Sequence[object], rows: list[dict[str, Any]]) -> None:
            nonlocal last
            file.write("".join(json.dumps(row) + "\n" for row in rows))
            file.flush()
            os.fsync(file.fileno())
            now = time.monotonic()
            on_group(len(group), now - last)
            last = now

        yield write


def run_evaluation(
    run: Any,
    ids: list[str],
    described: str,
    reporter: Reporter,
    progress: Callable[[int, int], AbstractContextManager[ClipsDone]],
) -> dict[str, Any]:
    """Every eval's last steps: `run` (Evaluation, GroundingEvaluation or TimedEvaluation) takes up
    its folder (SetupError where it cannot), says what it evaluates ("Evaluating `described`",
    and how many of `ids` an earlier run predicted), predicts the rest with progress, and returns
    the metrics."""
    try:
        done = run.start()
    except EvaluationError as error:
        raise SetupError(str(error)) from error
    resumed = len(done & set(ids))
    reporter.info(f"Evaluating {described}" + (f", {resumed} already in {run.output / PREDICTIONS}" if resumed else ""))
    with progress(len(ids), resumed) as shown:
        return run.run(shown.advance, done)


class EvaluationError(Exception):
    """An evaluation that cannot start or go on, with what to do about it."""


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


@dataclass(frozen=True)
class EvalRequest:
    """What to evaluate, beside the model and how to run it (RunOptions: model, checkpoint, frames,
    memory, precision, cache). limit: the first N items only."""

    data: Path
    dataset: str | None = None
    videos: Path | None = None
    output: Path | None = None
    limit: int | None = None
    label_field: str | None = None
    split: str | None = None
    # the grounding benchmarks (find_eval.py): find's window (None: find's default), score rule, threshold
    window: float | None = None
    score: str = "likelihood"
    threshold: float = 0.5
    min_gap: float | None = None
    by: str | None = None  # grounding: "find" (the default) or "generate"; dense captioning generates

    @property
    def folder(self) -> Path:
        """Where the predictions go: --output, else malmm-eval-DATA in the working folder."""
        return self.output or Path(f"malmm-eval-{self.data.stem}")


class ClipsDone(Protocol):
    """Told after each clip is predicted: how many items it held, how long it took."""

    def advance(self, items: int, seconds: float) -> None: ...


class _Unseen:
    def advance(self, items: int, seconds: float) -> None:
        pass


def unseen(total: int, done: int) -> AbstractContextManager[ClipsDone]:
    """No progress shown (Python callers, tests)."""
    return nullcontext(_Unseen())


def evaluate_data(
    request: EvalRequest,
    options: RunOptions,
    reporter: Reporter,
    progress: Callable[[int, int], AbstractContextManager[ClipsDone]] = unseen,
) -> dict[str, Any]:
    """Predict every item of request.data not predicted yet in its folder, score them all, and
    return the metrics (also written to metrics.json). progress(total items, items already
    predicted): the span of the reading, told of each clip as it is predicted.

    Raises UsageError or SetupError before any video is read, and before torch is imported where
    the check needs no model; KeyboardInterrupt goes up with the predictions so far kept."""
    from malmm_cli.jobs import find_eval, timed_eval

    if request.dataset in timed_eval.DENSE_BENCHMARKS:
        if request.by == "find":
            raise UsageError(f"{request.dataset} is scored on generated captions: --by find is for the grounding "
                             "benchmarks", option="--by")  # fmt: skip
        return timed_eval.evaluate_timed(request, options, reporter, request.dataset, progress)
    grounding = find_eval.grounding_benchmark(request.data, request.dataset)
    if grounding is not None and request.by == "generate":
        return timed_eval.evaluate_timed(request, options, reporter, grounding, progress)
    if grounding is not None:
        return find_eval.evaluate_grounding(request, options, reporter, grounding, progress)
    if request.by is not None:
        raise UsageError(f"--by is for the grounding benchmarks ({', '.join(find_eval.GROUNDING_BENCHMARKS)})",
                         option="--by")  # fmt: skip
    if (
        options.fps is not None
        or request.window is not None
        or request.score != "likelihood"
        or request.threshold != 0.5
        or request.min_gap is not None
    ):
        raise UsageError(
            f"{', '.join(find_eval.FIND_OPTIONS)} are for the grounding benchmarks "
            f"({', '.join(find_eval.GROUNDING_BENCHMARKS)})",
            option="--fps",
        )
    try:
        benchmark, items = load_items(request.data, request.dataset, request.videos, request.label_field,
                                      request.split)  # fmt: skip
    except DatasetError as error:
        raise SetupError(str(error)) from error
    labels = label_set(benchmark, items)  # of all the examples, whatever --limit
    items = items[: request.limit] if request.limit else items
    check_checkpoint(options)
    folder = request.folder
    check_output_dir(folder, "--output")
    try:
        check_scorable(benchmark)
    except EvaluationError as error:
        raise SetupError(str(error)) from error
    check_videos(items, folder, reporter)

    from malmm_cli.jobs import evaluate as evaluation  # the model's half: torch from here on

    settings = eval_settings(request, options, benchmark, labels)
    options = dataclasses.replace(options, memory_bank_length=settings.memory_bank_length)
    malmm = load_model(options, benchmark.preset, reporter, readers=evaluation.readers_per_clip(benchmark, items),
                       frames=settings.frames)  # fmt: skip
    run = evaluation.Evaluation(malmm, benchmark, items, settings, folder, cache=options.cache(reporter),
                                on_unreadable=lambda video, reason: reporter.error(f"{video}: {reason}"))  # fmt: skip
    described = f"{benchmark.name} ({benchmark.task}): {counted(len(items), 'example')}"
    return run_evaluation(run, [item.id for item in items], described, reporter, progress)


def check_videos(items: list[Item], folder: Path, reporter: Reporter) -> None:
    """Videos that are not there are said before the model loads (the usual mistake is --videos,
    or the files' names): none there is refused; some missing are warned of, and their examples
    are left out of the metrics."""
    missing, videos_read = missing_videos(items, folder)
    if not missing:
        return
    where = "paths are relative to the data file's folder, or to --videos for MA-LMM annotations"
    if len(missing) == videos_read:
        raise SetupError(f"none of the {videos_read} videos exists (the first: {missing[0]}): {where}")
    reporter.warn(f"{len(missing)} of the {videos_read} videos do not exist (the first: {missing[0]}): their "
                  f"examples are left out of the metrics and the run ends with status 1 ({where})")  # fmt: skip


def check_scorable(benchmark: Benchmark) -> None:
    """What could not be scored at the end is refused before any video is read."""
    if benchmark.task == "caption" and importlib.util.find_spec("pycocoevalcap") is None:
        raise EvaluationError("caption metrics need pycocoevalcap: pip install 'malmm[eval]' (and Java for METEOR)")


def eval_settings(
    request: EvalRequest, options: RunOptions, benchmark: Benchmark, labels: tuple[str, ...]
) -> EvalSettings:
    """What the predictions depend on (eval.json); the device as it resolves here (torch)."""
    from malmm_cli.jobs.loading import resolve_device
    from malmm_cli.jobs.records import checkpoint_identity, file_identity, model_identity

    try:
        device_type = resolve_device(options.device).split(":")[0]
    except SetupError as error:
        raise UsageError(str(error), option="--device") from error
    data, videos = request.data, request.videos
    return EvalSettings(
        data=str(data.resolve()), data_content=file_identity(data), benchmark=benchmark.name,
        model=model_identity(options.model), checkpoint=checkpoint_identity(options.checkpoint),
        frames=options.frames or benchmark.frames,
        memory_bank_length=options.memory_bank_length or benchmark.memory_bank_length, memory=options.memory,
        precision={"device": device_type, "dtype": options.dtype, "quantize": options.quantize,
                   "quantize_vision": options.quantize_vision},
        label_field=request.label_field, videos=str(videos.resolve()) if videos else None, labels=labels,
    )  # fmt: skip
