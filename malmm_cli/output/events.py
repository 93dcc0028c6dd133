"""What `malmm watch` writes as it happens: one event per interval, in jsonl, txt, srt or vtt.

Each format is a small function from an event to text; `EventWriter` adds what a format needs
around its cues (the WebVTT header, SRT's cue numbers), flushes after every event so that
`malmm watch ... | jq` sees it at once, and appends to `--output FILE` durably (fsync per event).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from malmm_cli.media.timefmt import format_timestamp
from malmm_cli.output.writers import cue_text
from malmm_cli.wording import counted

EVENT_FORMATS = ("jsonl", "txt", "srt", "vtt")


@dataclass(frozen=True)
class WatchEvent:
    """One interval of a stream read out: its stream times (s), the wall-clock time the event was
    made (ISO 8601), the caption, the answer to --question, frames read in the interval, frames
    dropped since the event before (an interval whose frames were all dropped has no event), and
    the lag: how late the event is, in seconds of the source's clock: the stream time the source
    had moved on past the interval's end when the event was made, plus how far reading lagged
    behind a live source's own pace. chapter: the memory's chapter (--reset-every), else None."""

    start: float
    end: float
    wall_time: str
    text: str
    frames: int
    dropped: int
    lag: float
    question: str | None = None
    answer: str | None = None
    chapter: int | None = None

    def to_dict(self) -> dict[str, object]:
        values = asdict(self)
        for key in ("question", "answer", "chapter"):
            if values[key] is None:
                del values[key]
        values["start"], values["end"], values["lag"] = round(self.start, 3), round(self.end, 3), round(self.lag, 3)
        return values


def to_jsonl(event: WatchEvent) -> str:
    return json.dumps(event.to_dict(), ensure_ascii=False) + "\n"


def _words(event: WatchEvent) -> str:
    text = event.text
    if event.answer is not None:
        text += f"\nQ: {event.question}\nA: {event.answer}"
    return text


def to_txt(event: WatchEvent) -> str:
    span = f"[{format_timestamp(event.start)} --> {format_timestamp(event.end)}]"
    behind = f" ({counted(event.dropped, 'frame')} dropped to keep up)" if event.dropped else ""
    lines = _words(event).split("\n")
    return "\n".join([f"{span} {lines[0]}{behind}", *(f"    {line}" for line in lines[1:])]) + "\n"


def to_srt(event: WatchEvent, number: int) -> str:
    times = f"{format_timestamp(event.start, ',')} --> {format_timestamp(event.end, ',')}"
    return f"{number}\n{times}\n{cue_text(_words(event))}\n\n"


def to_vtt(event: WatchEvent) -> str:
    times = f"{format_timestamp(event.start)} --> {format_timestamp(event.end)}"
    return f"{times}\n{cue_text(_words(event), vtt=True)}\n\n"


def events_format(text: str) -> str | None:
    """The event format a file's text is in, from its first line (None: nothing in it yet;
    "unknown": not events malmm writes)."""
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        return None
    if first.startswith("WEBVTT"):
        return "vtt"
    if first.startswith("{"):
        return "jsonl"
    if first.strip().isdigit():
        return "srt"
    if first.startswith("[") and " --> " in first:
        return "txt"
    return "unknown"


class EventWriter:
    """Writes events in one format to stdout and, appended, to a file.

    Appending to a file that has events already goes on after them: no second WebVTT header,
    SRT numbers go on from the last cue's; a file of events in another format (or of anything
    else) is refused (ValueError) rather than mixed. A file this writer made is removed again if
    no event reached it (a run that failed to start). stdout is looked up at each write, so that
    a live status line (Rich) that redirects it while it is shown keeps the events above it."""

    def __init__(self, fmt: str, stdout: bool = True, path: Path | None = None):
        if fmt not in EVENT_FORMATS:
            raise ValueError(f"format must be one of {', '.join(EVENT_FORMATS)}, got {fmt!r}")
        self.fmt, self.stdout, self.cues = fmt, stdout, 0
        self.file, self.path, self.made, self.written = None, path, False, False
        self.failed = False  # a write to the file failed (and what it could not write is still buffered)
        if path is not None:
            earlier = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
            found = events_format(earlier)
            if found == "unknown":
                raise ValueError(f"{path} does not hold malmm watch events: append them to another file")
            if found not in (None, fmt):
                raise ValueError(f"{path} holds {found} events: appending {fmt} would mix the two (use --format "
                                 f"{found}, or another file)")  # fmt: skip
            self.made = not path.exists()
            self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the whole watch)
            self.cues = sum(" --> " in line for line in earlier.splitlines()) if fmt == "srt" else 0
            if fmt == "vtt" and not earlier:
                self._write_file("WEBVTT\n\n")
        if fmt == "vtt" and stdout:
            self._print("WEBVTT\n\n")
        self._printed_cues = 0

    def write(self, event: WatchEvent) -> None:
        """The file first: an event is on disk before a reader of stdout may stop the run."""
        self.cues += 1
        self._printed_cues += 1
        if self.file is not None:
            self._write_file(self._text(event, self.cues))
            self.written = True
        if self.stdout:
            self._print(self._text(event, self._printed_cues))

    @staticmethod
    def _print(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def _text(self, event: WatchEvent, number: int) -> str:
        if self.fmt == "srt":
            return to_srt(event, number)
        return {"jsonl": to_jsonl, "txt": to_txt, "vtt": to_vtt}[self.fmt](event)

    def _write_file(self, text: str) -> None:
        try:
            self.file.write(text)
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError:
            self.failed = True
            raise

    def close(self) -> None:
        """Close the file; a write that failed has said why, and closing (which writes what is still
        buffered) would only fail again."""
        if self.file is not None:
            file, self.file = self.file, None
            try:
                file.close()
            except OSError:
                if not self.failed:
                    raise
            if self.made and not self.written:
                self.path.unlink(missing_ok=True)
