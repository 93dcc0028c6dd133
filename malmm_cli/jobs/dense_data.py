"""Dense captioning data (issue 30): videos with their events, each a span and a sentence, for
`malmm train --task dense` and for scoring dense captions. No torch.

Two kinds of file:

- rows (`.jsonl`): `{"video", "events": [{"start", "end", "text"}, ...]}`, video relative to the
  file's folder, an optional `id`, and an optional clip to read (`start`/`end` in seconds). With
  a clip, an event's times become seconds from the clip's start (the clock the memory's frames
  are told, and that answers are parsed on); an event is cut to the clip when at least half of it
  lies inside, and dropped otherwise (its sentence would mostly describe what the clip does not
  show); a row whose clip keeps no event is refused.
- annotation files (`.json`, `read_dense_annotations`): YouCook2's
  `youcookii_annotations_trainval.json` (`{"database": {id: {"duration", "subset",
  "annotations": [{"segment": [s, e], "sentence"}]}}}`, a file of several splits: one is read)
  and ActivityNet Captions' `train.json`/`val_1.json` (`{id: {"duration", "timestamps",
  "sentences"}}`). A whole video per entry, its events from the video's start; an end past the
  video's duration is cut to it and an event left empty dropped, as ActivityNet's own loaders do
  (a video left with no event is skipped). Videos are found by name in `videos` (else the file's
  folder; `find_video`), YouCook2's also in its own `SUBSET/RECIPE_TYPE/` folders.

Errors name the file, the line or entry, and what is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from malmm_cli.jobs.dataset import DatasetError, Example, find_video, json_file, jsonl_rows, seconds_value
from malmm_cli.reading.results import TimedText
from malmm_cli.reading.timed_text import dense_text

# The names MA-LMM's and malmm's training use for splits, as YouCook2 names its subsets.
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "testing"}
KEPT_SHARE = 0.5  # the share of an event a clip must hold for the event to be kept (cut to the clip)


@dataclass(frozen=True)
class DenseExample(Example):
    """A clip (or a whole video) and its events, in seconds from the clip's start, in time order."""

    events: tuple[TimedText, ...] = ()

    def target(self, task: str) -> str:
        return dense_text((event.start, event.end, event.text) for event in self.events)


def read_dense(
    path: Path, videos: Path | None = None, split: str | None = None, default_split: str | None = None
) -> list[DenseExample]:
    """Every example of a dense captioning file: rows (`.jsonl`) or an annotation file (`.json`,
    see `read_dense_annotations`). split: asked for (refused for a file of one split);
    default_split: read when none is asked of a file of several."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".json":
        return read_dense_annotations(path, videos, split, default_split)
    if suffix != ".jsonl":
        raise DatasetError(
            f'{path.name}: give rows of {{"video", "events": [{{"start", "end", "text"}}]}} (.jsonl), or YouCook2\'s '
            "or ActivityNet Captions' annotation .json"
        )
    if split is not None:
        raise DatasetError(f"--split {split}: {path.name} holds one split (YouCook2's annotation file has several)")
    rows = jsonl_rows(path)
    if not rows:
        raise DatasetError(f"{path.name} has no examples")
    return [_row(path, f"{path.name} {where}", where, row) for where, row in rows]


def _row(path: Path, where: str, line: str, row: dict) -> DenseExample:
    video = row.get("video")
    if not isinstance(video, str) or not video.strip():
        raise DatasetError(f'{where}: no video (a dense row is {{"video", "events": [{{"start", "end", "text"}}]}})')
    start = seconds_value(row.get("start"), "start", where) if row.get("start") not in (None, "") else None
    end = seconds_value(row.get("end"), "end", where) if row.get("end") not in (None, "") else None
    if start is not None and end is not None and end <= start:
        raise DatasetError(f"{where}: end ({end:g}) must be after start ({start:g})")
    events = row.get("events")
    if not isinstance(events, list) or not events:
        raise DatasetError(f'{where}: no events (a list of {{"start", "end", "text"}}, seconds of the video)')
    read = [_event(event, f"{where}: event {n}", "text") for n, event in enumerate(events, start=1)]
    kept = clip_events(read, start, end)
    if not kept:
        clip = f"{start or 0:g}-{'end' if end is None else f'{end:g}'} s"
        raise DatasetError(f"{where}: no event lies in the clip {clip} (an event is kept if half of it is in it)")
    id_ = str(row["id"]).strip() if row.get("id") not in (None, "") else line
    return DenseExample(id=id_, video=path.parent / video.strip(), start=start, end=end, events=kept)


def clip_events(events: list[TimedText], start: float | None, end: float | None) -> tuple[TimedText, ...]:
    """The events on a clip's clock: seconds from its start, cut to it when at least half of the
    event lies inside, dropped otherwise (see the module's docstring); in time order."""
    offset, stop = start or 0.0, math.inf if end is None else end
    kept = []
    for event in events:
        inside = (max(event.start, offset), min(event.end, stop))
        if inside[1] - inside[0] >= KEPT_SHARE * (event.end - event.start) and inside[1] > inside[0]:
            kept.append(TimedText(inside[0] - offset, inside[1] - offset, event.text))
    return tuple(sorted(kept, key=lambda event: (event.start, event.end)))


def read_dense_annotations(
    path: Path, videos: Path | None = None, split: str | None = None, default_split: str | None = None
) -> list[DenseExample]:
    """The videos of a YouCook2 or ActivityNet Captions dense annotation file, each with its events
    (seconds from the video's start), told apart by their shape. videos: where the videos are
    (default: the file's folder). split: YouCook2's subset to read (`training`, `validation`; or
    train, val), which its file of several needs unless default_split says one; ActivityNet
    Captions' files hold one split each and refuse it."""
    content = json_file(path)
    folder = videos or path.parent
    if isinstance(content, dict) and isinstance(content.get("database"), dict):
        examples = _youcook2(path.name, content["database"], folder, split, default_split)
    elif isinstance(content, dict) and content and all(isinstance(entry, dict) for entry in content.values()):
        if split is not None:
            raise DatasetError(f"--split {split}: {path.name} holds one split (ActivityNet Captions: one file a split)")
        examples = _activitynet(path.name, content, folder)
    else:
        raise DatasetError(
            f"{path.name}: expected YouCook2's {{\"database\": {{id: {{...}}}}}} or ActivityNet Captions' "
            "{id: {duration, timestamps, sentences}}"
        )
    if not examples:
        raise DatasetError(f"{path.name} has no video with events")
    return examples


def _youcook2(name: str, database: dict, folder: Path, split: str | None, default: str | None) -> list[DenseExample]:
    for key, entry in database.items():
        if not isinstance(entry, dict):
            raise DatasetError(f"{name} entry {key!r} is not an object: is this YouCook2's annotation file?")
    subsets = sorted({str(entry["subset"]) for entry in database.values() if entry.get("subset") is not None})
    asked = split or (default if len(subsets) > 1 else None)
    if asked is None and len(subsets) > 1:
        raise DatasetError(f"{name} holds several splits ({', '.join(subsets)}): choose one with --split")
    chosen = None if asked is None else asked if asked in subsets else SPLIT_NAMES.get(asked, asked)
    if chosen is not None and chosen not in subsets:
        raise DatasetError(f"{name} has no {asked!r} split: its subsets are {', '.join(subsets) or 'none'} (--split)")
    examples = []
    for key, entry in database.items():
        if chosen is not None and str(entry.get("subset")) != chosen:
            continue
        where = f"{name} entry {key!r}"
        annotations = entry.get("annotations")
        if not isinstance(annotations, list):
            raise DatasetError(f"{where}: no annotations (YouCook2's test split has none: train or score another)")
        duration = seconds_value(entry.get("duration"), "duration", where) if "duration" in entry else None
        events = []
        for n, annotation in enumerate(annotations, start=1):
            if not isinstance(annotation, dict):
                raise DatasetError(f'{where}: annotation {n} must be {{"segment": [start, end], "sentence"}}')
            segment = _pair(annotation.get("segment"), f"{where}: annotation {n}")
            events.append(_event({"start": segment[0], "end": segment[1], "sentence": annotation.get("sentence")},
                                 f"{where}: annotation {n}", "sentence", ordered=False))  # fmt: skip
        video = find_video(folder, str(key))
        if not video.is_file() and entry.get("subset") and entry.get("recipe_type"):  # YouCook2's own layout
            video = find_video(folder / str(entry["subset"]) / str(entry["recipe_type"]), str(key))
        example = _whole_video(str(key), video, events, duration)
        if example is not None:
            examples.append(example)
    return examples


def _activitynet(name: str, content: dict, folder: Path) -> list[DenseExample]:
    examples = []
    for key, entry in content.items():
        where = f"{name} entry {key!r}"
        if not all(field in entry for field in ("duration", "timestamps", "sentences")):
            raise DatasetError(f"{where}: needs duration, timestamps and sentences (ActivityNet Captions)")
        stamps, sentences = entry["timestamps"], entry["sentences"]
        if not isinstance(stamps, list) or not isinstance(sentences, list) or len(stamps) != len(sentences):
            raise DatasetError(f"{where}: timestamps and sentences must be lists of the same length")
        duration = seconds_value(entry["duration"], "duration", where)
        events = []
        for n, (stamp, sentence) in enumerate(zip(stamps, sentences, strict=True), start=1):
            start, end = _pair(stamp, f"{where}: timestamp {n}")
            events.append(_event({"start": start, "end": end, "text": sentence}, f"{where}: event {n}", "text",
                                 ordered=False))  # fmt: skip
        example = _whole_video(str(key), find_video(folder, str(key)), events, duration)
        if example is not None:
            examples.append(example)
    return examples


def _whole_video(key: str, video: Path, events: list[TimedText], duration: float | None) -> DenseExample | None:
    """A whole video's example: its events cut to its duration, those left empty dropped; None
    when none is left."""
    kept = [TimedText(e.start, min(e.end, duration), e.text) for e in events] if duration is not None else events
    kept = sorted((e for e in kept if e.end > e.start), key=lambda e: (e.start, e.end))
    if not kept:
        return None
    return DenseExample(id=key, video=video, duration=duration, events=tuple(kept))


def _event(event: Any, where: str, text_field: str, ordered: bool = True) -> TimedText:
    """An event {start, end, text}; ordered: refuse one that ends before it starts (an annotation
    file's are dropped later instead)."""
    if not isinstance(event, dict):
        raise DatasetError(f'{where} must be {{"start", "end", "{text_field}"}}, not {event!r}')
    text = event.get(text_field)
    if not isinstance(text, str) or not text.strip():
        raise DatasetError(f"{where}: no {text_field}")
    start, end = seconds_value(event.get("start"), "start", where), seconds_value(event.get("end"), "end", where)
    if ordered and end <= start:
        raise DatasetError(f"{where}: end ({end:g}) must be after start ({start:g})")
    return TimedText(start, end, " ".join(text.split()))


def _pair(value: Any, where: str) -> tuple[Any, Any]:
    if not isinstance(value, list) or len(value) != 2:
        raise DatasetError(f"{where}: a segment is [start, end] in seconds, not {value!r}")
    return value[0], value[1]
