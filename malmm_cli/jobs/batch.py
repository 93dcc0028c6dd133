"""Running a task over many inputs: find the videos, skip finished ones, keep going past bad ones.

A bad input never stops a batch: it gets one line naming the file and the reason, and the run
goes on. Several videos are read at once (`--video-batch`); each one's results are written
atomically the moment it finishes, with a record of what produced them (records.py), so a killed
run loses at most the videos in progress, and the next run skips exactly the videos whose results
were made the same way. stdout gets results in input order.

Results are named after the input and the task: `clip.caption.json`, `clip.ask.srt`,
`clip.predict.csv`, mirroring sub-folders of a folder given as input. Two inputs of the same name
with different extensions in one folder keep their extension: `clip.mp4.caption.json`,
`clip.mkv.caption.json`.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

from malmm_cli.jobs.records import Settings, differences, read_record, record, record_path
from malmm_cli.jobs.reporting import Reporter, VideoProgress
from malmm_cli.media.inputs import Input, Outcome
from malmm_cli.media.plans import VideoError
from malmm_cli.output.html_report import index_row, report_context, summary, to_html, to_index
from malmm_cli.output.stdout import StdoutClosed, StdoutWriter
from malmm_cli.output.writers import FORMATTERS, output_paths, write_atomic
from malmm_cli.reading.results import VideoResult
from malmm_cli.wording import counted

INDEX_PAGE = "index.html"


@dataclass(frozen=True)
class Resume:
    """What a rerun does with each input: `pending` to process (with the reasons of those whose
    results are redone), `skipped` (results made the same way exist), and `saved`: the file of
    each skipped input in the first format, which stdout gets instead of a new result."""

    pending: list[Input]
    skipped: list[Outcome]
    redone: dict[str, list[str]]  # by input name
    saved: dict[str, Path] = field(default_factory=dict)  # by input name
    failed: list[Outcome] = field(default_factory=list)  # results that cannot be named there (a path too long)


def plan_resume(
    inputs: Sequence[Input], output_dir: Path | None, settings: Settings, formats: list[str], overwrite: bool
) -> Resume:
    """An input is skipped when its record says its results were made with these settings, in
    every format asked for now (a file of a format the record does not list is left from a run
    with other settings), and those files are there."""
    if output_dir is None:
        return Resume(list(inputs), [], {})
    pending, skipped, redone, saved, failed = [], [], {}, {}, []
    for item in inputs:
        outputs = output_paths(output_dir, item.stem, settings.task, formats)
        try:  # names fit (writers.output_stem), but a whole path may still pass the system's limit
            existing = [path for path in outputs if path.is_file()]
        except OSError as error:
            failed.append(Outcome(item.name, "failed", f"cannot name its results in {output_dir}: "
                                  f"{error.strerror or error}"))  # fmt: skip
            continue
        if overwrite:
            pending.append(item)
            continue
        made = read_record(record_path(output_dir, item.stem, settings.task))
        changed = differences(made, settings, item.path)
        missing = [fmt for fmt in formats if fmt not in (made or {}).get("formats", formats)]
        if not changed and not missing and len(existing) == len(outputs):
            skipped.append(Outcome(item.name, "skipped", "results made with the same settings exist"))
            saved[item.name] = outputs[0]
            continue
        pending.append(item)
        if existing:
            redone[item.name] = changed or [f"{', '.join(missing)} made with other settings"]
    return Resume(pending, skipped, redone, saved, failed)


def write_results(result: VideoResult, output_dir: Path, item: Input, settings: Settings, formats: list[str]) -> None:
    """Every format, atomically, then the record that vouches for them (removed first, so that a
    run killed half-way leaves no record for a mix of old and new files). When one cannot be
    written (a full disk), those written are removed too: a video said to have failed leaves no
    result that looks like a finished one."""
    record_file = record_path(output_dir, item.stem, settings.task)
    record_file.unlink(missing_ok=True)
    written: list[Path] = []
    try:
        for fmt, path in zip(formats, output_paths(output_dir, item.stem, settings.task, formats), strict=True):
            text = (
                to_html(result, report_context(settings.to_dict(), item.path, path.parent)) if fmt == "html" else None
            )
            write_atomic(path, text if text is not None else FORMATTERS[fmt](result))
            written.append(path)
        content = record(settings, item.path, formats)
        if "html" in formats:  # what the folder's index shows of it, also when a rerun skips it
            content["summary"] = summary(result)
        write_atomic(record_file, json.dumps(content, indent=2) + "\n")
    except OSError:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def write_index(output_dir: Path, inputs: Sequence[Input], outcomes: Sequence[Outcome], task: str) -> Path:
    """index.html in the output folder: a row per input of this run (skipped ones from their
    records), and one per failure that is not an input (a folder without videos)."""
    by_path = {outcome.path: outcome for outcome in outcomes}
    rows = []
    for item in inputs:
        outcome = by_path.pop(item.name, Outcome(item.name, "failed", "not read"))
        record_data = read_record(record_path(output_dir, item.stem, task)) or {}
        data = record_data.get("summary") if outcome.status != "failed" else None
        (report,) = output_paths(output_dir, item.stem, task, ["html"])
        href = report.relative_to(output_dir).as_posix() if report.is_file() else None
        status = data.get("status", outcome.status) if outcome.status == "skipped" and data else outcome.status
        detail = "done before, same settings" if outcome.status == "skipped" else outcome.detail
        rows.append(index_row(str(item.stem), status, detail, href and quote(os.fsencode(href)), data))
    rows += [index_row(o.path, o.status, o.detail, None, None) for o in by_path.values() if o.status == "failed"]
    path = output_dir / INDEX_PAGE
    write_atomic(path, to_index(rows, f"malmm {task}: {counted(len(rows), 'video')}"))
    return path


# read(items, progress, done) -> a result or exception per item (see run_batch)
Read = Callable[[list[Input], list[VideoProgress], Callable[[int, VideoResult | Exception], None]], list]


def run_batch(
    inputs: Sequence[Input],
    read: Read,
    *,
    reporter: Reporter,
    formats: list[str],
    output_dir: Path | None,
    stdout: StdoutWriter | None,
    settings: Settings,
    redone: dict[str, list[str]] | None = None,
    videos_at_once: int = 1,
    skipped: Resume | None = None,
) -> list[Outcome]:
    """Read the inputs, `videos_at_once` at a time. Returns one Outcome each.

    `read(items, progress, done)` reads a batch and calls `done(i, result)` as soon as its i-th
    video is finished (or failed: result is then the exception), so each video's results are
    written the moment it ends; stdout gets them in input order. One video's failure does not
    touch the others; an exception out of `read` fails the videos it had not finished.
    stdout None: nothing is printed there (subtitles of several videos go to --output-dir only).
    skipped: inputs among `inputs` that a rerun does not read (`Resume.saved`): stdout gets their
    saved results in their place, and their outcomes are those of `Resume.skipped`.
    """
    saved = skipped.saved if skipped is not None else {}
    skips = {outcome.path: outcome for outcome in (skipped.skipped if skipped is not None else [])}
    outcomes: list[Outcome] = []
    groups: list[list[Input]] = []
    reading = videos_at_once  # videos read in the last group
    for item in inputs:  # up to `videos_at_once` read per group, skipped ones in their place between them
        if reading == videos_at_once and item.name not in saved:
            groups.append([])
            reading = 0
        if not groups:
            groups.append([])
        groups[-1].append(item)
        reading += item.name not in saved
    with reporter.batch(len(inputs) - len(saved)):
        for group in groups:
            outcomes += _run_group(group, read, reporter, formats, output_dir, stdout, settings, redone or {},
                                   saved, skips)  # fmt: skip
    if stdout is not None:
        try:
            stdout.close()
        except StdoutClosed as closed:
            _stdout_closed(closed, output_dir, reporter)
    return outcomes


def _stdout_closed(closed: StdoutClosed, output_dir: Path | None, reporter: Reporter) -> None:
    """stdout stopped taking results. Without --output-dir nothing else receives them: the run stops
    (StdoutClosed goes up). With it, the run goes on: every result still reaches the folder."""
    if output_dir is None:
        raise closed
    message = f"{closed}: results go on to {output_dir} only"
    if closed.reader_gone:
        reporter.info(message)
    else:
        reporter.error(message)


def _run_group(
    group: list[Input],
    read: Read,
    reporter: Reporter,
    formats: list[str],
    output_dir: Path | None,
    stdout: StdoutWriter | None,
    settings: Settings,
    redone: dict[str, list[str]],
    saved: dict[str, Path],
    skips: dict[str, Outcome],
) -> list[Outcome]:
    """Read a group's videos (those not skipped) in one `read`; print every result in order."""
    started = time.monotonic()
    places = [place for place, item in enumerate(group) if item.name not in saved]  # group index of each read
    reading = [group[place] for place in places]
    progress = [reporter.video(item.name) for item in reading]
    outcomes: dict[int, Outcome] = {place: skips[item.name] for place, item in enumerate(group)
                                    if item.name in saved}  # fmt: skip
    printable: dict[int, VideoResult | Path] = {place: saved[item.name] for place, item in enumerate(group)
                                                if item.name in saved}  # fmt: skip
    printed = 0

    def show(place: int) -> None:
        result = printable.pop(place)
        if stdout is None:
            return
        try:
            if isinstance(result, Path):
                stdout.add_saved(group[place].name, result)
            else:
                stdout.add(result)
        except StdoutClosed as closed:
            _stdout_closed(closed, output_dir, reporter)

    def print_in_order() -> None:
        nonlocal printed
        while printed in outcomes:
            if printed in printable:
                show(printed)
            printed += 1

    def done(number: int, result: VideoResult | Exception) -> None:
        with _signals_held():  # Ctrl-C now would lose a finished video's results
            conclude(number, result)

    def conclude(number: int, result: VideoResult | Exception) -> None:
        place = places[number]
        if place in outcomes:
            return
        item = group[place]
        outcome = _finish(item, result, progress[number], reporter, formats, output_dir, settings, started)
        if outcome.status in ("done", "partial"):
            printable[place] = result
            if item.name in redone:
                outcome = replace(outcome, detail=f"{outcome.detail}; redone ({', '.join(redone[item.name])})")
        outcomes[place] = outcome
        reporter.video_done()
        print_in_order()

    print_in_order()  # skipped videos before the first one read
    try:
        results = read(reading, progress, done) if reading else []
    except KeyboardInterrupt:
        with suppress(StdoutClosed):  # the interruption is what the user is told of
            for place in sorted(printable):  # finished (and skipped) videos are not lost to stdout either
                show(place)
        raise
    except StdoutClosed:  # from `done`: nothing receives the results any more
        raise
    except Exception as error:  # the batch as a whole failed (out of memory, say)
        _release_memory(error)
        results = [error] * len(reading)
    for number, result in enumerate(results):
        done(number, result)
    return [outcomes[place] for place in range(len(group))]


@contextmanager
def _signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while a finished video's results are written and printed, and are
    raised again after: one arriving in between lost them (its result was neither printed nor kept).
    Only the main thread sets handlers; elsewhere nothing is held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {number: signal.signal(number, lambda signum, _frame: held.append(signum))
                for number in (signal.SIGINT, signal.SIGTERM)}  # fmt: skip
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if held:
            signal.raise_signal(held[0])  # to the handler that was there: KeyboardInterrupt, say


def _out_of_memory(error: BaseException) -> bool:
    """Whether the GPU ran out of memory (torch is loaded by then: a model raised it)."""
    import torch

    return isinstance(error, torch.OutOfMemoryError)


def _release_memory(error: BaseException) -> None:
    """After running out of GPU memory, give the allocator's cached blocks back, so that the next
    videos start from what is really in use."""
    if _out_of_memory(error):
        import torch

        torch.cuda.empty_cache()


def failure_reason(error: Exception) -> str:
    """One line saying why a video failed."""
    if isinstance(error, VideoError):
        return str(error)
    if _out_of_memory(error):
        return (
            "out of GPU memory: try --quantize 4bit, --quantize-vision 8bit, a smaller --memory-bank-length "
            "or --video-batch 1 (video length does not matter)"
        )
    return f"unexpected error: {type(error).__name__}: {error}".splitlines()[0]


def _finish(
    item: Input,
    result: VideoResult | Exception,
    progress: VideoProgress,
    reporter: Reporter,
    formats: list[str],
    output_dir: Path | None,
    settings: Settings,
    started: float,
) -> Outcome:
    """Write one video's results and say how it went."""
    name = item.name
    if isinstance(result, Exception):
        _release_memory(result)
        return _failed(reporter, name, failure_reason(result), started)
    if output_dir is not None:
        try:
            write_results(result, output_dir, item, settings, formats)
        except OSError as error:  # disk full, permissions
            where = f" to {error.filename}" if getattr(error, "filename", None) else ""
            return _failed(reporter, name, f"cannot write results{where}: {error.strerror or error}", started)
        except Exception as error:  # this video's results only: never the others read with it
            return _failed(reporter, name, f"cannot write results: {failure_reason(error)}", started)
    progress.finish()
    for note in result.notes:
        reporter.note(name, note)
    for warning in result.warnings:
        reporter.warn(f"{name}: {warning}")
    status = "partial" if result.warnings else "done"
    detail = "; ".join(result.warnings) or counted(result.frames, "frame")
    return Outcome(name, status, detail, time.monotonic() - started)


def _failed(reporter: Reporter, name: str, reason: str, started: float) -> Outcome:
    reporter.error(f"{name}: {reason}")
    return Outcome(name, "failed", reason, time.monotonic() - started)
