"""Output formats: txt, json, jsonl, srt, vtt, csv and html, and atomic files named after each input.

Each format is a function from a VideoResult to text, so a format can be printed to stdout or
written to a file the same way. Files are written to a temporary name and renamed, so a killed
run never leaves a half-written result behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path

from malmm_cli.media.names import fit_path, lossless, temporary_name
from malmm_cli.media.timefmt import format_timestamp
from malmm_cli.output.html_report import to_html
from malmm_cli.reading.results import Answer, TimedText, VideoResult

# file_base64: the name's bytes when it is not UTF-8 (file then shows it escaped), else empty (names.py)
CSV_HEADER = ("file", "task", "start", "end", "kind", "text", "score", "file_base64")


def _span(span: TimedText) -> str:
    return f"[{format_timestamp(span.start)} --> {format_timestamp(span.end)}]"


def to_txt(result: VideoResult) -> str:
    """Plain lines for a person: the answer first, then anything timed."""
    lines: list[str] = []
    if result.task == "caption":
        lines.append(result.caption or "")
        lines += [f"{_span(s)} {s.text}" for s in result.segments]
    elif result.task == "dense":
        lines += _timed_lines(result.caption or "", result.events, result.problems)
    elif result.task == "find":
        lines += _found_lines(result)
    elif result.task == "ask":
        if len(result.answers) == 1:
            lines += _answer_lines(result.answers[0])
        else:
            for answer in result.answers:  # read as times: its spans and problems under it
                lines += [f"Q: {answer.question}", f"A: {answer.answer}"]
                if answer.spans is not None:
                    lines += _timed_lines(answer.answer, answer.spans, answer.problems, raw=False)
    else:
        lines += [f"{label.probability:.4f}\t{label.label}" for label in result.labels]
        if result.next_action is not None:
            lines.append(f"Next: {result.next_action}")
        lines += [f"{_span(s)} {s.text}" for s in result.timeline]
    return "\n".join(lines) + "\n"


def _answer_lines(answer: Answer) -> list[str]:
    """An answer: as generated, or, read as times, its spans (and what did not read)."""
    if answer.spans is None:
        return [answer.answer]
    return _timed_lines(answer.answer, answer.spans, answer.problems)


def _timed_lines(answer: str, spans: Sequence[TimedText], problems: Sequence[str], raw: bool = True) -> list[str]:
    """An answer read as times: a line per span, `[start --> end] text`; where some of it did not
    read, the answer as generated (unless shown already: raw False) and each problem."""
    lines = [f"{_span(span)} {span.text}".rstrip() for span in spans]
    if problems:
        lines += [f"Answer: {answer}"] * raw + [f"(not read as times: {problem})" for problem in problems]
    return lines


def _found_lines(result: VideoResult) -> list[str]:
    """find: each query's moments, best first (under the query when there are several)."""
    lines: list[str] = []
    for number, found in enumerate(result.found):
        if len(result.found) > 1:
            lines += [""] * (number > 0) + [f"Query: {found.query}"]
        lines += [f"{_span(TimedText(m.start, m.end, found.query))} {m.score:.4f}" for m in found.moments]
        if not found.moments:
            lines.append("(no window scored above the threshold)")
    return lines


def to_json(result: VideoResult) -> str:
    """One object per video (find: per video and query; a list of them for several queries)."""
    objects = result.to_dicts()
    return json.dumps(objects[0] if len(objects) == 1 else objects, ensure_ascii=False, indent=2) + "\n"


def to_jsonl(result: VideoResult) -> str:
    return "".join(json.dumps(data, ensure_ascii=False) + "\n" for data in result.to_dicts())


def cues(result: VideoResult) -> list[TimedText]:
    """Subtitle cues: timed spans where there are some, else the answer over the whole video (or clip)."""
    whole = (result.start, result.end)
    if result.task == "caption":
        return result.segments or [TimedText(*whole, result.caption or "")]
    if result.task == "dense":  # a cue per event; what did not read, over the whole video
        return _in_time_order([*result.events, *_unread_cues(whole, result.caption or "", result.problems)])
    if result.task == "ask":
        spans = []
        for a in result.answers:
            if a.spans is None:
                spans.append(TimedText(*whole, f"Q: {a.question}\nA: {a.answer}"))
                continue
            spans += [TimedText(s.start, s.end, f"{a.question}\n{s.text}".strip()) for s in a.spans]
            spans += _unread_cues(whole, f"Q: {a.question}\nA: {a.answer}", a.problems)
        return _in_time_order(spans)  # (stable: untimed answers, all over the whole video, keep their order)
    if result.task == "find":  # a cue per moment, in time order
        moments = [TimedText(m.start, m.end, f"{f.query} ({m.score:.2f})") for f in result.found for m in f.moments]
        return sorted(moments, key=lambda span: (span.start, -span.end))
    spans = list(result.timeline)
    if result.labels:
        spans.append(TimedText(*whole, f"{result.labels[0].label} ({result.labels[0].probability:.2f})"))
    if result.next_action is not None:
        spans.append(TimedText(result.last_frame, whole[1], f"Next: {result.next_action}"))
    return _in_time_order(spans)


def _in_time_order(spans: list[TimedText]) -> list[TimedText]:
    return sorted(spans, key=lambda span: (span.start, -span.end))  # the longer first


def _unread_cues(whole: tuple[float, float], answer: str, problems: Sequence[str]) -> list[TimedText]:
    """An answer that did not all read as times: one cue over what was read, the answer as
    generated and why (none when all of it read)."""
    if not problems:
        return []
    return [TimedText(*whole, "\n".join([answer, *(f"(not read as times: {p})" for p in problems)]))]


def cue_text(text: str, vtt: bool = False) -> str:
    """Text that stays inside its cue: a blank line would end the cue, and "-->" start a new one in
    the player's eyes; WebVTT also reads "&" and "<" as markup (">" may stay)."""
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n")]
    text = "\n".join(line for line in lines if line) or " "
    text = text.replace("-->", "->")
    if vtt:
        text = text.replace("&", "&amp;").replace("<", "&lt;")
    return text


def to_srt(result: VideoResult) -> str:
    blocks = []
    for number, cue in enumerate(cues(result), start=1):
        start, end = format_timestamp(cue.start, ","), format_timestamp(cue.end, ",")
        blocks.append(f"{number}\n{start} --> {end}\n{cue_text(cue.text)}\n")
    return "\n".join(blocks)


def to_vtt(result: VideoResult) -> str:
    blocks = ["WEBVTT\n"]
    for cue in cues(result):
        times = f"{format_timestamp(cue.start)} --> {format_timestamp(cue.end)}"
        blocks.append(f"{times}\n{cue_text(cue.text, vtt=True)}\n")
    return "\n".join(blocks)


def csv_rows(result: VideoResult) -> list[tuple[str, ...]]:
    """One row per piece of the result, with CSV_HEADER's columns."""
    whole = (f"{result.start:.3f}", f"{result.end:.3f}")
    name = lossless(result.path)
    base = (name["file"], result.task)
    rows: list[tuple[str, ...]] = []
    if result.caption is not None:
        rows.append((*base, *whole, "caption", result.caption, ""))
    rows += [(*base, f"{s.start:.3f}", f"{s.end:.3f}", "segment", s.text, "") for s in result.segments]
    rows += [(*base, f"{s.start:.3f}", f"{s.end:.3f}", "event", s.text, "") for s in result.events]
    rows += [(*base, *whole, "problem", problem, "") for problem in result.problems]
    for a in result.answers:
        rows.append((*base, *whole, "answer", f"{a.question} -> {a.answer}", ""))
        rows += [(*base, f"{s.start:.3f}", f"{s.end:.3f}", "span", f"{a.question} -> {s.text}" if s.text
                  else a.question, "") for s in a.spans or ()]  # fmt: skip
        rows += [(*base, *whole, "problem", f"{a.question} -> {problem}", "") for problem in a.problems]
    rows += [(*base, f"{s.start:.3f}", f"{s.end:.3f}", "timeline", s.text, "") for s in result.timeline]
    if result.next_action is not None:
        rows.append((*base, f"{result.last_frame:.3f}", whole[1], "next_action", result.next_action, ""))
    rows += [(*base, *whole, "label", r.label, f"{r.probability:.4f}") for r in result.labels]
    for found in result.found:  # find: the moments, best first, then the curve (a row per window)
        rows += [(*base, f"{m.start:.3f}", f"{m.end:.3f}", "moment", found.query, f"{m.score:.4f}")
                 for m in found.moments]  # fmt: skip
        rows += [(*base, f"{start:.3f}", f"{end:.3f}", "window", found.query, f"{score:.4f}")
                 for start, end, score in found.curve]  # fmt: skip
    return [(*row, name.get("file_base64", "")) for row in rows]


def to_csv(result: VideoResult, header: bool = True) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(CSV_HEADER)
    writer.writerows(csv_rows(result))
    return buffer.getvalue()


FORMATTERS: dict[str, Callable[[VideoResult], str]] = {
    "txt": to_txt,
    "json": to_json,
    "jsonl": to_jsonl,
    "srt": to_srt,
    "vtt": to_vtt,
    "csv": to_csv,
    "html": to_html,  # html_report.py; batch.write_results also gives it the settings and the video's place
}
FORMATS = tuple(FORMATTERS)  # what --format accepts, in the order --help lists them


def output_stem(output_dir: Path, stem: Path, task: str) -> Path:
    """The stem the files of one input are named with: `stem`, or, where a name would pass the
    file system's limit with the longest suffix of any format, shortened with a hash of it
    (names.fit_stem), the same for every format and on every rerun."""
    return fit_path(output_dir, stem, len(f".{task}.") + max(map(len, FORMATS)))


def output_paths(output_dir: Path, stem: Path, task: str, formats: list[str]) -> list[Path]:
    """Where one input's results go: output_dir/<stem>.<task>.<format> for each format, so the
    results of different tasks for one video never overwrite each other."""
    fitted = output_stem(output_dir, stem, task)
    return [output_dir / fitted.parent / f"{fitted.name}.{task}.{fmt}" for fmt in formats]


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename it over `path`. The temporary name
    is never longer than `path`'s (names.temporary_name), so it fits wherever the result fits.

    The file is created with mode 0666 less the umask, as any other program's output would be
    (a temporary file's usual 0600 would otherwise stay on the result).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(16):  # a short name keeps little of the random token: another try on a clash
        temporary = path.with_name(temporary_name(path.name, secrets.token_hex(4)))
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            if attempt == 15:
                raise
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_json(path: Path, content: object) -> None:
    """`content` as indented JSON, written as `write_atomic` writes."""
    write_atomic(path, json.dumps(content, indent=2) + "\n")
