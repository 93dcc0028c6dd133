"""What `malmm train --task find` learns from: labelled moments (a query and where it happens in a
video), and the windows of the video they label. No torch.

A moment comes from a row `{"video", "query", "start", "end"}` of a JSONL or CSV file (video
relative to the file's folder; an optional `id`), or from a grounding benchmark's file as `malmm
eval` reads it (jobs/grounding.py: Charades-STA .txt, QVHighlights .jsonl, ActivityNet Captions
.json; their videos found by name in --videos, else the file's folder). The video is cut into
find's windows (`window` seconds from its start, the last one shorter); a window is a positive
when at least half of it lies in a labelled span (or, for a span shorter than that, when it is
the window the span overlaps most), a negative when it does not meet any span, and neither when
it only grazes one (it holds some of the query and some of the rest: no clear target).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from malmm_cli.jobs.dataset import DatasetError, Example, find_video, jsonl_rows, seconds_value
from malmm_cli.jobs.grounding import FORMATS, load_grounding

MOMENT_FIELDS = ("video", "query", "start", "end")
# A row of QVHighlights (also .jsonl) has these instead of a row's video and start/end.
_QVHIGHLIGHTS_FIELDS = ("vid", "relevant_windows")


@dataclass(frozen=True)
class LabelledMoment(Example):
    """A query and the spans of the video where it happens; `start`/`end` are the first span (the
    clip of an Example is the whole video: windows are cut from it)."""

    query: str = ""
    spans: tuple[tuple[float, float], ...] = ()

    def target(self, task: str) -> str:
        return self.query


def read_moments(path: Path, videos: Path | None = None) -> list[LabelledMoment]:
    """Every labelled moment of a file: rows (JSONL, CSV) or a grounding benchmark's file. The
    errors name the file, the line or entry, and what is wrong."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as file:  # -sig: Excel starts with a byte-order mark
            rows = [(f"line {n}", row) for n, row in enumerate(csv.DictReader(file), start=2)]
        return _from_rows(path, rows)
    if suffix == ".jsonl":
        rows = jsonl_rows(path)
        if rows and all(field in rows[0][1] for field in _QVHIGHLIGHTS_FIELDS):
            return _from_grounding(path, videos)
        return _from_rows(path, rows)
    if suffix in FORMATS:
        return _from_grounding(path, videos)
    raise DatasetError(
        f"{path.name}: give rows of {', '.join(MOMENT_FIELDS)} (.jsonl or .csv), or a grounding benchmark's file "
        "(Charades-STA .txt, QVHighlights .jsonl, ActivityNet Captions .json)"
    )


def _from_rows(path: Path, rows: list[tuple[str, dict]]) -> list[LabelledMoment]:
    if not rows:
        raise DatasetError(f"{path.name} has no moments")
    return [_moment(path, where, row) for where, row in rows]


def _moment(path: Path, where: str, row: dict) -> LabelledMoment:
    where = f"{path.name} {where}"
    if None in row:  # csv.DictReader's key for fields past the header's
        raise DatasetError(f"{where}: more fields than the header names")
    missing = [field for field in MOMENT_FIELDS if row.get(field) in (None, "") or str(row[field]).strip() == ""]
    if missing:
        raise DatasetError(
            f'{where}: no {", ".join(missing)} (a find row is {{"video", "query", "start", "end"}}: the query '
            "and the seconds where it happens)"
        )
    start, end = seconds_value(row["start"], "start", where), seconds_value(row["end"], "end", where)
    if end <= start:
        raise DatasetError(f"{where}: end ({end:g}) must be after start ({start:g})")
    query = str(row["query"]).strip()
    id_ = str(row["id"]).strip() if row.get("id") not in (None, "") else where.removeprefix(f"{path.name} ")
    return LabelledMoment(id=id_, video=path.parent / str(row["video"]).strip(), start=start, end=end,
                          query=query, spans=((start, end),))  # fmt: skip


def _from_grounding(path: Path, videos: Path | None) -> list[LabelledMoment]:
    folder = videos or path.parent
    found: dict[str, Path] = {}
    moments = []
    for example in load_grounding(path):
        if example.video_id not in found:
            found[example.video_id] = find_video(folder, example.video_id)
        first = example.windows[0]
        moments.append(LabelledMoment(id=example.qid, video=found[example.video_id], start=first[0], end=first[1],
                                      duration=example.duration, query=example.query,
                                      spans=example.windows))  # fmt: skip
    return moments


# --- windows ---------------------------------------------------------------------------------------


def windows(duration: float, window: float) -> list[tuple[float, float]]:
    """find's windows of a video: `window` seconds each from its start, the last one shorter."""
    count = max(1, -int(-round(duration / window, 6) // 1))
    return [(i * window, min((i + 1) * window, duration)) for i in range(count)]


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def label_windows(
    cut: list[tuple[float, float]], spans: tuple[tuple[float, float], ...]
) -> tuple[list[int], list[int]]:
    """(positive windows, negative windows) by index (see the module's docstring)."""
    positive: set[int] = set()
    for span in spans:
        overlaps = [_overlap(w, span) for w in cut]
        if max(overlaps, default=0.0) <= 0:
            continue  # past the video's end
        halves = {i for i, (w, o) in enumerate(zip(cut, overlaps, strict=True)) if o >= (w[1] - w[0]) / 2 - 1e-9}
        positive |= halves or {overlaps.index(max(overlaps))}
    negative = [i for i, w in enumerate(cut) if all(_overlap(w, span) <= 0 for span in spans)]
    return sorted(positive), negative
