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
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

import torch

from malmm_cli.html_report import ReportContext, index_row, summary, to_html, to_index, video_href
from malmm_cli.lockstep import Clip
from malmm_cli.names import shown
from malmm_cli.pipeline import Reader
from malmm_cli.progress import Outcome, Reporter, VideoProgress
from malmm_cli.records import Settings, differences, read_record, record, record_path
from malmm_cli.results import VideoResult
from malmm_cli.stream import Sampling
from malmm_cli.video import VideoError
from malmm_cli.wording import counted
from malmm_cli.writers import CSV_HEADER, FORMATTERS, output_paths, to_csv, write_atomic

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".flv", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts"}
    | {".3gp", ".ogv", ".mxf", ".vob"}
)
ONE_VIDEO_FORMATS = ("srt", "vtt", "html")  # a subtitle file, a report belongs to one video
INDEX_PAGE = "index.html"


@dataclass(frozen=True)
class Input:
    """A video to process and the name of its results (relative to --output-dir, no extension);
    from a manifest, possibly a clip of it (seconds)."""

    path: Path
    stem: Path
    start: float | None = None
    end: float | None = None

    @property
    def clip(self) -> tuple[float | None, float | None]:
        return (self.start, self.end)

    @property
    def name(self) -> str:
        """How progress, stderr and the summary name it: its path, and a clip's seconds (two clips of
        one video must be told apart)."""
        if self.clip == (None, None):
            return str(self.path)
        return f"{self.path} [{self.start or 0:g}-{'end' if self.end is None else f'{self.end:g}'} s]"


def _videos_in(folder: Path) -> list[Path]:
    """Video files under `folder`, sorted; hidden entries skipped, linked folders not followed
    (so a link back up the tree cannot loop). A broken link with a video's name is kept, to fail
    with its reason rather than vanish from the batch."""
    found = []
    for root, folders, files in os.walk(folder, followlinks=False):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in files:
            path = Path(root) / name
            if (
                not name.startswith(".")
                and path.suffix.lower() in VIDEO_EXTENSIONS
                and (path.is_file() or path.is_symlink())
            ):
                found.append(path)
    return sorted(found)


def read_manifest(manifest: Path) -> tuple[list[Input], list[Outcome]]:
    """The videos a manifest lists: one path per line (`#` comments), or JSONL rows with a
    `video` and optionally `start`/`end` (seconds: a clip, named `clip_90-102`); paths relative
    to the manifest's folder, results named as for a folder of them."""
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        return [], [Outcome(f"@{manifest}", "failed", f"cannot read the manifest: {reason}")]
    inputs, failures = [], []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if manifest.suffix.lower() == ".jsonl":
            try:
                row = json.loads(text)
                video = row["video"]
            except (json.JSONDecodeError, KeyError, TypeError):
                failures.append(Outcome(f"{manifest}:{number}", "failed", 'not a JSON object with a "video"'))
                continue
            try:
                start, end = _seconds(row.get("start")), _seconds(row.get("end"))
            except (ValueError, TypeError):
                failures.append(Outcome(f"{manifest}:{number}", "failed", "start and end must be seconds, >= 0"))
                continue
            if start is not None and end is not None and end <= start:
                failures.append(Outcome(f"{manifest}:{number}", "failed", f"end ({end:g}) must be after start"))
                continue
            text = str(video)
        else:
            start = end = None
        path = manifest.parent / text  # an absolute path stays as it is
        inside = Path(os.path.relpath(path, manifest.parent))
        stem = Path(path.stem) if inside.parts[0] == ".." else inside.with_suffix("")
        if start is not None or end is not None:
            stem = stem.with_name(f"{stem.name}_{start or 0:g}-{'end' if end is None else f'{end:g}'}")
        inputs.append(Input(path, stem, start, end))
    if not inputs and not failures:
        failures.append(Outcome(f"@{manifest}", "failed", "the manifest lists no videos"))
    return inputs, failures


def clip_sampling(sampling: Sampling, item: Input) -> Sampling:
    """The run's sampling for this input: the whole video, or its clip (which needs --frames)."""
    if item.clip == (None, None):
        return sampling
    if sampling.frames is None:
        raise VideoError("a clip (start/end in the manifest) is sampled by --frames, not --fps")
    return replace(sampling, start=item.start, end=item.end)


def input_clip(item: Input, sampling: Sampling, readers: Sequence[Reader]) -> Clip:
    """What lockstep.read_in_lockstep reads of an input: the video with the run's sampling for it,
    or the error that fails it alone (`clip_sampling`)."""
    try:
        return Clip(item.path, clip_sampling(sampling, item), tuple(readers))
    except VideoError as error:
        return Clip(item.path, error, tuple(readers))


def _seconds(value: object) -> float | None:
    if value is None or value == "":
        return None
    seconds = float(value)  # ValueError / TypeError for what is not a number
    if not (seconds >= 0 and seconds < float("inf")):
        raise ValueError(f"not a time: {value!r}")
    return seconds


def expand_inputs(paths: Sequence[Path]) -> tuple[list[Input], list[Outcome]]:
    """Files as given (whatever their extension), the videos found under folders, recursively, and
    those a manifest lists (`@FILE`, see `read_manifest`).

    A folder without videos is a failure of its own; a path given twice is read once. A file that
    cannot be read (missing, a symbolic link loop) is kept, to fail with its reason when checked.
    """
    inputs: list[Input] = []
    failures: list[Outcome] = []
    seen: set[tuple] = set()
    for path in paths:
        if str(path).startswith("@"):
            candidates, problems = read_manifest(Path(str(path)[1:]))
            failures += problems
        elif path.is_dir():
            found = _videos_in(path)
            if not found:
                extensions = ", ".join(sorted(VIDEO_EXTENSIONS)[:6])
                failures.append(Outcome(str(path), "failed", f"folder has no video files ({extensions}, ...)"))
            candidates = [Input(p, p.relative_to(path).with_suffix("")) for p in found]
        else:
            candidates = [Input(path, Path(path.stem))]
        for candidate in candidates:
            key = (Path(os.path.realpath(candidate.path)), candidate.clip)  # never raises, link loops included
            if key not in seen:
                seen.add(key)
                inputs.append(candidate)
    return inputs, failures


def name_outputs(inputs: Sequence[Input]) -> tuple[list[Input], list[str]]:
    """Inputs whose result names are unique: clip.mp4 and clip.mkv side by side keep their
    extension in the name. Returns the inputs and the clashes that remain (the same file name in
    different folders given separately), as text."""

    def clashes(items: Sequence[Input]) -> dict[Path, list[Input]]:
        owners: dict[Path, list[Input]] = {}
        for item in items:
            owners.setdefault(item.stem, []).append(item)
        return {stem: group for stem, group in owners.items() if len(group) > 1}

    clashing = {item.path for group in clashes(inputs).values() for item in group}
    named = [replace(i, stem=i.stem.with_name(i.path.name)) if i.path in clashing else i for i in inputs]
    remaining = [" and ".join(str(i.path) for i in group) for group in clashes(named).values()]
    return named, remaining


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
            text = to_html(result, report_context(settings, item.path, path.parent)) if fmt == "html" else None
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


def report_context(settings: Settings | None, video: Path, folder: Path) -> ReportContext:
    """The HTML report's settings, and a link to the video when it sits in the report's folder."""
    beside = os.path.realpath(video.parent) == os.path.realpath(folder)
    shown = {k: v for k, v in settings.to_dict().items() if k != "task"} if settings is not None else {}
    return ReportContext(shown, video_href(video.name) if beside else None)


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


class StdoutClosed(Exception):
    """stdout stopped taking results: its reader went away (`| head`), or it cannot be written
    (`> file` on a full disk). Raised once, by the write that found it; later writes do nothing."""

    def __init__(self, reason: str, reader_gone: bool):
        super().__init__(reason)
        self.reader_gone = reader_gone


def _silence(stream: TextIO) -> None:
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

    def __init__(self, fmt: str, single: bool, stream: TextIO | None = None, settings: Settings | None = None):
        self.fmt = fmt
        self.settings = settings  # shown in an HTML report
        self.single = single
        self.stream = stream or sys.stdout
        self._json: list[dict] = []
        self._count = 0
        self._finished = False  # close() has run
        self.closed: StdoutClosed | None = None  # why stdout stopped taking results, once it has

    def add(self, result: VideoResult) -> None:
        if self.fmt == "json":
            self._json.append(result.to_dict())
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
            self._json.append(json.loads(text))
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
            _silence(self.stream)
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


def failure_reason(error: Exception) -> str:
    """One line saying why a video failed."""
    if isinstance(error, VideoError):
        return str(error)
    if isinstance(error, torch.OutOfMemoryError):
        torch.cuda.empty_cache()
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
