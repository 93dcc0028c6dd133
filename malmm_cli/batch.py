"""Running a task over many inputs: find the videos, skip finished ones, keep going past bad ones.

A bad input never stops a batch: it gets one line naming the file and the reason, and the run
goes on. Results are written atomically as each video finishes, so a killed run loses at most
the video in progress, and the next run skips what is already written (unless --overwrite).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

from malmm_cli.progress import Outcome, Reporter, VideoProgress
from malmm_cli.results import VideoResult
from malmm_cli.video import VideoError
from malmm_cli.writers import CSV_HEADER, FORMATTERS, output_paths, to_csv, write_result

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".flv", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts"}
    | {".3gp", ".ogv", ".mxf", ".vob"}
)


@dataclass(frozen=True)
class Input:
    """A video to process and the name of its results (relative to --output-dir, no extension)."""

    path: Path
    stem: Path


def expand_inputs(paths: Sequence[Path]) -> tuple[list[Input], list[Outcome]]:
    """Files as given (whatever their extension) and the videos found under folders, recursively.

    A folder without videos is a failure of its own; a path given twice is read once.
    """
    inputs: list[Input] = []
    failures: list[Outcome] = []
    seen: set[Path] = set()
    for path in paths:
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in VIDEO_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and p.is_file()
            )
            if not found:
                extensions = ", ".join(sorted(VIDEO_EXTENSIONS)[:6])
                failures.append(Outcome(str(path), "failed", f"folder has no video files ({extensions}, ...)"))
            candidates = [Input(p, p.relative_to(path).with_suffix("")) for p in found]
        else:
            candidates = [Input(path, Path(path.stem))]
        for candidate in candidates:
            key = candidate.path.resolve()
            if key not in seen:
                seen.add(key)
                inputs.append(candidate)
    return inputs, failures


def output_collisions(inputs: Sequence[Input]) -> list[str]:
    """Inputs that would write the same output files (same name from different folders)."""
    owners: dict[Path, list[Path]] = {}
    for item in inputs:
        owners.setdefault(item.stem, []).append(item.path)
    return [" and ".join(str(p) for p in paths) for paths in owners.values() if len(paths) > 1]


class StdoutWriter:
    """Results on stdout, one video after the other, in one format.

    json prints one document at the end: an object for a single video file, a list otherwise
    (use jsonl to stream one object per line). csv prints its header once.
    """

    def __init__(self, fmt: str, single: bool, stream: TextIO | None = None):
        self.fmt = fmt
        self.single = single
        self.stream = stream or sys.stdout
        self._json: list[dict] = []
        self._count = 0

    def add(self, result: VideoResult) -> None:
        if self.fmt == "json":
            self._json.append(result.to_dict())
            return
        if self.fmt == "csv":
            text = to_csv(result, header=self._count == 0)
        else:
            text = FORMATTERS[self.fmt](result)
            if not self.single and self.fmt == "txt":
                text = f"# {result.path}\n{text}"
            if self._count and self.fmt in ("txt", "srt", "vtt"):
                text = "\n" + text
        self.stream.write(text)
        self.stream.flush()
        self._count += 1

    def close(self) -> None:
        if self.fmt == "json" and (self._json or not self.single):
            document = self._json[0] if self.single and len(self._json) == 1 else self._json
            self.stream.write(json.dumps(document, ensure_ascii=False, indent=2) + "\n")
            self.stream.flush()
        elif self.fmt == "csv" and self._count == 0 and not self.single:
            self.stream.write(",".join(CSV_HEADER) + "\n")


def already_done(item: Input, output_dir: Path | None, formats: list[str]) -> bool:
    return output_dir is not None and all(p.is_file() for p in output_paths(output_dir, item.stem, formats))


def run_batch(
    inputs: Sequence[Input],
    process: Callable[[Input, VideoProgress], VideoResult],
    *,
    reporter: Reporter,
    formats: list[str],
    output_dir: Path | None,
    stdout: StdoutWriter,
) -> list[Outcome]:
    """Process each input, writing its results as soon as it is done. Returns one Outcome each."""
    outcomes: list[Outcome] = []
    with reporter.batch(len(inputs)):
        for item in inputs:
            outcomes.append(_run_one(item, process, reporter, formats, output_dir, stdout))
            reporter.video_done()
    stdout.close()
    return outcomes


def _run_one(
    item: Input,
    process: Callable[[Input, VideoProgress], VideoResult],
    reporter: Reporter,
    formats: list[str],
    output_dir: Path | None,
    stdout: StdoutWriter,
) -> Outcome:
    name = str(item.path)
    started = time.monotonic()
    progress = reporter.video(name)
    try:
        result = process(item, progress)
        if output_dir is not None:
            write_result(result, output_dir, item.stem, formats)
    except VideoError as error:
        reporter.error(f"{name}: {error}")
        return Outcome(name, "failed", str(error), time.monotonic() - started)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        reason = (
            "out of GPU memory: try --quantize 4bit, --quantize-vision 8bit or a smaller --memory-bank-length "
            "(video length does not matter)"
        )
        reporter.error(f"{name}: {reason}")
        return Outcome(name, "failed", reason, time.monotonic() - started)
    except OSError as error:  # writing results: disk full, permissions
        reason = f"cannot write results: {error.strerror or error}"
        reporter.error(f"{name}: {reason}")
        return Outcome(name, "failed", reason, time.monotonic() - started)
    except Exception as error:  # a bad input must not stop the batch, nor print a traceback
        reason = f"unexpected error: {type(error).__name__}: {error}".splitlines()[0]
        reporter.error(f"{name}: {reason}")
        return Outcome(name, "failed", reason, time.monotonic() - started)
    progress.finish()
    stdout.add(result)
    for note in result.notes:
        reporter.info(f"{name}: {note}")
    for warning in result.warnings:
        reporter.warn(f"{name}: {warning}")
    status = "partial" if result.warnings else "done"
    detail = "; ".join(result.warnings) or f"{result.frames} frames"
    return Outcome(name, status, detail, time.monotonic() - started)
