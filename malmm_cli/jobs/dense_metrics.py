"""Dense video captioning metrics as TimeChat reports them on YouCook2 (issue 30): SODA_c, CIDEr
and METEOR over matched events, and F1 of event localisation. Plain data in, percentages out (as
the papers print them); no torch.

What is averaged over what follows the evaluation TimeChat runs (its metrics/dvc/eval_dvc.py,
Vid2Seq's port of ranjaykrishna/densevid_eval with SODA_c from fujiso/SODA). Every video of the
references counts; a video without predictions scores 0 everywhere. Per video:

- Localisation, at each IoU threshold 0.3, 0.5, 0.7, 0.9: precision is the share of predicted
  events that overlap some reference event by IoU > threshold, recall the share of reference
  events some prediction overlaps so. Each is averaged over the thresholds, and the video's F1
  is made from those two means. The figures are the means over videos (F1 included: the mean of
  the videos' F1, not the F1 of the mean precision and recall, as eval_dvc prints it).
- CIDEr and METEOR, at each threshold: every (prediction, reference) pair with IoU >= threshold
  is a pair to score, and a prediction that overlaps no reference that much is paired with a
  reference it cannot match (the reference code uses a random word, here a fixed one), so it
  scores 0 and still counts. CIDEr (its document frequencies from that video's pairs only, as
  there) and METEOR (the jar's aggregate over the pairs) are computed per video and threshold,
  averaged over thresholds, then over videos.
- SODA_c: the score matrix IoU x METEOR between every reference and every prediction, the best
  one-to-one matching that keeps both in order (dynamic programming, `ordered_match`), and the
  F-measure of precision = matched score / predictions and recall = matched score / references.
  Predictions are taken in the order the answer gives them, as TimeChat's evaluation does (the
  SODA repository sorts them by start first). METEOR is called with the reference sentence as
  the hypothesis and the prediction as the reference, as both reference implementations do.

IoU is `dense_iou`: the densevid_eval formula, whose 1e-8 in the denominator matters with
whole-second times: a pair at exactly IoU 0.5 does not reach 0.5 there, nor here.

METEOR needs Java (the jar in pycocoevalcap), and the PTB tokenizer too; without Java the text is
tokenized by `scoring.simple_tokens`, CIDEr is still computed, and METEOR and SODA_c are None (not
computed) rather than guessed.

Checked against the reference code run on the hand-made predictions of tests/test_dense_metrics.py
(whose docstring lists the figures): TimeChat's eval_dvc.py functions with its own CIDEr and METEOR
wrappers (pycocoevalcap 1.2's jars) give every figure here to 4 decimals, and fujiso/SODA's soda.py
gives the same per-video SODA_c. One difference is on purpose: eval_dvc's METEOR wrapper orders the
pairs by their keys as strings, so in a video with 11 or more predictions its SODA_c scores land on
the wrong events (eleven perfect predictions: 40.5 there, 100 here). fujiso/SODA also leaves out of
its mean the videos without predictions, which eval_dvc (and this module) count as 0.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence

from malmm_cli.jobs.scoring import java_available, tokenized
from malmm_cli.reading.results import TimedText

IOU_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
# The reference a prediction that overlaps no reference event is scored against: one word no
# sentence contains (densevid_eval draws 10-20 random letters; one word either way).
NO_MATCH = "qzxjvkwqpz"
DENSE_METRICS = ("SODA_c", "CIDEr", "METEOR", "F1")


def dense_iou(a: TimedText, b: TimedText) -> float:
    """Temporal IoU as densevid_eval computes it (1e-8 added to the union), so that pairs exactly
    at a threshold fall on the same side of it as in TimeChat's figures."""
    intersection = max(0.0, min(a.end, b.end) - max(a.start, b.start))
    union = min(max(a.end, b.end) - min(a.start, b.start), (a.end - a.start) + (b.end - b.start))
    return intersection / (union + 1e-8)


def localisation(
    predicted: Sequence[TimedText], reference: Sequence[TimedText], thresholds: Sequence[float] = IOU_THRESHOLDS
) -> tuple[list[float], list[float]]:
    """One video's precision and recall at each threshold (fractions): predictions, and reference
    events, that have a partner with IoU above the threshold."""
    ious = [[dense_iou(p, r) for r in reference] for p in predicted]
    precision = [sum(any(iou > t for iou in row) for row in ious) / max(len(predicted), 1) for t in thresholds]
    recall = [sum(any(row[j] > t for row in ious) for j in range(len(reference))) / len(reference) for t in thresholds]
    return precision, recall


def caption_pairs(
    predicted: Sequence[TimedText], reference: Sequence[TimedText], threshold: float
) -> list[tuple[int, int | None]]:
    """The (prediction, reference) index pairs scored at one threshold: every pair with IoU >=
    threshold, and (prediction, None) for a prediction with none."""
    pairs: list[tuple[int, int | None]] = []
    for i, p in enumerate(predicted):
        matched = [(i, j) for j, r in enumerate(reference) if dense_iou(p, r) >= threshold]
        pairs.extend(matched or [(i, None)])
    return pairs


def ordered_match(scores: Sequence[Sequence[float]]) -> float:
    """The largest total score of a one-to-one matching of rows to columns in which matched
    pairs keep the same order in both (SODA's dynamic programming; scores are >= 0)."""
    columns = len(scores[0]) if scores else 0
    best = [[0.0] * (columns + 1) for _ in range(len(scores) + 1)]
    for i, row in enumerate(scores):
        for j, score in enumerate(row):
            best[i + 1][j + 1] = max(best[i][j + 1], best[i + 1][j], best[i][j] + score)
    return best[len(scores)][columns]


def soda_f(ious: Sequence[Sequence[float]], scores: Sequence[Sequence[float]]) -> float:
    """SODA_c of one video, a fraction: rows are reference events, columns predictions, each cell
    IoU x sentence score; the F-measure of the ordered matching's total over predictions and
    over references."""
    if not ious or not ious[0]:
        return 0.0
    matched = ordered_match(
        [[iou * score for iou, score in zip(a, b, strict=True)] for a, b in zip(ious, scores, strict=True)]
    )
    precision, recall = matched / len(ious[0]), matched / len(ious)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def dense_caption_metrics(
    predictions: Mapping[str, Sequence[TimedText]],
    references: Mapping[str, Sequence[TimedText]],
    thresholds: Sequence[float] = IOU_THRESHOLDS,
    use_java: bool | None = None,
) -> dict[str, float | None]:
    """SODA_c, CIDEr, METEOR, F1, Precision, Recall (and both at each threshold), in percent:
    `video_scores` averaged over the videos of `references`."""
    per_video = video_scores(predictions, references, thresholds, use_java)
    metrics: dict[str, float | None] = {}
    for name in next(iter(per_video.values()), {}):
        values = [scores[name] for scores in per_video.values()]
        metrics[name] = None if None in values else 100 * math.fsum(values) / len(values)  # type: ignore[arg-type]
    return metrics


def video_scores(
    predictions: Mapping[str, Sequence[TimedText]],
    references: Mapping[str, Sequence[TimedText]],
    thresholds: Sequence[float] = IOU_THRESHOLDS,
    use_java: bool | None = None,
) -> dict[str, dict[str, float | None]]:
    """Each video's scores (fractions; CIDEr up to 10), for every video of `references` (video ->
    its events, in order). `predictions` maps a video to its predicted events in answer order; a
    video missing from it predicted nothing. use_java: None: when Java is installed; without it
    METEOR and SODA_c are None."""
    unknown = [video for video in predictions if video not in references]
    if unknown:
        raise ValueError(f"predictions for {len(unknown)} videos without references ({', '.join(unknown[:3])})")
    empty = [video for video, events in references.items() if not events]
    if empty:
        raise ValueError(f"{len(empty)} videos have no reference events ({', '.join(empty[:3])})")
    videos = list(references)
    java = java_available() if use_java is None else use_java
    texts = {f"p{n}": [e.text for e in predictions.get(v, ())] for n, v in enumerate(videos)}
    texts |= {f"r{n}": [e.text for e in references[v]] for n, v in enumerate(videos)}
    tokens = tokenized({key: value for key, value in texts.items() if value}, java)
    meteor = _meteor() if java else None
    try:
        return {
            v: _video_scores(
                predictions.get(v, ()), references[v], tokens.get(f"p{n}", []), tokens[f"r{n}"], thresholds, meteor
            )
            for n, v in enumerate(videos)
        }
    finally:
        del meteor  # pycocoevalcap's Meteor ends its Java process when collected


def _video_scores(
    predicted: Sequence[TimedText],
    reference: Sequence[TimedText],
    predicted_tokens: list[str],
    reference_tokens: list[str],
    thresholds: Sequence[float],
    meteor: object | None,
) -> dict[str, float | None]:
    precision, recall = localisation(predicted, reference, thresholds)
    mean_p, mean_r = sum(precision) / len(thresholds), sum(recall) / len(thresholds)
    scores: dict[str, float | None] = {
        "SODA_c": None,
        "CIDEr": 0.0,
        "METEOR": None if meteor is None else 0.0,
        "F1": 2 * mean_p * mean_r / (mean_p + mean_r) if mean_p + mean_r > 0 else 0.0,
        "Precision": mean_p,
        "Recall": mean_r,
    }
    for t, p, r in zip(thresholds, precision, recall, strict=True):
        scores[f"Precision@{t}"], scores[f"Recall@{t}"] = p, r
    if not predicted:
        if meteor is not None:
            scores["SODA_c"] = 0.0
        return scores
    cider, meteors = [], []
    for t in thresholds:
        pairs = caption_pairs(predicted, reference, t)
        hypotheses = {str(k): [predicted_tokens[i]] for k, (i, _) in enumerate(pairs)}
        truths = {str(k): [NO_MATCH if j is None else reference_tokens[j]] for k, (_, j) in enumerate(pairs)}
        cider.append(_cider(truths, hypotheses))
        if meteor is not None:
            meteors.append(_finite(meteor.compute_score(truths, hypotheses)[0]))  # type: ignore[attr-defined]
    scores["CIDEr"] = sum(cider) / len(cider)
    if meteor is not None:
        scores["METEOR"] = sum(meteors) / len(meteors)
        ious = [[dense_iou(p, r) for p in predicted] for r in reference]
        keys = [(g, p) for g in range(len(reference)) for p in range(len(predicted))]
        # hypothesis: the reference sentence; reference: the prediction (as SODA and eval_dvc call it)
        flat = meteor.compute_score(  # type: ignore[attr-defined]
            {f"{g},{p}": [predicted_tokens[p]] for g, p in keys},
            {f"{g},{p}": [reference_tokens[g]] for g, p in keys},
        )[1]
        matrix = [[_finite(flat[g * len(predicted) + p]) for p in range(len(predicted))] for g in range(len(reference))]
        scores["SODA_c"] = soda_f(ious, matrix)
    return scores


def _cider(truths: dict[str, list[str]], hypotheses: dict[str, list[str]]) -> float:
    from pycocoevalcap.cider.cider import Cider

    with contextlib.redirect_stdout(io.StringIO()):
        return _finite(Cider().compute_score(truths, hypotheses)[0])


def _meteor() -> object:
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def _finite(value: float) -> float:
    value = float(value)
    return value if math.isfinite(value) else 0.0
