"""`malmm eval` on the temporal grounding benchmarks (Charades-STA, QVHighlights, ActivityNet
Captions): `malmm find`'s reading of each video, scored by grounding.py's metrics.

The files and metrics are grounding.py's; what this module adds is the run. All the queries of
one video are found in one read of it (find's readers over the same frames: a video with ten
queries is decoded and encoded once), videos of equal sampling in lockstep (ModelReading, as the
video commands read). The folder is eval's (eval_run.py): predictions.jsonl, a line per query
appended as each video is read (a video at once, so a stopped run reads whole videos again),
metrics.json, and eval.json (`FindEvalSettings`, which a resumed run must keep). Importing this
module loads no torch: the file, the videos and the folder are checked before the model loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from malmm_cli.jobs.dataset import DatasetError, find_video
from malmm_cli.jobs.errors import SetupError, UsageError
from malmm_cli.jobs.eval_run import (
    METRICS,
    PREDICTIONS,
    SETTINGS,
    ClipsDone,
    EvalRequest,
    EvaluationError,
    appending_predictions,
    read_predictions,
    run_evaluation,
    unseen,
)
from malmm_cli.jobs.grounding import (
    ANET,
    CHARADES,
    CLIP_SECONDS,
    FORMATS,
    GROUNDING_BENCHMARKS,
    QVH_MAX_MOMENTS,
    QVHIGHLIGHTS,
    GroundingBenchmark,
    GroundingExample,
    grounding_metrics,
    load_grounding,
)
from malmm_cli.jobs.model import RunOptions, check_checkpoint, check_output_dir, load_model
from malmm_cli.jobs.videos import find_sampling
from malmm_cli.wording import counted
from models.presets import FIND

if TYPE_CHECKING:
    from malmm_cli.jobs.reporting import Reporter
    from malmm_cli.jobs.videos import ModelReading
    from malmm_cli.reading.pipeline import Reader
    from malmm_cli.reading.results import Found, VideoResult

TOP_K = QVH_MAX_MOMENTS  # moments kept per query: R@5 looks at 5, QVHighlights' mAP at 10
FIND_OPTIONS = ("--fps", "--window", "--score", "--threshold", "--min-gap")  # eval's options for these benchmarks only


def grounding_benchmark(data: Path, dataset: str | None) -> str | None:
    """The grounding benchmark DATA is scored as: the one named, else told by the file where
    nothing else eval reads looks alike (a `.txt` is Charades-STA's; a `.jsonl` whose first row
    has `qid` and `relevant_windows` is QVHighlights'); None: one of eval's other data. An
    ActivityNet Captions `.json` is an annotation file, named with --dataset as MA-LMM's are."""
    if dataset is not None:
        return dataset if dataset in GROUNDING_BENCHMARKS else None
    suffix = data.suffix.lower()
    if suffix == ".txt":
        return CHARADES
    if suffix == ".jsonl" and data.is_file():
        try:
            with data.open(encoding="utf-8") as file:
                first = next((line for line in file if line.strip()), "")
            row = json.loads(first)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return None
        if isinstance(row, dict) and "qid" in row and "relevant_windows" in row:
            return QVHIGHLIGHTS
    if suffix == ".json" and _looks_like_activitynet(data):
        raise SetupError(f"{data.name} is ActivityNet Captions' annotation: name it with --dataset {ANET}")
    return None


def _looks_like_activitynet(data: Path) -> bool:
    try:
        content = json.loads(data.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    first = next(iter(content.values()), None) if isinstance(content, dict) else None
    return isinstance(first, dict) and "timestamps" in first and "sentences" in first


@dataclass(frozen=True)
class FindEvalSettings:
    """What made the predictions (eval.json): a resumed run must keep them (--limit is not one)."""

    data: str
    data_content: str  # records.file_identity: an edited file is another
    benchmark: str
    model: str
    checkpoint: str | None
    fps: float | None
    frames: int | None
    window: float
    score: str
    threshold: float
    min_gap: float
    top_k: int
    memory_bank_length: int
    memory: str = "malmm"
    precision: dict[str, str] = field(default_factory=dict)
    videos: str | None = None


def evaluate_grounding(
    request: EvalRequest,
    options: RunOptions,
    reporter: Reporter,
    benchmark_name: str,
    progress: Callable[[int, int], AbstractContextManager[ClipsDone]] = unseen,
) -> dict[str, Any]:
    """eval_run.evaluate_data for a grounding benchmark: find every query not found yet in the
    folder, score them all, return the metrics (also in metrics.json)."""
    if request.label_field is not None or request.split is not None:
        option = "--label-field" if request.label_field is not None else "--split"
        raise UsageError(f"{option} is for MA-LMM's annotation files, not {benchmark_name}", option=option)
    benchmark = GROUNDING_BENCHMARKS[benchmark_name]
    examples, videos = grounding_queries(request, benchmark_name)
    options, window = find_sampling(options, request.window)
    check_checkpoint(options)
    folder = request.folder
    check_output_dir(folder, "--output")
    check_grounding_videos(examples, videos, folder, reporter)

    settings = find_eval_settings(request, options, benchmark, window)
    options = dataclasses.replace(options, memory_bank_length=settings.memory_bank_length)
    readers = readers_per_video(examples, settings.score)
    malmm = load_model(options, FIND, reporter, readers=readers, frames=options.most_frames(FIND))
    from malmm_cli.jobs.videos import model_reading

    reading = model_reading(malmm, options, FIND, "find", readers, options.cache(reporter))
    run = GroundingEvaluation(reading, benchmark, examples, videos, settings, folder,
                              on_unreadable=lambda video, reason: reporter.error(f"{video}: {reason}"))  # fmt: skip
    described = f"{benchmark.name} (find): {counted(len(examples), 'query')} of {counted(len(videos), 'video')}"
    return run_evaluation(run, [e.qid for e in examples], described, reporter, progress)


def grounding_queries(request: EvalRequest, name: str) -> tuple[list[GroundingExample], dict[str, Path]]:
    """The queries of grounding benchmark `name`'s file (the first --limit of them) and where each
    video is (--videos, else the file's folder); SetupError for a file of another format, or one
    that does not read."""
    expected = next(suffix for suffix, kind in FORMATS.items() if kind == GROUNDING_BENCHMARKS[name].format)
    if request.data.suffix.lower() != expected:
        raise SetupError(f"{name} is read from its {expected} file, not {request.data.name}")
    try:
        examples = load_grounding(request.data)
    except DatasetError as error:
        raise SetupError(str(error)) from error
    examples = examples[: request.limit] if request.limit else examples
    return examples, video_paths(examples, request.videos or request.data.parent)


def video_paths(examples: list[GroundingExample], folder: Path) -> dict[str, Path]:
    """Each video id's file under `folder` (by name, `v_` + name, any video extension)."""
    return {vid: find_video(folder, vid) for vid in dict.fromkeys(e.video_id for e in examples)}


def check_grounding_videos(
    examples: list[GroundingExample], videos: dict[str, Path], folder: Path, reporter: Reporter
) -> None:
    """As eval_run.check_videos: of the videos still to read, none there is refused, some missing
    are warned of (their queries are left out of the metrics, status 1)."""
    done: set[str] = set()
    with contextlib.suppress(EvaluationError, KeyError, TypeError):  # reported as it is when the run starts
        done = {row["id"] for row in read_predictions(folder / PREDICTIONS) if "error" not in row}
    to_read = dict.fromkeys(e.video_id for e in examples if e.qid not in done)
    missing = [videos[vid] for vid in to_read if not videos[vid].is_file()]
    if not missing:
        return
    where = "videos are looked up in --videos (default: the data file's folder) by their id, with any extension"
    if len(missing) == len(to_read):
        raise SetupError(f"none of the {len(to_read)} videos exists (the first: {missing[0]}): {where}")
    reporter.warn(f"{len(missing)} of the {len(to_read)} videos do not exist (the first: {missing[0]}): their "
                  f"queries are left out of the metrics and the run ends with status 1 ({where})")  # fmt: skip


def find_eval_settings(
    request: EvalRequest, options: RunOptions, benchmark: GroundingBenchmark, window: float
) -> FindEvalSettings:
    from malmm_cli.jobs.loading import resolve_device
    from malmm_cli.jobs.records import checkpoint_identity, file_identity, model_identity

    try:
        device_type = resolve_device(options.device).split(":")[0]
    except SetupError as error:
        raise UsageError(str(error), option="--device") from error
    return FindEvalSettings(
        data=str(request.data.resolve()), data_content=file_identity(request.data), benchmark=benchmark.name,
        model=model_identity(options.model), checkpoint=checkpoint_identity(options.checkpoint),
        fps=options.fps, frames=options.frames, window=window, score=request.score, threshold=request.threshold,
        min_gap=window if request.min_gap is None else request.min_gap, top_k=TOP_K,
        memory_bank_length=options.bank(FIND), memory=options.memory,
        precision={"device": device_type, "dtype": options.dtype, "quantize": options.quantize,
                   "quantize_vision": options.quantize_vision},
        videos=str(request.videos.resolve()) if request.videos else None,
    )  # fmt: skip


def by_video(examples: list[GroundingExample]) -> list[list[GroundingExample]]:
    """The queries grouped by video (one read finds them all), videos in first-seen order."""
    grouped: dict[str, list[GroundingExample]] = {}
    for example in examples:
        grouped.setdefault(example.video_id, []).append(example)
    return list(grouped.values())


def readers_per_video(examples: list[GroundingExample], score: str) -> int:
    """The memories one read steps: two with the likelihood rule (the windows' and the whole
    video's, every query ranked by both), one per distinct query with the yes rule."""
    if score != "yes":
        return 2
    return max((len({e.query for e in group}) for group in by_video(examples)), default=1)


class GroundingEvaluation:
    """One grounding evaluation: its queries, their videos, the folder, how videos are read."""

    def __init__(
        self,
        reading: ModelReading | None,
        benchmark: GroundingBenchmark,
        examples: list[GroundingExample],
        videos: dict[str, Path],
        settings: FindEvalSettings,
        output: Path,
        on_unreadable: Callable[[Path, str], None] = lambda video, reason: None,
    ):
        self.reading, self.benchmark, self.examples, self.videos = reading, benchmark, examples, videos
        self.settings, self.output, self.on_unreadable = settings, output, on_unreadable

    def start(self) -> set[str]:
        """Prepare the folder; the ids already found by an earlier run of the same settings
        (another run's folder is refused). A video's rows cut short by a kill, and the error rows
        of videos that could not be read, are removed: those videos are read again, whole."""
        from malmm_cli.jobs.records import changed_values
        from malmm_cli.output.writers import write_atomic, write_json

        self.output.mkdir(parents=True, exist_ok=True)
        info = self.output / SETTINGS
        current = json.loads(json.dumps(dataclasses.asdict(self.settings)))
        if info.is_file():
            stored = json.loads(info.read_text())
            if stored != current:
                raise EvaluationError(f"{self.output} holds predictions made otherwise "
                                      f"({changed_values(stored, current)}): use another --output or the same "
                                      "settings")  # fmt: skip
        else:
            write_json(info, current)
        path = self.output / PREDICTIONS
        rows = read_predictions(path)
        done = {row["id"] for row in rows if "error" not in row}
        partial = {e.qid for group in by_video(self.examples) if not all(e.qid in done for e in group)
                   for e in group if e.qid in done}  # fmt: skip
        kept = [row for row in rows if row["id"] in done - partial]
        if len(kept) < len(rows):
            write_atomic(path, "".join(json.dumps(row) + "\n" for row in kept))
        return done - partial

    def run(
        self, on_video: Callable[[int, float], None] = lambda queries, seconds: None, done: set[str] | None = None
    ) -> dict[str, Any]:
        """Find every query not yet found, then score all of them. on_video(queries, seconds)
        after each video."""
        from malmm_cli.output.writers import write_json

        done = self.start() if done is None else done
        todo = by_video([e for e in self.examples if e.qid not in done])
        with appending_predictions(self.output / PREDICTIONS, on_video) as write:  # a video at once
            self.predict(todo, write)
        metrics = self.score()
        write_json(self.output / METRICS, metrics)
        return metrics

    def predict(
        self,
        groups: list[list[GroundingExample]],
        on_predicted: Callable[[list[GroundingExample], list[dict[str, Any]]], None],
    ) -> None:
        """Read each video once with find's readers for all its queries, videos of one sampling in
        lockstep; on_predicted(group, rows) in the groups' order, as soon as a video and those
        before it are read."""
        if not groups:
            return
        from malmm_cli.reading.lockstep import Clip
        from malmm_cli.reading.stream import NoProgress

        assert self.reading is not None
        clips = [Clip(self.videos[group[0].video_id], self.reading.sampling, tuple(self.readers(group)))
                 for group in groups]  # fmt: skip
        ready: dict[int, list[dict[str, Any]]] = {}
        given = 0

        def read(number: int, result: VideoResult | Exception) -> None:
            nonlocal given
            ready[number] = self._rows(groups[number], result)
            while given in ready:
                on_predicted(groups[given], ready.pop(given))
                given += 1

        self.reading.read(clips, [NoProgress() for _ in clips], read)

    def readers(self, group: list[GroundingExample]) -> list[Reader]:
        """What one read of a video asks: find's readers for all its queries."""
        from malmm_cli.reading.find import FindRule
        from malmm_cli.reading.pipeline import find_readers

        s = self.settings
        rule = FindRule(s.score, s.threshold, s.min_gap, s.top_k)
        return find_readers([e.query for e in group], s.window, rule)

    def _rows(self, group: list[GroundingExample], result: VideoResult | Exception) -> list[dict[str, Any]]:
        """A video's rows, one per query; a video that cannot be read: rows with its error."""
        from malmm_cli.media.plans import VideoError

        video = self.videos[group[0].video_id]
        if isinstance(result, (VideoError, OSError)):
            reason = str(result) or type(result).__name__
            self.on_unreadable(video, reason)
            return [self.error_row(e, video, reason) for e in group]
        if isinstance(result, Exception):  # not the video's fault: the run stops
            raise result
        return self.predicted_rows(group, video, result)

    def error_row(self, example: GroundingExample, video: Path, reason: str) -> dict[str, Any]:
        """The row of a query whose video could not be read."""
        return {**_row(example, video), "error": reason}

    def predicted_rows(self, group: list[GroundingExample], video: Path, result: VideoResult) -> list[dict[str, Any]]:
        """A read video's rows: each query's moments found, beside its truth."""
        found = {f.query: f for f in result.found}
        return [{**_row(e, video), **_predicted(e, found[e.query])} for e in group]

    def score(self) -> dict[str, Any]:
        """The metrics of every prediction in the folder (of this run's queries)."""
        wanted = {e.qid for e in self.examples}
        rows = {row["id"]: row for row in read_predictions(self.output / PREDICTIONS) if row["id"] in wanted}
        scored = [e for e in self.examples if e.qid in rows and "error" not in rows[e.qid]]
        moments = {e.qid: rows[e.qid]["moments"] for e in scored}
        curves = None
        if self.benchmark.format == QVHIGHLIGHTS:
            curves = {e.qid: saliency_curve(rows[e.qid]["saliency"]) for e in scored}
        metrics = grounding_metrics(scored, moments, curves=curves) if scored else {}
        unreadable = sum("error" in row for row in rows.values())
        return {
            "dataset": self.benchmark.name,
            "examples": len(scored),
            "unreadable": unreadable,
            "missing": len(wanted) - len(rows),
            "metrics": metrics,
            "reference": self.benchmark.reference,
            "reference_model": self.benchmark.reference_model,
            "settings": dataclasses.asdict(self.settings),
        }


def _row(example: GroundingExample, video: Path) -> dict[str, Any]:
    truth = [list(window) for window in example.windows]
    return {"id": example.qid, "video": str(video), "query": example.query, "windows": truth}


def _predicted(example: GroundingExample, found: Found) -> dict[str, Any]:
    """A query's moments (best first, [start, end, score]) and curve ([window start, score], as
    find writes it); for QVHighlights, its score per 2-second clip too (HIT@1, HL-mAP)."""
    row: dict[str, Any] = {
        "moments": [[m.start, m.end, m.score] for m in found.moments],
        "curve": [[start, score] for start, _, score in found.curve],
    }
    if example.saliency is not None:
        row["saliency"] = window_clip_scores(found.curve, example.duration or 0.0)
    return row


def window_clip_scores(curve: list[tuple[float, float, float]], duration: float) -> list[float]:
    """Find's windows (start, end, score) as a score per 2-second clip (int(duration / 2) of
    them, as QVHighlights counts them): the mean of the windows over the clip, weighted by how
    much of it each covers; a clip no window reaches (the annotation's duration past the read
    video's end) takes the nearest window's score."""
    scores = []
    for index in range(int(duration / CLIP_SECONDS)):
        begin, end = index * CLIP_SECONDS, (index + 1) * CLIP_SECONDS
        weights = [(min(e, end) - max(s, begin), score) for s, e, score in curve if min(e, end) > max(s, begin)]
        if weights:
            scores.append(sum(w * score for w, score in weights) / sum(w for w, _ in weights))
        else:
            middle = (begin + end) / 2
            nearest = min(curve, key=lambda w: min(abs(w[0] - middle), abs(w[1] - middle)), default=None)
            scores.append(nearest[2] if nearest is not None else 0.0)
    return scores


def saliency_curve(saliency: list[float]) -> list[tuple[float, float]]:
    """Clip scores as the (seconds, score) curve grounding_metrics takes: a sample at each clip's
    middle, which clip_scores gives back unchanged."""
    return [((index + 0.5) * CLIP_SECONDS, score) for index, score in enumerate(saliency)]
