"""Temporal grounding benchmarks (issue 29): Charades-STA, QVHighlights and ActivityNet Captions
files read into one record, and their metrics, each checked against figures worked out by hand
from the benchmark's own definition (moment_detr's standalone_eval for QVHighlights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from malmm_cli.jobs.dataset import DatasetError
from malmm_cli.jobs.grounding import (
    GROUNDING_BENCHMARKS,
    GroundingExample,
    Moment,
    clip_scores,
    detection_ap,
    grounding_metrics,
    highlight_metrics,
    load_grounding,
    moment_retrieval_metrics,
    ranking_ap,
    recall_metrics,
    temporal_iou,
)


def _query(
    windows: list[tuple[float, float]], qid: str = "q", benchmark: str = "charades-sta", **more: object
) -> GroundingExample:
    return GroundingExample(qid, "video", "someone opens a door", tuple(windows), benchmark=benchmark, **more)


# --- Reading -------------------------------------------------------------------------------------


def test_charades_sta_lines(tmp_path: Path) -> None:
    """`VIDEO START END##SENTENCE`, a query per line, named by video and line; no duration."""
    data = tmp_path / "charades_sta_test.txt"
    data.write_text("3MSZA 24.3 30.4##person turn a light on.\n\n3MSZA 0 6.1##person opens the door\n")
    examples = load_grounding(data)
    assert examples == [
        GroundingExample("3MSZA_1", "3MSZA", "person turn a light on.", ((24.3, 30.4),), None, None, "charades-sta"),
        GroundingExample("3MSZA_3", "3MSZA", "person opens the door", ((0.0, 6.1),), None, None, "charades-sta"),
    ]


def test_qvhighlights_rows(tmp_path: Path) -> None:
    """Every window of a query, and each 2-second clip's three saliency scores, 0 for clips the
    annotation does not list (moment_detr's mk_gt_scores)."""
    row = {"qid": 7803, "query": "Man in gray top walks from outside to inside.", "duration": 10,
           "vid": "RoripwjYFp8_360.0_510.0", "relevant_windows": [[2, 6], [8, 10]],
           "relevant_clip_ids": [1, 2, 4], "saliency_scores": [[4, 4, 2], [3, 4, 2], [0, 1, 3]]}  # fmt: skip
    data = tmp_path / "highlight_val_release.jsonl"
    data.write_text(json.dumps(row) + "\n")
    (example,) = load_grounding(data)
    assert example.qid == "7803" and example.video_id == "RoripwjYFp8_360.0_510.0" and example.duration == 10
    assert example.windows == ((2, 6), (8, 10)) and example.benchmark == "qvhighlights"
    assert example.saliency == ((0, 0, 0), (4, 4, 2), (3, 4, 2), (0, 0, 0), (0, 1, 3))  # 10 s: 5 clips


def test_activitynet_captions_sentences(tmp_path: Path) -> None:
    """A query per sentence; as 2D-TAN reads it, a window ending before it starts is left out and
    an end past the video is cut to its duration."""
    sentences = ["A young woman is seen standing.", " She then dances.", "She ends.", "x"]
    timestamps = [[0.83, 19.86], [17.37, 60.81], [70, 90], [5, 3]]
    content = {"v_QOlSCBRmfWY": {"duration": 82.73, "timestamps": timestamps, "sentences": sentences}}
    data = tmp_path / "val_2.json"
    data.write_text(json.dumps(content))
    examples = load_grounding(data)
    assert [(e.qid, e.query, e.windows, e.duration) for e in examples] == [
        ("v_QOlSCBRmfWY_0", "A young woman is seen standing.", ((0.83, 19.86),), 82.73),
        ("v_QOlSCBRmfWY_1", "She then dances.", ((17.37, 60.81),), 82.73),
        ("v_QOlSCBRmfWY_2", "She ends.", ((70.0, 82.73),), 82.73),
    ]
    assert {e.benchmark for e in examples} == {"anet-captions-grounding"}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("c.txt", "3MSZA 24.3 30.4##ok\n3MSZA 24 30 person\n", "c.txt line 2: expected 'VIDEO START END##SENTENCE'"),
        ("c.txt", "3MSZA 24.3 abc##light on\n", "c.txt line 1: a window's end must be a number of seconds, not 'abc'"),
        ("c.txt", "3MSZA 30 24##light on\n", "c.txt line 1: a window must end after it starts"),
        ("c.txt", "\n\n", "c.txt has no queries"),
        ("c.txt", "A 0 1##x\nA 0 1##x\n", None),  # ids differ (line numbers): accepted
        ("q.jsonl", '{"qid": 1}\n{', "q.jsonl line 1: no query, vid, duration"),
        ("q.jsonl", '{"qid": 1, "query": "x", "vid": "v", "duration": 150}\n{', "q.jsonl line 1: no relevant_windows"),
        ("q.jsonl", "[1]\n", "q.jsonl line 1: a row must be a JSON object"),
        ("q.jsonl", "\n\n{nope\n", "q.jsonl line 3: not JSON"),
        (
            "q.jsonl",
            '{"qid": 1, "query": "x", "vid": "v", "duration": 4, "relevant_windows": [[0, 2]], '
            '"relevant_clip_ids": [2], "saliency_scores": [[1, 2, 3]]}',
            "q.jsonl line 1: clip id 2 is not one of the video's 2 2-second clips",
        ),
        (
            "q.jsonl",
            '{"qid": 1, "query": "x", "vid": "v", "duration": 4, "relevant_windows": [[0, 2]], '
            '"relevant_clip_ids": [0], "saliency_scores": [[1, 5, 3]]}',
            "q.jsonl line 1: clip 0's saliency must be three scores 0-4",
        ),
        (
            "q.jsonl",
            '{"qid": 1, "query": "x", "vid": "v", "duration": 9, "relevant_windows": [[0, 2]]}\n'
            '{"qid": 1, "query": "y", "vid": "v", "duration": 9, "relevant_windows": [[0, 2]]}',
            "q.jsonl: two queries have the id '1'",
        ),
        ("a.json", "[]", "a.json: expected ActivityNet Captions' {video_id: {duration, timestamps, sentences}}"),
        (
            "a.json",
            '{"v": {"duration": 9, "timestamps": [[0, 1]], "sentences": []}}',
            "a.json entry 'v': timestamps and sentences must be lists of the same length",
        ),
        ("a.json", '{"v": {"duration": 9, "timestamps": [[0, 1]]}}', "a.json entry 'v': needs duration, timestamps"),
        (
            "a.json",
            '{"v": {"duration": 9, "timestamps": [[0, -1]], "sentences": ["x"]}}',
            "a.json entry 'v': timestamp 0's end must be a number of seconds, not -1",
        ),
        ("a.json", "{nope", "a.json: not JSON"),
        ("data.csv", "video,start\n", "data.csv: give Charades-STA's .txt, QVHighlights' .jsonl or ActivityNet"),
    ],
)
def test_malformed_files_are_refused_with_where_and_why(
    tmp_path: Path, name: str, content: str, message: str | None
) -> None:
    data = tmp_path / name
    data.write_text(content)
    if message is None:
        assert len(load_grounding(data)) == 2
        return
    with pytest.raises(DatasetError) as raised:
        load_grounding(data)
    assert str(raised.value).startswith(message), raised.value


def test_a_missing_file_is_said(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such file"):
        load_grounding(tmp_path / "charades_sta_test.txt")


# --- IoU and recall (Charades-STA, ActivityNet Captions) -----------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "iou"),
    [
        ((0, 10), (0, 10), 1.0),
        ((0, 10), (5, 15), 5 / 15),  # 5 s shared of 15 covered
        ((0, 10), (2, 4), 0.2),  # 2 of 10
        ((2, 4), (0, 10), 0.2),
        ((0, 5), (5, 9), 0.0),  # touching
        ((0, 5), (6, 9), 0.0),  # apart: not negative
        ((3, 3), (3, 3), 0.0),  # empty windows
    ],
)
def test_temporal_iou(a: tuple, b: tuple, iou: float) -> None:
    assert temporal_iou(a, b) == pytest.approx(iou)


def test_perfect_and_disjoint_moments_give_100_and_0() -> None:
    examples = [_query([(10, 20)], "a"), _query([(30, 40)], "b")]
    perfect = recall_metrics(examples, [[Moment(10, 20)], [(30, 40, 0.5)]])
    assert perfect == {f"R{n}@{m}": 100.0 for n in (1, 5) for m in (0.3, 0.5, 0.7)} | {"mIoU": 100.0}
    disjoint = recall_metrics(examples, [[Moment(20, 30)], [Moment(0, 10)]])
    assert set(disjoint.values()) == {0.0}


def test_partial_overlaps_score_their_iou_at_each_threshold() -> None:
    """Four queries on (0, 10): IoU 1/3, 0.5, 0.7 exactly, and none predicted. A threshold is
    reached at equality (IoU >= m)."""
    examples = [_query([(0, 10)], str(n)) for n in range(4)]
    moments = [[Moment(5, 15)], [Moment(0, 5)], [Moment(0, 7)], []]
    metrics = recall_metrics(examples, moments)
    assert metrics["R1@0.3"] == 75.0  # 1/3, 0.5, 0.7 reach 0.3
    assert metrics["R1@0.5"] == 50.0  # 0.5, 0.7
    assert metrics["R1@0.7"] == 25.0  # 0.7
    assert metrics["mIoU"] == pytest.approx(100 * (1 / 3 + 0.5 + 0.7 + 0) / 4)  # 38.33


def test_recall_at_5_counts_the_second_to_fifth_moments_only() -> None:
    """Query a: its 4th moment has IoU 0.8 (R@5 hit, R@1 miss); query b: its 6th moment is perfect,
    beyond the five R@5 looks at. mIoU is the first moment's IoU alone (a: 0; b: 0)."""
    misses = [Moment(30 + n, 31 + n) for n in range(5)]
    examples = [_query([(10, 20)], "a"), _query([(10, 20)], "b")]
    moments = [[*misses[:3], Moment(12, 20), Moment(10, 20)], [*misses, Moment(10, 20)]]
    metrics = recall_metrics(examples, moments)
    assert [metrics[f"R1@{m}"] for m in (0.3, 0.5, 0.7)] == [0.0, 0.0, 0.0]
    assert [metrics[f"R5@{m}"] for m in (0.3, 0.5, 0.7)] == [50.0, 50.0, 50.0]
    assert metrics["mIoU"] == 0.0


# --- QVHighlights: moment retrieval ---------------------------------------------------------------


def test_ap_with_a_known_ranking() -> None:
    """Windows (0,10), (20,30); moments by score: a hit, a miss, a hit. Precision 1, 1/2, 2/3 at
    recall 1/2, 1/2, 1; made non-increasing from the right: 1, 2/3, 2/3. AP = 1/2 * 1 + 1/2 * 2/3
    = 5/6 (COCO's 101 points would give (51 + 50 * 2/3) / 101 = 0.8350). Given out of score order,
    they are ranked by score first."""
    windows = [(0, 10), (20, 30)]
    in_order = [Moment(0, 10, 0.9), Moment(50, 60, 0.8), Moment(20, 30, 0.7)]
    assert detection_ap(windows, in_order, (0.5,)) == [pytest.approx(5 / 6, abs=1e-12)]
    shuffled = [in_order[2], in_order[0], in_order[1]]  # hit, hit, miss as given: AP 1 if not re-ranked
    assert detection_ap(windows, shuffled, (0.5,)) == [pytest.approx(5 / 6, abs=1e-12)]


def test_ap_interpolates_precision() -> None:
    """A miss, then two hits: precision 0, 1/2, 2/3 at recall 0, 1/2, 1. Interpolated, each recall
    step takes the best precision from there on: 1/2 * 2/3 + 1/2 * 2/3 = 2/3 (uninterpolated it
    would be 1/2 * 1/2 + 1/2 * 2/3 = 7/12)."""
    moments = [Moment(50, 60, 0.9), Moment(0, 10, 0.8), Moment(20, 30, 0.7)]
    assert detection_ap([(0, 10), (20, 30)], moments, (0.5,)) == [pytest.approx(2 / 3, abs=1e-12)]


def test_ap_matches_each_window_once_greedily() -> None:
    """A second moment on an already matched window is a false positive: windows A (0,10) and B
    (5,15); the first moment (5,15) takes B; the second (4,15) overlaps B by 10/11 but B is taken,
    so it falls back to A, IoU 6/15 = 0.4: a hit at 0.3 (AP 1), a miss at 0.5 (precision 1, 1/2 at
    recall 1/2: AP 1/2)."""
    moments = [Moment(5, 15, 0.9), Moment(4, 15, 0.8)]
    assert detection_ap([(0, 10), (5, 15)], moments, (0.3, 0.5)) == [pytest.approx(1.0), pytest.approx(0.5)]
    # the same moment twice on one window: the copy is a miss (hit, miss, hit: 5/6 as above)
    twice = [Moment(0, 10, 0.9), Moment(1, 10, 0.8), Moment(20, 30, 0.7)]
    assert detection_ap([(0, 10), (20, 30)], twice, (0.5,)) == [pytest.approx(5 / 6, abs=1e-12)]


def test_ap_scores_the_first_ten_moments_given() -> None:
    """moment_detr keeps a query's first 10 predicted windows, then ranks them by score: an 11th,
    however good and high-scored, is not seen (AP 0, not 1)."""
    moments = [Moment(40 + n, 41 + n, 0.5) for n in range(10)] + [Moment(0, 10, 0.99)]
    assert detection_ap([(0, 10)], moments, (0.5,)) == [0.0]
    assert detection_ap([(0, 10)], moments[-1:] + moments[:9], (0.5,)) == [1.0]


def test_qvhighlights_moment_retrieval_figures() -> None:
    """Query a: one moment of IoU 0.8 with its window: a hit at the 7 thresholds 0.5 ... 0.8 of the
    10 (AP 1 there, 0 above): mAP 70. Query b: IoU 0.7 exactly, 5 of 10: mAP 50. So MR-mAP 60,
    @0.5 100, @0.75 (a only) 50; R1@0.5 and R1@0.7 both 100 (0.7 reaches 0.7). Query c's first
    moment is scored against the window it overlaps most, its second."""
    examples = [_query([(0, 10)], "a", "qvhighlights"), _query([(0, 10)], "b", "qvhighlights")]
    metrics = moment_retrieval_metrics(examples, [[Moment(0, 8)], [Moment(0, 7)]])
    assert metrics == pytest.approx(
        {"MR-R1@0.5": 100.0, "MR-R1@0.7": 100.0, "MR-mAP@0.5": 100.0, "MR-mAP@0.75": 50.0, "MR-mAP": 60.0}
    )
    best_window = moment_retrieval_metrics([_query([(0, 10), (20, 30)], "c", "qvhighlights")], [[Moment(20, 30)]])
    assert best_window["MR-R1@0.7"] == 100.0 and best_window["MR-mAP@0.5"] == 50.0  # one of 2 windows found


# --- QVHighlights: highlights ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relevant", "scores", "ap"),
    [
        ([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1], (1 + 2 / 3) / 2),  # recall 1/2 at precision 1, recall 1 at 2/3
        ([0, 1, 1], [0.9, 0.8, 0.7], 2 / 3),  # interpolated: 1/2 at recall 1/2 becomes 2/3 (else 7/12)
        ([1, 0, 1], [0.5, 0.5, 0.1], 2 / 3),  # tied scores are one threshold: precision 1/2 at recall 1/2
        ([1, 1, 1], [0.1, 0.2, 0.3], 1.0),  # every clip relevant
        ([0, 0, 0], [0.1, 0.2, 0.3], 0.0),  # none
    ],
)
def test_ranking_ap(relevant: list[int], scores: list[float], ap: float) -> None:
    assert ranking_ap(relevant, scores) == pytest.approx(ap, abs=1e-12)


SALIENCY = ((4, 0, 0), (3, 3, 2), (0, 4, 4), (0, 0, 0))  # an 8 s video: 4 clips, 3 annotators


def test_hit_at_1_is_a_very_good_clip_for_any_annotator() -> None:
    """Top clip 2: annotators 2 and 3 gave it 4: a hit (100, not their share 2/3). Top clip 1 (3,
    3, 2: "Good"): a miss at Very Good (4), a hit counting from Fair (2). A top clip past the
    video's clips is a miss."""
    example = _query([(4, 6)], benchmark="qvhighlights", duration=8.0, saliency=SALIENCY)
    assert highlight_metrics([example], [[0.1, 0.2, 0.9, 0.3]])["HIT@1"] == 100.0
    assert highlight_metrics([example], [[0.1, 0.9, 0.5, 0.2]])["HIT@1"] == 0.0
    assert highlight_metrics([example], [[0.1, 0.9, 0.5, 0.2]], min_score=2)["HIT@1"] == 100.0
    assert highlight_metrics([example], [[0.9, 0.9, 0.1, 0.1]])["HIT@1"] == 100.0  # ties: the first clip
    assert highlight_metrics([example], [[0, 0, 0, 0, 1.0]])["HIT@1"] == 0.0


def test_hl_map_averages_each_annotator() -> None:
    """Scores rank the clips 2, 3, 1, 0. Annotator 1's one Very Good clip (0) comes last: AP 1/4;
    annotators 2 and 3's (clip 2) first: AP 1. HL-mAP = (1/4 + 1 + 1) / 3 = 75. A shorter score
    list is padded with 0 (clip 3 then ties clip 0 and 1 at 0)."""
    example = _query([(4, 6)], benchmark="qvhighlights", duration=8.0, saliency=SALIENCY)
    assert highlight_metrics([example], [[0.1, 0.2, 0.9, 0.3]])["HL-mAP"] == pytest.approx(75.0)
    # padded [0, 0, 0.9, 0]: annotator 1's clip 0 ties 3 others at the last threshold: precision 1/4 -> 75 again
    assert highlight_metrics([example], [[0.0, 0.0, 0.9]])["HL-mAP"] == pytest.approx(75.0)


def test_clip_scores_from_a_curve() -> None:
    """7 s: 3 clips of 2 s. Clip 0 holds samples 1 and 3: their mean, 2 (the curve at its middle
    would be 1 + 2 * 0.8/1.3). Clip 1 holds none: the curve at its middle (3 s), between (1.5, 3)
    and (4, 2): 3 - 1.5/2.5 = 2.4. Clip 2: 2."""
    curve = [(4.0, 2.0), (0.2, 1.0), (1.5, 3.0)]
    assert clip_scores(curve, 7.0) == pytest.approx([2.0, 2.4, 2.0])
    assert clip_scores([(0.5, 5.0)], 5.0) == [5.0, 5.0]  # one sample: the same everywhere
    assert clip_scores([], 5.0) == [0.0, 0.0]


# --- The eval interface ---------------------------------------------------------------------------


def test_grounding_metrics_picks_the_benchmarks_set() -> None:
    charades = [_query([(10, 20)], "a"), _query([(0, 5)], "b")]
    metrics = grounding_metrics(charades, {"a": [Moment(10, 20, 0.9)], "b": [(5, 10, 0.2)]})
    assert set(metrics) == {f"R{n}@{m}" for n in (1, 5) for m in (0.3, 0.5, 0.7)} | {"mIoU"}
    assert metrics["R1@0.5"] == 50.0
    assert grounding_metrics(charades, [[Moment(10, 20)], []])["R5@0.3"] == 50.0  # a list in the examples' order

    qvh = [_query([(4, 6)], "7803", "qvhighlights", duration=8.0, saliency=SALIENCY)]
    moments_only = grounding_metrics(qvh, {7803: [Moment(4, 6)]})  # QVHighlights' integer qids
    assert moments_only == pytest.approx({"MR-R1@0.5": 100.0, "MR-R1@0.7": 100.0, "MR-mAP@0.5": 100.0,
                                          "MR-mAP@0.75": 100.0, "MR-mAP": 100.0})  # fmt: skip
    curve = [(1.0, 0.1), (3.0, 0.2), (5.0, 0.9), (7.0, 0.3)]  # a sample per clip: the clip scores above
    both = grounding_metrics(qvh, {"7803": [Moment(4, 6)]}, curves={"7803": curve})
    assert both["HIT@1"] == 100.0 and both["HL-mAP"] == pytest.approx(75.0)


def test_grounding_metrics_refuses_what_it_cannot_score() -> None:
    charades = [_query([(10, 20)], "a"), _query([(0, 5)], "b")]
    with pytest.raises(ValueError, match=r"no predictions for 1 queries \(b"):
        grounding_metrics(charades, {"a": []})
    with pytest.raises(ValueError, match="1 predictions for 2 queries"):
        grounding_metrics(charades, [[]])
    with pytest.raises(ValueError, match="several benchmarks"):
        grounding_metrics([charades[0], _query([(0, 1)], "c", "qvhighlights")], [[], []])


def test_the_benchmarks_and_their_reference_figures() -> None:
    """Issue 29's anchors: TimeChat-7B zero-shot, Charades-STA R@1 IoU 0.5/0.7 32.2/13.4,
    QVHighlights mAP/HIT@1 14.5/23.9 (highlight detection, Very Good)."""
    assert list(GROUNDING_BENCHMARKS) == ["charades-sta", "qvhighlights", "anet-captions-grounding"]
    assert GROUNDING_BENCHMARKS["charades-sta"].reference == {"R1@0.5": 32.2, "R1@0.7": 13.4}
    assert GROUNDING_BENCHMARKS["qvhighlights"].reference == {"HL-mAP": 14.5, "HIT@1": 23.9}
    for benchmark in GROUNDING_BENCHMARKS.values():  # every figure named is one grounding_metrics gives
        assert set(benchmark.reference) <= set(benchmark.metrics)
