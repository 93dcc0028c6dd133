"""What malmm found in one video, as plain data the writers turn into txt, json, srt, vtt or csv."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from malmm_cli.media.names import lossless


@dataclass(frozen=True)
class TimedText:
    """Text about a span of the video, in seconds (on the video's own clock in a result; a span an
    answer names, timed_text.py, counts from where the memory began to read until placed on it).
    No text: a span alone (a grounding answer's)."""

    start: float
    end: float
    text: str = ""


@dataclass(frozen=True)
class Answer:
    question: str
    answer: str
    beams: tuple[str, ...] = ()  # with several beams returned: all of them, best (the answer) first
    # An answer read as times (ask --timed): the spans it names on the video's clock, and what of it
    # could not be read (timed_text.parse_timed). None: an ordinary answer, not read as times.
    spans: tuple[TimedText, ...] | None = None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class RankedLabel:
    label: str
    log_likelihood: float  # of the label as the whole answer, under the LLM
    probability: float  # softmax of log-likelihoods over the given labels


@dataclass(frozen=True)
class Moment:
    """Where a query happens (find): a span of the video and its score (its best window's)."""

    start: float
    end: float
    score: float


@dataclass(frozen=True)
class Found:
    """One query's answer (find): its moments, best first, and the score of every window read
    (start, end, score), in time order; threshold: the score a window had to reach (the report
    draws it; None where not known)."""

    query: str
    moments: list[Moment]
    curve: list[tuple[float, float, float]]
    threshold: float | None = None


@dataclass(frozen=True)
class Thumbnail:
    """One frame as a small JPEG: the time it was planned for and its real timestamp."""

    target: float
    time: float
    jpeg: bytes
    width: int
    height: int


@dataclass(frozen=True)
class Preview:
    """What the report shows of the video itself: pictures, where it could not be read, and why
    pictures may be missing (None: every frame was decoded in this run)."""

    thumbnails: list[Thumbnail] = field(default_factory=list)
    damaged: list[tuple[float, float]] = field(default_factory=list)  # spans whose planned frames did not decode
    missing_reason: str | None = None


@dataclass
class VideoResult:
    """One video's result. Which fields are filled depends on `task` (caption, dense, ask, predict or find)."""

    path: str
    task: str
    duration: float
    frames: int  # frames actually read
    first_frame: float  # timestamps of the first and last frame read
    last_frame: float
    caption: str | None = None
    segments: list[TimedText] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    timeline: list[TimedText] = field(default_factory=list)
    next_action: str | None = None
    labels: list[RankedLabel] = field(default_factory=list)
    found: list[Found] = field(default_factory=list)  # find: one per query, in the order asked
    # dense: the events the generated answer (kept in `caption`) names, on the video's clock, in the
    # order written, and what of the answer could not be read as times (timed_text.parse_timed)
    events: list[TimedText] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # parts of the video that could not be read
    notes: list[str] = field(default_factory=list)  # how it was read, where that differs from what was asked
    preview: Preview | None = None  # pictures for the HTML report, when asked for (not part of to_dict)
    clip: tuple[float, float] | None = None  # the part of the video read (a manifest clip); duration is its length

    @property
    def start(self) -> float:
        """Where the results begin, in the video's seconds: the clip's start, else 0."""
        return self.clip[0] if self.clip is not None else 0.0

    @property
    def end(self) -> float:
        """Where the results end: the clip's or the video's end (or the last frame, if later)."""
        return max(self.start + self.duration, self.last_frame)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times rounded to milliseconds, fields a task does not use left out. The file
        is named exactly, or, when its name is not UTF-8, shown escaped with `file_base64` beside it."""
        data: dict[str, Any] = {
            **lossless(self.path),
            "task": self.task,
            "duration": round(self.duration, 3),
            "frames": self.frames,
            "first_frame": round(self.first_frame, 3),
            "last_frame": round(self.last_frame, 3),
        }
        if self.clip is not None:
            data["clip"] = {"start": round(self.clip[0], 3), "end": round(self.clip[1], 3)}
        if self.caption is not None:
            data["caption"] = self.caption
        if self.segments:
            data["segments"] = [_timed(s) for s in self.segments]
        if self.task == "dense":  # always there, maybe empty: an answer that did not read says so
            data["events"] = [_timed(s) for s in self.events]
            data["problems"] = list(self.problems)
        if self.answers:
            data["answers"] = [_answer(a) for a in self.answers]
        if self.timeline:
            data["timeline"] = [_timed(s) for s in self.timeline]
        if self.next_action is not None:
            data["next_action"] = self.next_action
        if self.labels:
            data["labels"] = [
                {"label": r.label, "log_likelihood": round(r.log_likelihood, 4), "probability": round(r.probability, 4)}
                for r in self.labels
            ]
        if self.found:
            data["found"] = [_found(found) for found in self.found]
        if self.warnings:
            data["warnings"] = list(self.warnings)
        if self.notes:
            data["notes"] = list(self.notes)
        return data

    def to_dicts(self) -> list[dict[str, Any]]:
        """What the writers write: `to_dict()`, or for find one object per query (the video's fields
        with `query`, `moments` and `curve`), so each is read as grounding benchmarks read theirs."""
        data = self.to_dict()
        found = data.pop("found", None)
        if self.task != "find" or found is None:
            return [data]
        said = {"notes": data.pop("notes", []), "warnings": data.pop("warnings", [])}  # always there, maybe empty
        return [{**data, **query, **said} for query in found]


def _found(found: Found) -> dict[str, Any]:
    """A query's moments and its curve as [[window start, score], ...] (each window lasts --window)."""
    return {
        "query": found.query,
        "moments": [{"start": round(m.start, 3), "end": round(m.end, 3), "score": round(m.score, 4)}
                    for m in found.moments],
        "curve": [[round(start, 3), round(score, 4)] for start, _, score in found.curve],
    }  # fmt: skip


def _answer(answer: Answer) -> dict[str, Any]:
    """An answer; one read as times has its spans and problems too (both always, maybe empty)."""
    data: dict[str, Any] = {"question": answer.question, "answer": answer.answer}
    if answer.beams:
        data["beams"] = list(answer.beams)
    if answer.spans is not None:
        data["spans"] = [_timed(s) for s in answer.spans]
        data["problems"] = list(answer.problems)
    return data


def _timed(span: TimedText) -> dict[str, Any]:
    return {"start": round(span.start, 3), "end": round(span.end, 3), "text": span.text}
