"""Labelled videos for training and evaluation: one `Example` per clip, from JSONL, CSV or
MA-LMM's own annotation files.

JSONL and CSV rows name a `video` (a path, relative to the file's folder), optionally a clip of
it (`start`, `end` in seconds), and the target: `caption`, or `question` and `answer`, or
`label`. MA-LMM's annotation JSON (data/<dataset>/annotation in its repository) is one dict per
split keyed by id, each value a dict with `video` (or the key itself is the video) and
`caption`, `question`/`answer`, `class_name` (Breakfast), `target` (COIN) or, for LVU, the
field named by `label_field` (its `duration` is kept too); YouCook2's `start_time`/`end_time`
make clips, named by its `segment`. A file that holds several splits (COIN.json: each entry's
`subset`) is read one split at a time, as MA-LMM's loaders read it. Its videos are looked up in
`videos`, by name or ActivityNet's `v_` + name, with any extension. Without a task, the task
follows from the fields of the first example.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.presets import CAPTION, CLASSIFICATION, QUESTION

TASK_TARGETS = {"caption": ("caption",), "ask": ("question", "answer"), "classify": ("label",)}
# The MA-LMM preset each task of a data file is read with (instruction, frames, memory bank length),
# by training and by evaluation alike.
TASK_PRESETS = {"caption": CAPTION, "ask": QUESTION, "classify": CLASSIFICATION}
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv")


class DatasetError(Exception):
    """A data file that cannot be used, with the row and what is wrong with it."""


@dataclass(frozen=True)
class Example:
    """One labelled clip."""

    id: str
    video: Path
    start: float | None = None
    end: float | None = None
    caption: str | None = None
    question: str | None = None
    answer: str | None = None
    label: str | None = None
    duration: float | None = None  # of the whole video, where an annotation file gives it (LVU)
    segment: str | None = None  # the annotation's name of the clip (YouCook2: `xHr8X2Wpmno_0047_0060`)

    def target(self, task: str) -> str:
        """The text the model learns to produce for `task`."""
        return {"caption": self.caption, "ask": self.answer, "classify": self.label}[task] or ""


def read_examples(
    path: Path,
    task: str | None,
    videos: Path | None = None,
    label_field: str | None = None,
    split: str | None = None,
    default_split: str | None = None,
) -> list[Example]:
    """Every example of a JSONL, CSV or MA-LMM annotation JSON file, checked for `task`'s fields
    (None: the task the first example's fields make, see `task_of`).

    videos: where MA-LMM annotations' videos are (default: the file's folder); JSONL/CSV paths
    are relative to the file's folder. label_field: the annotation field holding classify labels
    (default `class_name`, else `target`; LVU names its tasks: director, genre, ...).
    split: the `subset` to read of an annotation file that holds several (COIN.json), as the
    user asked (refused for a file of one split); default_split: the one read when none is asked
    (training reads `train`, evaluation `val`, as MA-LMM does). Reading every split at once
    would evaluate on the training set, so a file of several splits needs one of the two.
    """
    if task is not None and task not in TASK_TARGETS:
        raise DatasetError(f"unknown task {task!r}: one of {', '.join(TASK_TARGETS)}")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            rows = jsonl_rows(path)
        elif suffix == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as file:  # -sig: Excel starts with a byte-order mark
                rows = [(f"line {n}", row) for n, row in enumerate(csv.DictReader(file), start=2)]
        elif suffix == ".json":
            return _annotation_examples(path, task, videos or path.parent, label_field, split, default_split)
        else:
            raise DatasetError(f"{path.name}: give a .jsonl, .csv or MA-LMM annotation .json file")
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path.name} is not UTF-8 text: {error}") from error
    if not rows:
        raise DatasetError(f"{path.name} has no examples")
    if split is not None:
        raise DatasetError(f"--split {split}: {path.name} holds one split (only MA-LMM annotation files have several)")
    try:  # errors name the file: with --val there are two
        task = task or task_of(rows[0][1], rows[0][0])
        return [_example(where, row, path.parent, task) for where, row in rows]
    except DatasetError as error:
        raise DatasetError(f"{path.name} {error}") from None


def task_of(row: dict, where: str) -> str:
    """The task a row's fields make: caption, ask (question and answer) or classify (label)."""
    for task, fields in TASK_TARGETS.items():
        if all(_text(row, field) is not None for field in fields):
            return task
    raise DatasetError(f"{where}: no caption, question and answer, or label: which task is this?")


def json_file(path: Path) -> Any:
    """The content of a JSON file; DatasetError, naming the file, for text that is not UTF-8 or
    not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path.name} is not UTF-8 text: {error}") from error
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path.name}: not JSON ({error.msg}, line {error.lineno})") from error


def jsonl_rows(path: Path) -> list[tuple[str, dict]]:
    """The JSON objects of a JSON-lines file with where each is ("line N"); DatasetError for text
    that is not UTF-8, a line that is not JSON, or one that is not an object."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise DatasetError(f"{path.name} is not UTF-8 text: {error}") from error
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetError(f"{path.name} line {number}: not JSON ({error.msg})") from error
        if not isinstance(row, dict):
            raise DatasetError(f"{path.name} line {number}: a row must be a JSON object")
        rows.append((f"line {number}", row))
    return rows


def _text(row: dict, field: str) -> str | None:
    value = row.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return str(value).strip()


def _seconds(row: dict, field: str, where: str) -> float | None:
    value = row.get(field)
    if value is None or value == "":
        return None
    return seconds_value(value, field, where)


def seconds_value(value: object, field: str, where: str) -> float:
    """A time read from a data file: a finite number of seconds, 0 or more (a JSON `true` is not
    one); the error names where it is and which field."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: {field} must be a number of seconds, not {value!r}") from None
    if isinstance(value, bool) or not (math.isfinite(seconds) and seconds >= 0):
        raise DatasetError(f"{where}: {field} must be a number of seconds, not {value!r}")
    return seconds


def _example(where: str, row: dict, folder: Path, task: str, id_: str | None = None) -> Example:
    if None in row:  # csv.DictReader's key for fields past the header's
        raise DatasetError(f"{where}: more fields than the header names ({', '.join(map(str, row[None]))} left over)")
    video = _text(row, "video")
    if video is None:
        raise DatasetError(f"{where}: no video (its fields: {', '.join(k for k in row if k is not None) or 'none'})")
    example = Example(
        id=id_ or _text(row, "id") or where,
        video=folder / video,
        start=_seconds(row, "start", where),
        end=_seconds(row, "end", where),
        caption=_text(row, "caption"),
        question=_text(row, "question"),
        answer=_text(row, "answer"),
        label=_text(row, "label"),
    )
    if example.start is not None and example.end is not None and example.end <= example.start:
        raise DatasetError(f"{where}: end ({example.end:g}) must be after start ({example.start:g})")
    missing = [field for field in TASK_TARGETS[task] if getattr(example, field) is None]
    if missing:
        needed = ", ".join(TASK_TARGETS[task])
        raise DatasetError(f"{where}: no {' or '.join(missing)} (the {task} task needs {needed})")
    return example


def _annotation_examples(
    path: Path,
    task: str | None,
    videos: Path,
    label_field: str | None,
    split: str | None = None,
    default_split: str | None = None,
) -> list[Example]:
    """MA-LMM's annotation JSON: {id: {...}} (or a list of dicts); of a file with `subset`s, the
    entries of one split (see `read_examples`)."""
    content = json_file(path)
    items = content.items() if isinstance(content, dict) else enumerate(content if isinstance(content, list) else [])
    items = _one_split(path, list(items), split, default_split)
    examples, found = [], {}
    for key, entry in items:
        name = str(entry.get("video") or key)
        if name not in found:
            found[name] = find_video(videos, name)
        field = label_field or next((f for f in ("class_name", "target") if f in entry), "class_name")
        row = {
            "video": str(found[name]),
            "start": entry.get("start_time"),
            "end": entry.get("end_time"),
            "caption": entry.get("caption"),
            "question": entry.get("question"),
            "answer": entry.get("answer"),
            "label": entry.get(field),
        }
        where = f"{path.name} entry {key!r}"
        if label_field is not None and row["label"] is None and task in (None, "classify"):
            continue  # LVU: each video carries some of its tasks only (MA-LMM skips the others too)
        task = task or task_of(row, where)
        if task == "classify" and row["label"] is None and label_field is None:
            fields = ", ".join(sorted(entry))
            raise DatasetError(f"{where}: no class_name or target; name the label field ({fields})")
        example = _example(where, row, Path(), task, str(entry.get("question_id", key)))
        duration = _seconds(entry, "duration", where)
        segment = _text(entry, "segment")
        if duration is not None or segment is not None:
            example = dataclasses.replace(example, duration=duration, segment=segment)
        examples.append(example)
    if not examples:
        because = f" with a {label_field!r} field" if label_field is not None else ""
        raise DatasetError(f"{path.name} has no examples{because}")
    return examples


def _one_split(
    path: Path, items: list[tuple[object, object]], split: str | None, default_split: str | None
) -> list[tuple[object, dict]]:
    """The entries of the split asked for (else `default_split`) of a file whose entries name
    several `subset`s (COIN.json); every entry of a file of one split (LVU's test.json says
    `"subset": "test"` throughout; asking it for another is refused)."""
    for key, entry in items:
        if not isinstance(entry, dict):
            raise DatasetError(f"{path.name}: entry {key!r} is not an object: is this an MA-LMM annotation file?")
    subsets = sorted({str(entry["subset"]) for _, entry in items if entry.get("subset") is not None})
    if not subsets:
        if split is not None:
            raise DatasetError(f"--split {split}: {path.name} holds one split (its entries have no subset)")
        return items
    if len(subsets) == 1 and split in (None, subsets[0]):
        return items
    chosen = split or default_split
    if chosen is None:
        raise DatasetError(f"{path.name} holds several splits ({', '.join(subsets)}): choose one with --split")
    if chosen not in subsets:
        raise DatasetError(f"{path.name} has no {chosen!r} split: its subsets are {', '.join(subsets)} (--split)")
    return [(key, entry) for key, entry in items if str(entry.get("subset")) == chosen]


def find_video(folder: Path, name: str) -> Path:
    """folder/name if it exists, else folder/name.<a video extension>, else the same with
    ActivityNet's `v_` prefix (its annotations say `1QIUV7WYKXg`, its files are
    `v_1QIUV7WYKXg.mp4`); else folder/name, which is then reported as missing."""
    for stem in (name, f"v_{name}"):
        for extension in ("", *VIDEO_EXTENSIONS):
            candidate = folder / f"{stem}{extension}"
            if candidate.is_file():
                return candidate
    return folder / name
