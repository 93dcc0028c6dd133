"""Results on stdout, one video after the other in one format, and what happens when stdout stops
taking them (`| head`, a full disk)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from malmm_cli.media.names import shown
from malmm_cli.output.html_report import report_context, to_html
from malmm_cli.output.writers import CSV_HEADER, FORMATTERS, to_csv
from malmm_cli.reading.results import VideoResult


class StdoutClosed(Exception):
    """stdout stopped taking results: its reader went away (`| head`), or it cannot be written
    (`> file` on a full disk). Raised once, by the write that found it; later writes do nothing."""

    def __init__(self, reason: str, reader_gone: bool):
        super().__init__(reason)
        self.reader_gone = reader_gone


def silence(stream: TextIO) -> None:
    """Point the stream's descriptor at /dev/null, so that what its buffer still holds does not fail
    again (and print a traceback) when the interpreter flushes it on exit."""
    try:
        descriptor = stream.fileno()
    except (OSError, ValueError):  # not a file (a StringIO in tests): nothing is flushed on exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, descriptor)
    os.close(devnull)


class StdoutWriter:
    """Results on stdout, one video after the other, in one format.

    json prints one document at the end (or when interrupted): an object for a single video file,
    a list otherwise (use jsonl to stream one object per line). csv prints its header once.
    srt and vtt hold one video's subtitles, so the command line allows them for one input only.
    """

    def __init__(self, fmt: str, single: bool, stream: TextIO | None = None, settings: dict[str, Any] | None = None):
        self.fmt = fmt
        self.settings = settings  # the run's record (Settings.to_dict()), shown in an HTML report
        self.single = single
        self.stream = stream or sys.stdout
        self._json: list[dict] = []
        self._count = 0
        self._finished = False  # close() has run
        self.closed: StdoutClosed | None = None  # why stdout stopped taking results, once it has

    def add(self, result: VideoResult) -> None:
        if self.fmt == "json":
            self._json += result.to_dicts()  # find: one object per query
        elif self.fmt == "csv":
            self._write(to_csv(result, header=self._count == 0))
        elif self.fmt == "html":  # times link to the video when it is in the current folder, where `>` puts the page
            self._write(to_html(result, report_context(self.settings, Path(result.path), Path.cwd())))
        else:
            self._write(self._framed(FORMATTERS[self.fmt](result), result.path))

    def add_saved(self, video: str, saved: Path) -> None:
        """The result an earlier run wrote to `saved`, in this format, for a video skipped now."""
        text = saved.read_text(encoding="utf-8")
        if self.fmt == "json":
            saved = json.loads(text)
            self._json += saved if isinstance(saved, list) else [saved]  # find's queries: a list
        elif self.fmt == "csv":
            self._write(text if self._count == 0 else text.partition("\n")[2])  # the header once
        else:
            self._write(self._framed(text, video))

    def _framed(self, text: str, video: str) -> str:
        """Several videos' txt results: each under its name, a blank line between them."""
        if self.fmt != "txt":
            return text
        if not self.single:
            text = f"# {shown(video)}\n{text}"
        return "\n" + text if self._count else text

    def _write(self, text: str) -> None:
        self._emit(text)
        self._count += 1

    def _emit(self, text: str) -> None:
        """Write and flush; the first failure raises StdoutClosed, and later writes do nothing."""
        if self.closed is not None:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except OSError as error:
            gone = isinstance(error, BrokenPipeError)
            reason = "stdout was closed by its reader" if gone else f"cannot write to stdout: {error.strerror or error}"
            self.closed = StdoutClosed(reason, reader_gone=gone)
            silence(self.stream)
            raise self.closed from None

    def close(self) -> None:
        """Finish the document (json, an empty csv); safe to call twice."""
        if self._finished:
            return
        self._finished = True
        if self.fmt == "json" and (self._json or not self.single):
            document = self._json[0] if self.single and len(self._json) == 1 else self._json
            self._emit(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
        elif self.fmt == "csv" and self._count == 0 and not self.single:
            self._emit(",".join(CSV_HEADER) + "\n")
