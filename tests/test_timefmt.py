from __future__ import annotations

import pytest

from malmm_cli.media.timefmt import format_timestamp, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("1.5", 1.5),
        ("1m30s", 90),
        ("1m", 60),
        ("2h", 7200),
        ("1h2m3s", 3723),
        ("500ms", 0.5),
        ("1m500ms", 60.5),
        ("00:01:30", 90),
        ("01:30", 90),
        ("1:02:03.5", 3723.5),
        (" 45S ", 45),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "1x", "1m1m", "01:75", "-5", "0", "0s", "00:00:00", "1:2:3:4", "m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_format_timestamp() -> None:
    assert format_timestamp(0) == "00:00:00.000"
    assert format_timestamp(3723.4567) == "01:02:03.457"
    assert format_timestamp(59.9996, decimal_marker=",") == "00:01:00,000"
    assert format_timestamp(75.25, always_hours=False) == "01:15.250"
