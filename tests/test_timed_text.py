"""The wording of answers that carry times and its parser (malmm_cli/reading/timed_text.py)."""

from __future__ import annotations

import pytest

from malmm_cli.reading.results import TimedText
from malmm_cli.reading.timed_text import TimedAnswer, dense_text, parse_timed, seconds_text, span_text


def test_the_wording_is_timeits():
    assert span_text(3, 12.46) == "3.0 - 12.5 seconds"
    assert seconds_text(125) == "125.0"
    events = [(12.5, 30, "fry them."), (0, 12.5, "  Chop the onions ")]
    assert dense_text(events) == "0.0 - 12.5 seconds, Chop the onions. 12.5 - 30.0 seconds, fry them."


def test_what_is_written_parses_back():
    events = [(0.0, 12.5, "chop the onions"), (12.5, 30.0, "fry them in oil, then salt")]
    assert parse_timed(dense_text(events)) == TimedAnswer(tuple(TimedText(*event) for event in events))
    assert parse_timed(span_text(3.2, 8.7)) == TimedAnswer((TimedText(3.2, 8.7),))


@pytest.mark.parametrize(
    ("answer", "span"),
    [
        ("The screen is red from 3 to 7 seconds.", (3.0, 7.0)),
        ("between 3.5 and 7 sec", (3.5, 7.0)),
        ("3s - 7s", (3.0, 7.0)),
        ("3 \u2013 7 s", (3.0, 7.0)),
        ("0:03 - 1:07.5", (3.0, 67.5)),
        ("1:00:00 - 1:00:30 seconds", (3600.0, 3630.0)),
    ],
)
def test_variants_a_model_drifts_into(answer, span):
    parsed = parse_timed(answer)
    assert parsed.parsed, parsed.problems
    assert [(s.start, s.end) for s in parsed.spans] == [span]


def test_the_preface_of_a_grounding_answer_is_kept_apart():
    parsed = parse_timed("It happens at 3.0 - 7.0 seconds.")
    assert parsed.before == "It happens at"
    assert parsed.spans == (TimedText(3.0, 7.0),)


@pytest.mark.parametrize("answer", ["add 2 - 3 eggs and stir", "add 2 - 3 spoons", "a red screen", "", "12.5"])
def test_nonsense_says_it_has_no_span(answer):
    parsed = parse_timed(answer)
    assert not parsed.parsed
    assert parsed.spans == ()
    assert parsed.problems[-1].startswith("no time span in the answer")
    assert parsed.before == answer.strip()


def test_an_answer_cut_off_inside_a_span_keeps_what_came_before():
    parsed = parse_timed("0.0 - 12.5 seconds, chop the onions. 12.5 - 3")
    assert parsed.spans == (TimedText(0.0, 12.5, "chop the onions"),)
    assert parsed.problems == ("the answer stops inside a span: '12.5 - 3'",)
    assert not parsed.parsed


def test_a_span_that_ends_before_it_starts_is_left_out_and_said():
    parsed = parse_timed("7.0 - 3.0 seconds, backwards. 8.0 - 9.0 seconds, fine.")
    assert parsed.spans == (TimedText(8.0, 9.0, "fine"),)
    assert parsed.problems == ("a span ends before it starts: '7.0 - 3.0 seconds'",)


def test_a_span_of_no_length_is_read_as_said():
    """'5.0 - 5.0 seconds' does not end before it starts: it is a span (which overlaps nothing)."""
    assert parse_timed("5.0 - 5.0 seconds") == TimedAnswer((TimedText(5.0, 5.0),))


def test_a_span_starts_at_a_whole_number_not_inside_one():
    assert parse_timed("release 1.2.5 - 3.0 seconds").spans == ()
    assert parse_timed("(12.5 - 30.0 seconds)").spans == (TimedText(12.5, 30.0),)
