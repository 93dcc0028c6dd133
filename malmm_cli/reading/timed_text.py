"""Answers that carry times (issue 30): the wording a model is trained to answer in, and the
parser that reads what it generates back into spans.

The wording is TimeIT's (TimeChat's instruction data): a span is `12.5 - 30.0 seconds`, a dense
caption is such spans one after another, each followed by its sentence:
`0.0 - 12.5 seconds, chop the onions. 12.5 - 30.0 seconds, fry them.` Times are seconds from the
start of what the memory read (the clip's start for a clip), as the time-aware frames say them.

The parser accepts that wording and the usual variants a model drifts into (`from 3 to 7
seconds`, `3s - 7s`, `0:03 - 0:07`, en dashes), and says what it could not read instead of
guessing: no span at all, a span that ends before it starts, an answer cut off inside a span.
A span needs a unit (`s`, `sec`, `seconds`) or clock times, so "add 2 - 3 eggs" is not a time.
Plain text: no torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from malmm_cli.reading.results import TimedText

_CLOCK = r"\d+:\d{1,2}(?::\d{1,2})?(?:\.\d+)?"  # m:ss or h:mm:ss, fractions allowed
_NUMBER = r"\d+(?:\.\d+)?"
_UNIT = r"\s*(?:seconds?|secs?|s)\b"
_DASHES = "-\u2013\u2014"  # hyphen, en dash, em dash
_BETWEEN = rf"\s*(?:[{_DASHES}]|to|until|and)\s*"
_SPAN = re.compile(
    rf"(?<![\d.:])(?:(?:from|between)\s+)?"
    rf"(?:(?P<clock_start>{_CLOCK}){_BETWEEN}(?P<clock_end>{_CLOCK})(?:{_UNIT})?"
    rf"|(?P<start>{_NUMBER})(?:{_UNIT})?{_BETWEEN}(?P<end>{_NUMBER}){_UNIT})",
    re.IGNORECASE,
)
# An answer cut off inside a span (max_new_tokens reached): a time, a separator, maybe half a time.
_CUT_OFF = re.compile(rf"(?:{_CLOCK}|{_NUMBER})(?:{_UNIT})?\s*(?:[{_DASHES}]|to)\s*(?:{_CLOCK}|{_NUMBER})?\s*$", re.I)
_SENTENCE_EDGES = f" \t\n,;:.()[]'\"{_DASHES}"


@dataclass(frozen=True)
class TimedAnswer:
    """A generated answer read back: its spans in the order written, the text before the first
    one (a grounding answer's preface, or a dense answer's untimed start), and what could not be
    read (empty when the whole answer parsed)."""

    spans: tuple[TimedText, ...]
    before: str = ""
    problems: tuple[str, ...] = ()

    @property
    def parsed(self) -> bool:
        """Whether the answer gave at least one span and nothing in it failed to read."""
        return bool(self.spans) and not self.problems


def seconds_text(seconds: float) -> str:
    """A time as the wording writes it: seconds to a tenth (0.0, 12.5, 125.0)."""
    return f"{round(float(seconds), 1):.1f}"


def span_text(start: float, end: float) -> str:
    """`12.5 - 30.0 seconds`: a grounding target, and the head of each dense event."""
    return f"{seconds_text(start)} - {seconds_text(end)} seconds"


def dense_text(events: Iterable[tuple[float, float, str]]) -> str:
    """A dense caption's target: each event's span and sentence, in time order."""
    ordered = sorted(events, key=lambda event: (event[0], event[1]))
    return " ".join(f"{span_text(start, end)}, {_sentence(text)}." for start, end, text in ordered)


def parse_timed(answer: str) -> TimedAnswer:
    """The spans of a generated answer (see the module's docstring for what is read)."""
    matches = list(_SPAN.finditer(answer))
    spans: list[TimedText] = []
    problems: list[str] = []
    for number, match in enumerate(matches):
        following = matches[number + 1].start() if number + 1 < len(matches) else len(answer)
        text = answer[match.end() : following]
        if number + 1 == len(matches):
            cut = _CUT_OFF.search(text)
            if cut is not None:
                problems.append(f"the answer stops inside a span: {cut.group(0).strip()!r}")
                text = text[: cut.start()]
        start, end = _times(match)
        if end < start:
            problems.append(f"a span ends before it starts: {match.group(0).strip()!r}")
            continue
        spans.append(TimedText(start, end, _sentence(text)))
    before = answer[: matches[0].start()] if matches else answer
    if not matches:
        cut = _CUT_OFF.search(answer)
        if cut is not None:
            problems.append(f"the answer stops inside a span: {cut.group(0).strip()!r}")
        problems.append("no time span in the answer (expected 'START - END seconds')")
    return TimedAnswer(tuple(spans), before.strip(), tuple(problems))


def _times(match: re.Match[str]) -> tuple[float, float]:
    if match.group("clock_start") is not None:
        return _clock(match.group("clock_start")), _clock(match.group("clock_end"))
    return float(match.group("start")), float(match.group("end"))


def _clock(text: str) -> float:
    seconds = 0.0
    for part in text.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def _sentence(text: str) -> str:
    """A sentence without the separators around it (the wording's comma, its closing full stop)."""
    return " ".join(text.split()).strip(_SENTENCE_EDGES)


def on_video_clock(answer: TimedAnswer, start: float, end: float) -> tuple[TimedAnswer, list[str]]:
    """The answer's spans moved onto the video's clock, and notes on what was changed.

    The model's seconds count from `start`, where the memory began to read (a clip's start, else
    0: the clock the time-aware frames are told), so a span "2 - 5 seconds" of a clip starting at
    60 s is 62 - 65 on the video. What was read ends at `end`: a span running past it is cut there
    (a note says so); one starting at or after it names nothing that was read, so it is dropped
    and counted among the answer's problems."""
    spans: list[TimedText] = []
    problems, notes = list(answer.problems), []
    for span in answer.spans:
        said = span_text(span.start, span.end)
        first, last = start + span.start, start + span.end
        if first >= end - 1e-9:
            problems.append(f"a span starts after the end of what was read ({seconds_text(end - start)} s): {said!r}")
            continue
        if last > end + 1e-9:
            notes.append(f"a span runs past the end of what was read ({seconds_text(end - start)} s) and is cut "
                         f"there: {said!r}")  # fmt: skip
            last = end
        spans.append(TimedText(first, last, span.text))
    return TimedAnswer(tuple(spans), answer.before, tuple(problems)), notes
