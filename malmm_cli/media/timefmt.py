"""Durations as people type them (90, 90s, 1m30s, 00:01:30) and timestamps as subtitles write them."""

from __future__ import annotations

import math
import re

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_UNIT_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str) -> float:
    """Seconds in `text`: a number of seconds, units (1h2m3s, 90s, 1.5m, 500ms) or a clock ([HH:]MM:SS[.f]).

    Raises ValueError with a message a user can act on. Zero and negative durations are rejected.
    """
    value = text.strip().lower()
    seconds: float | None = None
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    elif re.fullmatch(r"(\d+:){1,2}\d+(\.\d+)?", value):
        parts = [float(p) for p in value.split(":")]
        if all(p < 60 for p in parts[1:]):
            seconds = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    elif value and re.fullmatch(rf"(?:{_UNIT_PART.pattern})+", value):
        units = [unit for _, unit in _UNIT_PART.findall(value)]
        if len(set(units)) == len(units):  # each unit at most once
            seconds = sum(float(number) * _UNITS[unit] for number, unit in _UNIT_PART.findall(value))
    if seconds is None:
        raise ValueError(f"invalid duration {text!r}: use seconds (90), units (1m30s) or a clock (00:01:30)")
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError(f"duration must be more than zero, got {text!r}")
    return seconds


def format_timestamp(seconds: float, decimal_marker: str = ".", always_hours: bool = True) -> str:
    """HH:MM:SS.mmm (SRT uses ',' as the decimal marker); hours may be dropped when zero."""
    milliseconds = max(0, round(seconds * 1000))
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    secs, milliseconds = divmod(milliseconds, 1000)
    clock = f"{minutes:02d}:{secs:02d}{decimal_marker}{milliseconds:03d}"
    return f"{hours:02d}:{clock}" if always_hours or hours else clock
