"""Dense video captioning metrics (jobs/dense_metrics.py) on hand-made predictions whose figures
can be worked out by hand. The same predictions were run through TimeChat's own evaluation
(metrics/dvc/eval_dvc.py, with its CIDEr and METEOR wrappers over pycocoevalcap 1.2's jars):

    video     CIDEr     METEOR    Precision  Recall    F1        SODA_c    (percent, both sides equal
    perfect   1000.0    100.0     100.0      100.0     100.0     100.0      to 4 decimals)
    none      0.0       0.0       0.0        0.0       0.0       0.0
    shifted   500.0     62.0069   50.0       50.0      50.0      64.7619
    wrong     14.4868   2.3155    100.0      100.0     100.0     2.3129
    mixed     39.7091   13.406    37.5       41.6667   39.4737   15.7968
    tie       439.0224  34.7722   62.5       62.5      62.5      44.8285

(`mixed` and `tie` are in the cross-check only; `tie` has a pair at IoU exactly 0.5.) fujiso/SODA's
soda.py gives the same SODA_c for each video that predicted something. One case
differs on purpose: eleven perfect predictions score SODA_c 100 here and 40.5 there, whose METEOR
wrapper sorts the pairs' keys as strings ("10" before "2").
"""

from __future__ import annotations

import pytest

from malmm_cli.jobs.dense_metrics import (
    caption_pairs,
    dense_caption_metrics,
    dense_iou,
    localisation,
    ordered_match,
    soda_f,
    video_scores,
)
from malmm_cli.jobs.scoring import java_available
from malmm_cli.reading.results import TimedText
from malmm_cli.reading.timed_text import parse_timed

STEPS = [
    TimedText(0, 10, "chop the onions finely"),
    TimedText(10, 25, "fry the onions in hot oil"),
    TimedText(25, 40, "add the tomatoes and stir"),
]
# IoUs with STEPS: 8/12, 12/15, 10/21
SHIFTED = [
    TimedText(2, 12, "chop the onions finely"),
    TimedText(13, 25, "fry the onions in hot oil"),
    TimedText(30, 46, "add the tomatoes and stir"),
]
WRONG = [
    TimedText(0, 10, "a man plays the guitar"),
    TimedText(10, 25, "a dog runs in a park"),
    TimedText(25, 40, "people dance on a stage"),
]
REFERENCES = {"perfect": STEPS, "none": STEPS, "shifted": STEPS, "wrong": STEPS}
PREDICTIONS = {"perfect": STEPS, "shifted": SHIFTED, "wrong": WRONG}  # "none" predicted nothing


def test_iou_follows_densevid_eval_at_a_tie() -> None:
    assert dense_iou(TimedText(0, 10, ""), TimedText(0, 5, "")) < 0.5  # 5/10, but 1e-8 in the union
    assert dense_iou(TimedText(2, 12, ""), TimedText(0, 10, "")) == pytest.approx(8 / 12)
    assert dense_iou(TimedText(0, 5, ""), TimedText(6, 9, "")) == 0.0


def test_localisation_counts_events_over_each_threshold() -> None:
    precision, recall = localisation(SHIFTED, STEPS)
    assert precision == pytest.approx([1, 2 / 3, 1 / 3, 0])  # IoUs 0.67, 0.8, 0.48
    assert recall == pytest.approx([1, 2 / 3, 1 / 3, 0])
    # two predictions on the same reference event: both precise, one event recalled of three
    precision, recall = localisation([STEPS[0], STEPS[0]], STEPS, [0.5])
    assert (precision, recall) == ([1.0], [pytest.approx(1 / 3)])
    assert localisation([], STEPS) == ([0.0] * 4, [0.0] * 4)


def test_caption_pairs_pair_unmatched_predictions_with_nothing() -> None:
    assert caption_pairs(SHIFTED, STEPS, 0.5) == [(0, 0), (1, 1), (2, None)]
    wide = TimedText(0, 25, "")  # IoU 0.4 with the first step, 0.6 with the second: both pairs count
    assert caption_pairs([wide], STEPS, 0.3) == [(0, 0), (0, 1)]


def test_ordered_match_keeps_temporal_order() -> None:
    assert ordered_match([[0.0, 1.0], [1.0, 0.0]]) == 1.0  # crossing pairs: only one of them
    assert ordered_match([[1.0, 0.0], [0.0, 1.0]]) == 2.0
    assert ordered_match([[0.5, 0.9, 0.0]]) == 0.9  # one reference takes one prediction
    assert ordered_match([[1.0, 0.0], [1.0, 0.0]]) == 1.0  # and one prediction one reference
    assert ordered_match([]) == 0.0


def test_soda_f_is_the_f_measure_of_the_matched_score() -> None:
    # 2 references, 4 predictions, matched total 1.5: precision 1.5/4, recall 1.5/2
    ious = [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
    scores = [[1.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0]]
    p, r = 1.5 / 4, 1.5 / 2
    assert soda_f(ious, scores) == pytest.approx(2 * p * r / (p + r))
    assert soda_f([[]], [[]]) == 0.0


def test_without_java_cider_and_localisation_still_come_and_meteor_soda_do_not() -> None:
    scores = video_scores(PREDICTIONS, REFERENCES, use_java=False)
    assert scores["perfect"]["CIDEr"] == pytest.approx(10.0)  # every n-gram of a step is its own
    assert scores["wrong"]["CIDEr"] == pytest.approx(0.144868, abs=1e-6)  # only "the" in common
    assert scores["none"]["CIDEr"] == 0.0 and scores["none"]["F1"] == 0.0
    # matched at 0.3 (3 of 3), 0.5 (2 of 3) and 0.7 (1 of 3); the others pair with nothing
    assert scores["shifted"]["CIDEr"] == pytest.approx((10 + 20 / 3 + 10 / 3 + 0) / 4)
    assert scores["shifted"]["F1"] == pytest.approx(0.5)
    assert all(s["METEOR"] is None and s["SODA_c"] is None for s in scores.values())
    means = dense_caption_metrics(PREDICTIONS, REFERENCES, use_java=False)
    assert means["CIDEr"] == pytest.approx(100 * (10 + 5 + 0 + 0.144868) / 4)
    assert means["METEOR"] is None and means["SODA_c"] is None


def test_f1_is_the_mean_of_each_videos_f1() -> None:
    # precision 1/2 and recall 1/3 in one video, perfect in the other: as eval_dvc prints it
    half = {"a": [STEPS[0], TimedText(50, 60, "wash up")], "b": STEPS}
    means = dense_caption_metrics(half, {"a": STEPS, "b": STEPS}, use_java=False)
    f1_a = 2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3)
    assert means["F1"] == pytest.approx(100 * (f1_a + 1) / 2)  # not F1 of the means (0.75, 0.667)
    assert means["Precision"] == pytest.approx(75.0) and means["Recall"] == pytest.approx(100 * (1 / 3 + 1) / 2)


def test_parsed_answers_score_like_events() -> None:
    answer = parse_timed("0.0 - 10.0 seconds, chop the onions finely. 10.0 - 25.0 seconds, fry the onions in hot oil.")
    scores = video_scores({"v": answer.spans}, {"v": STEPS}, use_java=False)["v"]
    assert scores["Precision"] == 1.0 and scores["Recall"] == pytest.approx(2 / 3)


def test_refuses_videos_it_cannot_score() -> None:
    with pytest.raises(ValueError, match="without references"):
        video_scores({"other": STEPS}, REFERENCES, use_java=False)
    with pytest.raises(ValueError, match="no reference events"):
        video_scores({}, {"empty": []}, use_java=False)


@pytest.mark.skipif(not java_available(), reason="the PTB tokenizer and METEOR need Java (.ci/run installs it)")
def test_meteor_and_soda_c_with_java() -> None:
    scores = video_scores(PREDICTIONS, REFERENCES, use_java=True)
    assert scores["perfect"]["METEOR"] == pytest.approx(1.0) and scores["perfect"]["SODA_c"] == pytest.approx(1.0)
    assert scores["none"]["METEOR"] == 0.0 and scores["none"]["SODA_c"] == 0.0
    # same sentences (METEOR 1): SODA_c is the F-measure of the summed IoUs over 3 and 3
    assert scores["shifted"]["SODA_c"] == pytest.approx((8 / 12 + 12 / 15 + 10 / 21) / 3)
    assert scores["shifted"]["METEOR"] == pytest.approx(0.620069, abs=1e-6)  # TimeChat's code: 62.0069
    assert scores["wrong"]["SODA_c"] == pytest.approx(0.023129, abs=1e-6)  # perfect times, wrong sentences
    assert scores["wrong"]["F1"] == 1.0
