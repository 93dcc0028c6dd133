"""Temporal grounding benchmarks (issue 29, for `malmm find`): their files, read into one record
type, and their metrics, computed as each benchmark's own evaluation computes them. Pure functions
over plain data, no torch and no numpy, so that a wrong file is said before any model loads.

Formats (`load_grounding` tells them by extension):

- Charades-STA (`.txt`): `VIDEO START END##SENTENCE` a line; no duration in the file.
- QVHighlights (`.jsonl`): a query a line, with `qid`, `query`, `vid`, `duration`,
  `relevant_windows` and, per relevant 2-second clip (`relevant_clip_ids`), three annotators'
  `saliency_scores` (0-4).
- ActivityNet Captions (`.json`): `{video_id: {"duration", "timestamps", "sentences"}}`, a query
  per sentence.

Metrics (percent, as the papers print them; `grounding_metrics` picks the set by format):

- Charades-STA and ActivityNet Captions: `R{n}@{m}`, the share of queries with a moment among
  their first n (n = 1, 5) whose IoU with the ground truth is >= m (0.3, 0.5, 0.7); `mIoU`, the
  mean IoU of each query's first moment.
- QVHighlights, as moment_detr's standalone_eval/eval.py (its reference) computes the "full"
  figures: `MR-R1@0.5`/`@0.7` (the first moment against the ground-truth window it overlaps
  most); `MR-mAP@0.5`, `@0.75` and `MR-mAP` (the mean over IoU 0.5:0.05:0.95): per query, its
  first 10 moments ranked by score, each matched greedily to the unmatched ground-truth window of
  highest IoU, AP with all-point interpolation (VOC 2011 style, not COCO's 101 points), averaged
  over queries. With per-clip saliency (`clip_scores` makes it from a score curve): `HIT@1`, the
  share of queries whose top clip some annotator scored >= 4 ("Very Good"), and `HL-mAP`, the
  ranking AP of the clips against each annotator's >= 4 clips, averaged over annotators and
  queries; these two are the figures TimeChat reports for QVHighlights.

Wiring into `malmm eval` (comes with `malmm find`): `examples = load_grounding(path)`; for each
example run find on the video named by `example.video_id` with `example.query`, keep its moments
(best first) and, for QVHighlights, its score curve; then
`grounding_metrics(examples, {example.qid: moments}, curves={example.qid: curve})`.
`GROUNDING_BENCHMARKS` holds each benchmark's name, format and reference figures.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from malmm_cli.jobs.dataset import DatasetError, seconds_value

CHARADES, QVHIGHLIGHTS, ANET = "charades-sta", "qvhighlights", "anet-captions-grounding"
FORMATS = {".txt": CHARADES, ".jsonl": QVHIGHLIGHTS, ".json": ANET}
RECALL_AT = (1, 5)  # R@n: Charades-STA and ActivityNet Captions
RECALL_IOUS = (0.3, 0.5, 0.7)
QVH_R1_IOUS = (0.5, 0.7)
QVH_MAP_IOUS = tuple(round(0.5 + 0.05 * step, 2) for step in range(10))  # 0.5:0.05:0.95
QVH_MAX_MOMENTS = 10  # moment_detr scores a query's first 10 predicted windows
CLIP_SECONDS = 2.0  # QVHighlights' saliency clips
VERY_GOOD = 4  # the saliency score a clip needs to count as a highlight (TimeChat's figures)


@dataclass(frozen=True)
class GroundingBenchmark:
    """A grounding benchmark: its file format and a published figure to compare with."""

    name: str
    format: str
    metrics: tuple[str, ...]  # the headline metrics, as grounding_metrics names them
    reference: dict[str, float] = field(default_factory=dict)
    reference_model: str = ""


GROUNDING_BENCHMARKS = {
    b.name: b
    for b in [
        GroundingBenchmark(CHARADES, CHARADES, ("R1@0.5", "R1@0.7", "mIoU"),
                           {"R1@0.5": 32.2, "R1@0.7": 13.4}, "TimeChat-7B, zero-shot"),
        GroundingBenchmark(QVHIGHLIGHTS, QVHIGHLIGHTS, ("HL-mAP", "HIT@1", "MR-R1@0.5", "MR-mAP"),
                           {"HL-mAP": 14.5, "HIT@1": 23.9}, "TimeChat-7B, zero-shot"),
        GroundingBenchmark(ANET, ANET, ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")),
    ]
}  # fmt: skip


@dataclass(frozen=True)
class Moment:
    """A predicted moment: seconds, and how sure (a higher score ranks first)."""

    start: float
    end: float
    score: float = 1.0


@dataclass(frozen=True)
class GroundingExample:
    """One query about one video and where it happens (one window, several for QVHighlights)."""

    qid: str
    video_id: str
    query: str
    windows: tuple[tuple[float, float], ...]
    duration: float | None = None
    # QVHighlights: each 2-second clip of the video (int(duration / 2) of them), its three
    # annotators' scores 0-4; 0 for the clips the annotation does not list, as moment_detr fills them
    saliency: tuple[tuple[int, ...], ...] | None = None
    benchmark: str = ""


MomentLike = Moment | Sequence[float]
Curve = Sequence[tuple[float, float]]


# --- Reading -------------------------------------------------------------------------------------


def load_grounding(path: Path) -> list[GroundingExample]:
    """Every query of a grounding benchmark file, its format told by the extension: `.txt`
    Charades-STA, `.jsonl` QVHighlights, `.json` ActivityNet Captions. DatasetError names the file,
    the line or entry and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        wanted = "Charades-STA's .txt, QVHighlights' .jsonl or ActivityNet Captions' .json"
        raise DatasetError(f"{path.name}: give {wanted}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path.name} is not UTF-8 text: {error}") from error
    examples = {CHARADES: _charades, QVHIGHLIGHTS: _qvhighlights, ANET: _activitynet}[kind](path.name, text)
    if not examples:
        raise DatasetError(f"{path.name} has no queries")
    seen: set[str] = set()
    for example in examples:
        if example.qid in seen:
            raise DatasetError(f"{path.name}: two queries have the id {example.qid!r}")
        seen.add(example.qid)
    return examples


def _window(value: Any, where: str) -> tuple[float, float]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise DatasetError(f"{where}: a window is [start, end] in seconds, not {value!r}")
    start, end = seconds_value(value[0], "a window's start", where), seconds_value(value[1], "a window's end", where)
    if end <= start:
        raise DatasetError(f"{where}: a window must end after it starts, not {value!r}")
    return (start, end)


def _charades(name: str, text: str) -> list[GroundingExample]:
    """`3MSZA 24.3 30.4##person turn a light on.`; a query is named by its video and line number
    (the file has no ids; a video has several lines)."""
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        head, separator, sentence = line.partition("##")
        fields = head.split()
        if not separator or len(fields) != 3 or not sentence.strip():
            raise DatasetError(f"{where}: expected 'VIDEO START END##SENTENCE', not {line.strip()[:80]!r}")
        window = _window(fields[1:], where)
        examples.append(GroundingExample(f"{fields[0]}_{number}", fields[0], sentence.strip(), (window,),
                                         benchmark=CHARADES))  # fmt: skip
    return examples


def _qvhighlights(name: str, text: str) -> list[GroundingExample]:
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{name} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{where}: not JSON ({error.msg})") from error
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: a row must be a JSON object")
        missing = [key for key in ("qid", "query", "vid", "duration") if row.get(key) in (None, "")]
        if missing:
            raise DatasetError(f"{where}: no {', '.join(missing)}")
        if not row.get("relevant_windows"):
            raise DatasetError(f"{where}: no relevant_windows (QVHighlights' test release has no answers: "
                               "score the val split)")  # fmt: skip
        duration = seconds_value(row["duration"], "duration", where)
        windows = tuple(_window(window, where) for window in row["relevant_windows"])
        examples.append(GroundingExample(str(row["qid"]), str(row["vid"]), str(row["query"]), windows, duration,
                                         _saliency(row, duration, where), QVHIGHLIGHTS))  # fmt: skip
    return examples


def _saliency(row: dict, duration: float, where: str) -> tuple[tuple[int, ...], ...] | None:
    """Every clip's three scores, 0 where the annotation lists none (moment_detr's mk_gt_scores)."""
    ids, scores = row.get("relevant_clip_ids"), row.get("saliency_scores")
    if ids is None and scores is None:
        return None
    if not isinstance(ids, list) or not isinstance(scores, list) or len(ids) != len(scores):
        raise DatasetError(f"{where}: relevant_clip_ids and saliency_scores must be lists of the same length")
    clips = [(0, 0, 0)] * int(duration / CLIP_SECONDS)
    for clip, score in zip(ids, scores, strict=True):
        if not isinstance(clip, int) or not 0 <= clip < len(clips):
            raise DatasetError(f"{where}: clip id {clip!r} is not one of the video's {len(clips)} 2-second clips")
        if not (isinstance(score, list) and len(score) == 3 and all(isinstance(s, int) and 0 <= s <= 4 for s in score)):
            raise DatasetError(f"{where}: clip {clip}'s saliency must be three scores 0-4, not {score!r}")
        clips[clip] = tuple(score)
    return tuple(clips)


def _activitynet(name: str, text: str) -> list[GroundingExample]:
    """A query per sentence, named `VIDEO_N`. A sentence whose window ends before it starts is
    left out and an end past the video's duration cut to it, as 2D-TAN's loader (the common
    ActivityNet grounding protocol) does: the annotation has a few of each."""
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{name}: not JSON ({error.msg}, line {error.lineno})") from error
    if not isinstance(content, dict):
        raise DatasetError(f"{name}: expected ActivityNet Captions' {{video_id: {{duration, timestamps, sentences}}}}")
    examples = []
    for video, entry in content.items():
        where = f"{name} entry {video!r}"
        if not isinstance(entry, dict) or not all(key in entry for key in ("duration", "timestamps", "sentences")):
            raise DatasetError(f"{where}: needs duration, timestamps and sentences")
        timestamps, sentences = entry["timestamps"], entry["sentences"]
        if not isinstance(timestamps, list) or not isinstance(sentences, list) or len(timestamps) != len(sentences):
            raise DatasetError(f"{where}: timestamps and sentences must be lists of the same length")
        duration = seconds_value(entry["duration"], "duration", where)
        for number, (stamp, sentence) in enumerate(zip(timestamps, sentences, strict=True)):
            if not isinstance(stamp, list) or len(stamp) != 2:
                raise DatasetError(f"{where}: timestamp {number} is [start, end] in seconds, not {stamp!r}")
            start = seconds_value(stamp[0], f"timestamp {number}'s start", where)
            end = min(seconds_value(stamp[1], f"timestamp {number}'s end", where), duration)
            if end <= start:
                continue
            examples.append(GroundingExample(f"{video}_{number}", str(video), str(sentence).strip(), ((start, end),),
                                             duration, benchmark=ANET))  # fmt: skip
    return examples


# --- Metrics -------------------------------------------------------------------------------------


def temporal_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (start, end) windows, 0 for windows that do not meet."""
    intersection = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - intersection
    return intersection / union if union > 0 else 0.0


def _as_moment(value: MomentLike) -> Moment:
    if isinstance(value, Moment):
        return value
    return Moment(float(value[0]), float(value[1]), float(value[2]) if len(value) > 2 else 1.0)


def _best_iou(moment: Moment, windows: Sequence[tuple[float, float]]) -> float:
    return max((temporal_iou((moment.start, moment.end), window) for window in windows), default=0.0)


def recall_metrics(
    examples: Sequence[GroundingExample],
    moments: Sequence[Sequence[MomentLike]],
    at: Sequence[int] = RECALL_AT,
    ious: Sequence[float] = RECALL_IOUS,
) -> dict[str, float]:
    """`R{n}@{m}` for each n and m, and `mIoU`, in percent. moments: each example's, best first
    (ranked as given: R@5 looks at the first five). A query with no moment counts as a miss, IoU 0."""
    ranked = [[_as_moment(m) for m in each] for each in moments]
    pairs = list(zip(examples, ranked, strict=True))
    # per n, each query's best IoU among its first n moments
    best = {n: [max((_best_iou(m, e.windows) for m in r[:n]), default=0.0) for e, r in pairs] for n in at}
    count = max(len(examples), 1)
    metrics = {f"R{n}@{m:g}": 100.0 * sum(iou >= m for iou in best[n]) / count for n in at for m in ious}
    first = [_best_iou(r[0], e.windows) if r else 0.0 for e, r in pairs]
    metrics["mIoU"] = 100.0 * sum(first) / count
    return metrics


def detection_ap(
    windows: Sequence[tuple[float, float]], moments: Sequence[MomentLike], ious: Sequence[float] = QVH_MAP_IOUS
) -> list[float]:
    """One query's average precision (fractions) at each IoU threshold, as moment_detr computes
    it: its first QVH_MAX_MOMENTS moments ranked by score (a stable sort), each matched to the
    unmatched window of highest IoU if that IoU reaches the threshold (a true positive), else a
    false positive; AP is the area under the precision-recall curve with precision made
    non-increasing (all-point interpolation)."""
    ranked = sorted((_as_moment(m) for m in moments[:QVH_MAX_MOMENTS]), key=lambda m: -m.score)
    if not ranked or not windows:
        return [0.0] * len(ious)
    overlaps = [[temporal_iou((m.start, m.end), w) for w in windows] for m in ranked]
    aps = []
    for threshold in ious:
        matched: set[int] = set()
        hits = []
        for row in overlaps:
            hit = False
            # windows by decreasing IoU (ties: the later window first, as moment_detr's reversed argsort)
            for j in sorted(range(len(row)), key=lambda j: (row[j], j), reverse=True):
                if row[j] < threshold:
                    break
                if j not in matched:
                    matched.add(j)
                    hit = True
                    break
            hits.append(hit)
        aps.append(_interpolated_ap(hits, len(windows)))
    return aps


def _interpolated_ap(hits: Sequence[bool], positives: int) -> float:
    """Area under the precision-recall curve of a ranking (hits: whether each ranked moment is a
    true positive), precision at each recall taken as the best at that recall or beyond."""
    precision, recall, found = [], [], 0
    for rank, hit in enumerate(hits, start=1):
        found += hit
        precision.append(found / rank)
        recall.append(found / positives)
    for k in range(len(precision) - 2, -1, -1):
        precision[k] = max(precision[k], precision[k + 1])
    area, previous = 0.0, 0.0
    for p, r in zip(precision, recall, strict=True):
        if r != previous:
            area += (r - previous) * p
            previous = r
    return area


def moment_retrieval_metrics(
    examples: Sequence[GroundingExample], moments: Sequence[Sequence[MomentLike]]
) -> dict[str, float]:
    """QVHighlights' moment retrieval figures, in percent: `MR-R1@0.5`, `MR-R1@0.7` (the first
    moment against the window it overlaps most), `MR-mAP@0.5`, `MR-mAP@0.75`, `MR-mAP` (the
    mean over 0.5:0.05:0.95)."""
    recall = recall_metrics(examples, moments, at=(1,), ious=QVH_R1_IOUS)
    metrics = {f"MR-R1@{m:g}": recall[f"R1@{m:g}"] for m in QVH_R1_IOUS}
    aps = [detection_ap(e.windows, each) for e, each in zip(examples, moments, strict=True)]
    count = max(len(aps), 1)
    by_iou = [100.0 * sum(ap[t] for ap in aps) / count for t in range(len(QVH_MAP_IOUS))]
    metrics["MR-mAP@0.5"] = by_iou[QVH_MAP_IOUS.index(0.5)]
    metrics["MR-mAP@0.75"] = by_iou[QVH_MAP_IOUS.index(0.75)]
    metrics["MR-mAP"] = sum(by_iou) / len(by_iou)
    return metrics


def ranking_ap(relevant: Sequence[bool], scores: Sequence[float]) -> float:
    """Average precision of clips ranked by score (moment_detr's get_ap, interpolated): at each
    distinct score, from the highest, precision and recall of the clips scored at least that; the
    mean, over the recall levels reached, of the best precision at that recall or beyond. All
    clips relevant: 1; none: 0."""
    positives = sum(bool(r) for r in relevant)
    if positives == 0 or positives == len(relevant):
        return float(positives > 0)
    points = []  # (precision, recall) of the clips scored at least each threshold, the highest first
    for threshold in sorted(set(scores), reverse=True):
        chosen = [bool(r) for r, s in zip(relevant, scores, strict=True) if s >= threshold]
        points.append((sum(chosen) / len(chosen), sum(chosen) / positives))
        if sum(chosen) == positives:
            break
    levels, previous = [], 0.0
    for k, (_, recall) in enumerate(points):
        if recall != previous:  # a recall level first reached: the best precision from here on
            levels.append(max(precision for precision, _ in points[k:]))
            previous = recall
    return sum(levels) / len(levels)


def highlight_metrics(
    examples: Sequence[GroundingExample], saliency: Sequence[Sequence[float]], min_score: int = VERY_GOOD
) -> dict[str, float]:
    """QVHighlights' highlight figures, in percent (moment_detr's HL-min-VeryGood at min_score 4):
    `HIT@1`, the share of queries whose highest-scored clip (the first of equals) some annotator
    scored >= min_score; `HL-mAP`, `ranking_ap` of the predicted clip scores (cut or padded with
    0 to the video's clips) against each annotator's clips scored >= min_score, averaged over the
    three annotators and the queries. saliency: each example's predicted score per 2-second clip."""
    hits, aps = [], []
    for example, predicted in zip(examples, saliency, strict=True):
        truth = example.saliency
        if truth is None:
            raise ValueError(f"query {example.qid} has no saliency annotation")
        top = max(range(len(predicted)), key=lambda clip: (predicted[clip], -clip), default=None)
        hits.append(top is not None and top < len(truth) and any(s >= min_score for s in truth[top]))
        scores = [*predicted[: len(truth)], *[0.0] * (len(truth) - len(predicted))]
        for annotator in range(3):
            aps.append(ranking_ap([clip[annotator] >= min_score for clip in truth], scores))
    return {
        "HL-mAP": 100.0 * sum(aps) / max(len(aps), 1),
        "HIT@1": 100.0 * sum(hits) / max(len(hits), 1),
    }


def clip_scores(curve: Curve, duration: float, clip: float = CLIP_SECONDS) -> list[float]:
    """A find run's score curve ((seconds, score) samples) as one score per `clip` seconds of the
    video (int(duration / clip) of them, as QVHighlights counts clips): the mean of the samples in
    the clip, or where none falls in it the curve's value at the clip's middle (linear between
    samples, the nearest sample's beyond them). No samples: all 0."""
    samples = sorted((float(t), float(s)) for t, s in curve)
    count = int(duration / clip)
    if not samples:
        return [0.0] * count
    scores = []
    for index in range(count):
        inside = [s for t, s in samples if index * clip <= t < (index + 1) * clip]
        scores.append(sum(inside) / len(inside) if inside else _value_at(samples, (index + 0.5) * clip))
    return scores


def _value_at(samples: list[tuple[float, float]], time: float) -> float:
    if time <= samples[0][0]:
        return samples[0][1]
    for (t0, s0), (t1, s1) in pairwise(samples):
        if t0 <= time <= t1:
            return s0 if t1 == t0 else s0 + (s1 - s0) * (time - t0) / (t1 - t0)
    return samples[-1][1]


def _per_example(examples: Sequence[GroundingExample], given: Mapping | Sequence, what: str) -> list:
    """`given` in the examples' order: a mapping by qid (any key type: compared as text) or a
    list in the examples' order."""
    if isinstance(given, Mapping):
        by_qid = {str(key): value for key, value in given.items()}
        missing = [e.qid for e in examples if e.qid not in by_qid]
        if missing:
            raise ValueError(f"no {what} for {len(missing)} queries ({', '.join(missing[:3])}...)")
        return [by_qid[e.qid] for e in examples]
    if len(given) != len(examples):
        raise ValueError(f"{len(given)} {what} for {len(examples)} queries")
    return list(given)


def grounding_metrics(
    examples: Sequence[GroundingExample],
    predictions: Mapping[Any, Sequence[MomentLike]] | Sequence[Sequence[MomentLike]],
    curves: Mapping[Any, Curve] | Sequence[Curve] | None = None,
) -> dict[str, float]:
    """The metrics of the examples' benchmark, in percent. predictions: each example's moments,
    best first (Moment, or (start, end, score)), by qid or as a list in the examples' order; an
    empty list is a miss. curves (QVHighlights): each example's find score curve, (seconds,
    score) samples, for HIT@1 and HL-mAP (without them these two are left out)."""
    kinds = {e.benchmark for e in examples}
    if len(kinds) > 1:
        raise ValueError(f"examples of several benchmarks ({', '.join(sorted(kinds))}): score each on its own")
    moments = _per_example(examples, predictions, "predictions")
    if kinds != {QVHIGHLIGHTS}:
        return recall_metrics(examples, moments)
    metrics = moment_retrieval_metrics(examples, moments)
    if curves is not None:
        given = _per_example(examples, curves, "curves")
        saliency = [clip_scores(curve, e.duration or 0.0) for e, curve in zip(examples, given, strict=True)]
        metrics |= highlight_metrics(examples, saliency)
    return metrics
