"""The HTML report: one self-contained page per video, and an index page for a folder of them.

Pure functions from results to text, like the other writers. A page holds everything it shows
(inline CSS, JPEG thumbnails as data: URLs) and no script at all; its Content-Security-Policy
forbids loading anything but those data: images, so it opens from disk, offline, and a caption
can neither inject markup (every text is escaped) nor make the page fetch anything.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote

from malmm_cli.media.names import shown
from malmm_cli.reading.results import Found, Moment, Thumbnail, TimedText, VideoResult
from malmm_cli.wording import counted

# Nothing may load but the page's own data: images and inline style: no script, font, frame or remote file.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)

STYLE = """
:root { --ink: #1b1b1b; --muted: #4a4a4a; --line: #c8c8c8; --band-a: #2f5f8a; --band-b: #4f86b5; --bad: #a4161a;
        --link: #0b4fa3; --paper: #ffffff; --card: #f4f5f7; --hit: #c2410c; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 72rem; padding: 1rem; font: 16px/1.5 system-ui, sans-serif; color: var(--ink);
       background: var(--paper); }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; overflow-wrap: anywhere; }
h2 { font-size: 1.2rem; margin: 1.5rem 0 .5rem; border-bottom: 1px solid var(--line); }
a { color: var(--link); }
.meta, .muted { color: var(--muted); }
.answer { font-size: 1.15rem; margin: .25rem 0; }
.track { position: relative; height: 2.5rem; background: var(--card); border: 1px solid var(--line);
         border-radius: 4px; margin: .5rem 0 .25rem; overflow: hidden; }
.track a.span { position: absolute; top: 0; bottom: 0; background: var(--band-a); border-right: 1px solid #fff; }
.track a.span:nth-child(even) { background: var(--band-b); }
.track a.span:hover, .track a.span:focus { background: #173a5a; outline: 2px solid #000; }
.track .damage { position: absolute; top: 0; bottom: 0; min-width: 3px;
                 background: repeating-linear-gradient(45deg, var(--bad) 0 4px, #fff 4px 8px); opacity: .9; }
.track a.moment { position: absolute; top: 0; bottom: 0; min-width: 3px; background: var(--hit);
                  border-right: 1px solid #fff; }
.track a.moment:hover, .track a.moment:focus { background: #7c2d12; outline: 2px solid #000; }
svg.curve { display: block; width: 100%; height: 8rem; background: var(--card); border: 1px solid var(--line);
            border-radius: 4px; margin: .25rem 0; }
svg.curve .line { fill: none; stroke: var(--band-a); stroke-width: 2; stroke-linejoin: round;
                  vector-effect: non-scaling-stroke; }
svg.curve .threshold { stroke: var(--bad); stroke-width: 1.5; stroke-dasharray: 6 4;
                       vector-effect: non-scaling-stroke; }
svg.curve rect.hit { fill: var(--hit); opacity: .2; }
svg.curve rect.window { fill: transparent; }
svg.curve rect.window:hover { fill: #000; opacity: .08; }
.band .score { font-variant-numeric: tabular-nums; color: var(--muted); }
.scale { display: flex; justify-content: space-between; font-size: .85rem; color: var(--muted); }
.bands { list-style: none; padding: 0; margin: 1rem 0; display: grid; gap: .75rem;
         grid-template-columns: repeat(auto-fill, minmax(12rem, 1fr)); }
.band { background: var(--card); border: 1px solid var(--line); border-radius: 4px; padding: .5rem;
        break-inside: avoid; }
.band.damaged { border-color: var(--bad); }
.band img, .band .nopicture { display: block; width: 100%; height: auto; border-radius: 2px; }
.band .nopicture { aspect-ratio: 16 / 9; background: #dcdcdc; color: var(--muted); font-size: .85rem;
                   display: flex; align-items: center; justify-content: center; text-align: center; padding: .5rem; }
.band .when { font-size: .9rem; font-variant-numeric: tabular-nums; margin: .35rem 0 .15rem; }
.band p { margin: 0; overflow-wrap: anywhere; }
.badge { color: var(--bad); font-weight: 600; font-size: .85rem; }
.bars { list-style: none; padding: 0; margin: 0; }
.bars li { display: grid; grid-template-columns: minmax(6rem, 14rem) 1fr 4.5rem; gap: .5rem; align-items: center;
           margin: .25rem 0; }
.bars .label { overflow-wrap: anywhere; }
.bars .bar { background: var(--card); border: 1px solid var(--line); height: 1.1rem; border-radius: 3px; }
.bars .fill { display: block; height: 100%; background: var(--band-a); border-radius: 2px; }
.bars .value { text-align: right; font-variant-numeric: tabular-nums; }
.warnings li { color: var(--bad); }
dl.settings { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; font-size: .9rem; }
dl.settings dt { color: var(--muted); }
dl.settings dd { margin: 0; overflow-wrap: anywhere; }
table.videos { border-collapse: collapse; width: 100%; }
table.videos th, table.videos td { border-bottom: 1px solid var(--line); padding: .4rem; text-align: left;
                                   vertical-align: top; }
table.videos img { width: 8rem; height: auto; display: block; }
table.videos td p { margin: 0; overflow-wrap: anywhere; }
.status-failed { color: var(--bad); font-weight: 600; }
.status-partial { color: #8a4b00; font-weight: 600; }
@media (max-width: 40rem) {
  body { padding: .5rem; font-size: 15px; }
  .bands { grid-template-columns: repeat(auto-fill, minmax(9rem, 1fr)); }
  .bars li { grid-template-columns: 1fr 3.5rem; }
  .bars .bar { grid-column: 1 / -1; grid-row: 2; }
  table.videos img { width: 5rem; }
}
@media print {
  body { max-width: none; font-size: 11pt; }
  a { color: inherit; text-decoration: none; }
  .track a.span { border-right-color: #000; }
  .bands { grid-template-columns: repeat(4, 1fr); }
  .band, tr { break-inside: avoid; }
}
"""


@dataclass(frozen=True)
class ReportContext:
    """What the page says beyond the result: the settings that made it, and where the video is
    relative to the page (None: not beside it, so times are plain text)."""

    settings: dict[str, Any] = field(default_factory=dict)
    video_href: str | None = None


def report_context(settings: dict[str, Any] | None, video: Path, folder: Path) -> ReportContext:
    """The page's context: the settings that made the result (its record's, less the task), and a
    link to the video when it sits in the page's folder."""
    beside = os.path.realpath(video.parent) == os.path.realpath(folder)
    shown = {key: value for key, value in (settings or {}).items() if key != "task"}
    return ReportContext(shown, video_href(video.name) if beside else None)


def clock(seconds: float) -> str:
    """A time as people read it on a player: 1:02:03, 12:34, 0:05."""
    whole = max(0, math.floor(seconds + 1e-6))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _name(name: str) -> str:
    """A file name in the page: as names.shown shows it (a byte that is not UTF-8 as \\xff), escaped."""
    return _esc(shown(name))


def _time_link(seconds: float, context: ReportContext) -> str:
    """The time, linking to the video at that moment (a media fragment) when the video is beside the page."""
    label = _esc(clock(seconds))
    if context.video_href is None:
        return f"<time>{label}</time>"
    fragment = f"{max(0.0, seconds):.3f}".rstrip("0").rstrip(".")
    return f'<a href="{_esc(context.video_href)}#t={fragment}"><time>{label}</time></a>'


def video_href(video_name: str) -> str:
    """A relative URL for a file in the page's own folder: its bytes percent-encoded, so a name
    that is not UTF-8 still links to its file."""
    return quote(os.fsencode(video_name))


def data_url(thumbnail: Thumbnail) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(thumbnail.jpeg).decode("ascii")


def _img(thumbnail: Thumbnail, alt: str) -> str:
    return (f'<img src="{data_url(thumbnail)}" width="{thumbnail.width}" height="{thumbnail.height}" '
            f'alt="{_esc(alt)}" decoding="async">')  # fmt: skip


def picture_for(thumbnails: Sequence[Thumbnail], start: float, end: float) -> Thumbnail | None:
    """The thumbnail planned nearest the middle of [start, end), if one was planned inside it."""
    inside = [t for t in thumbnails if start <= t.target < end or (t.target == end == start)]
    return min(inside, key=lambda t: abs(t.target - (start + end) / 2), default=None)


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="generator" content="malmm">\n'
        f"<title>{_esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _summary(result: VideoResult, context: ReportContext) -> list[str]:
    """The whole-video answer: caption, answers, ranked labels as bars, next action."""
    parts: list[str] = []
    if result.task == "caption":
        parts += ['<section aria-labelledby="summary"><h2 id="summary">Caption</h2>',
                  f'<p class="answer">{_esc(result.caption or "")}</p></section>']  # fmt: skip
    elif result.task == "dense":
        parts += ['<section aria-labelledby="summary"><h2 id="summary">Dense caption, as generated</h2>',
                  f'<p class="answer">{_esc(result.caption or "")}</p>', *_unread_paragraphs(result.problems),
                  "</section>"]  # fmt: skip
    elif result.task == "ask":
        parts.append('<section aria-labelledby="summary"><h2 id="summary">Answers</h2><dl class="answers">')
        for answer in result.answers:
            parts.append(f'<dt>{_esc(answer.question)}</dt><dd class="answer">{_esc(answer.answer)}</dd>')
            if answer.spans is not None:
                when = "; ".join(f"{_time_link(s.start, context)} &ndash; {_time_link(s.end, context)}"
                                 for s in answer.spans)  # fmt: skip
                parts.append(f'<dd class="when">{when or "no time read"}</dd>')
                parts += [f"<dd>{part}</dd>" for part in _unread_paragraphs(answer.problems)]
        parts.append("</dl></section>")
    if result.labels:
        parts.append('<section aria-labelledby="labels"><h2 id="labels">Labels</h2><ul class="bars">')
        for label in result.labels:
            percent = 100 * label.probability
            parts.append(
                f'<li class="score"><span class="label">{_esc(label.label)}</span>'
                f'<span class="bar" role="img" aria-label="{percent:.1f} percent">'
                f'<span class="fill" style="width:{percent:.2f}%"></span></span>'
                f'<span class="value">{percent:.1f}%</span></li>'
            )
        parts.append("</ul></section>")
    if result.next_action is not None:
        parts += ['<section aria-labelledby="next"><h2 id="next">Next action</h2>',
                  f'<p class="answer">{_esc(result.next_action)}</p></section>']  # fmt: skip
    return parts


def _unread_paragraphs(problems: Sequence[str]) -> list[str]:
    """What of an answer did not read as times (its raw text is shown above it)."""
    return [f'<p class="warnings">Not read as times: {_esc(problem)}</p>' for problem in problems]


def _bands(result: VideoResult) -> tuple[str, list[TimedText]]:
    if result.segments:
        return "Segments", result.segments
    if result.events:
        return "Events", result.events
    spans = [TimedText(s.start, s.end, f"{a.question}: {s.text}" if s.text else a.question)
             for a in result.answers for s in a.spans or ()]  # fmt: skip
    if spans:
        return "When", sorted(spans, key=lambda span: (span.start, -span.end))
    if result.timeline:
        return "Timeline", result.timeline
    return "", []


def _no_picture(result: VideoResult) -> str:
    if result.preview is None:
        return "no picture: made without thumbnails"
    return "no picture: " + ("frame not decoded in this run" if result.preview.missing_reason else "no frame decoded")


def _overlaps(span: tuple[float, float], damaged: Sequence[tuple[float, float]]) -> bool:
    return any(start < span[1] and end > span[0] for start, end in damaged)


def _timeline(result: VideoResult, context: ReportContext) -> list[str]:
    """The track across the page (a band per span, damaged parts marked) and a card per span."""
    heading, spans = _bands(result)
    preview = result.preview
    thumbnails = preview.thumbnails if preview is not None else []
    damaged = preview.damaged if preview is not None else []
    origin = result.start  # a clip's track runs from its start
    total = max(result.end, *(s.end for s in spans), origin + 1e-9)
    scaled = total - origin
    parts = [f'<section aria-labelledby="timeline"><h2 id="timeline">{heading or "Frames"}</h2>']
    track = []
    for number, span in enumerate(spans, start=1):
        left, width = 100 * (span.start - origin) / scaled, 100 * (span.end - span.start) / scaled
        track.append(
            f'<a class="span" href="#band-{number}" style="left:{left:.3f}%;width:{width:.3f}%" '
            f'title="{_esc(clock(span.start))}&ndash;{_esc(clock(span.end))}: {_esc(span.text)}" '
            f'aria-label="{_esc(clock(span.start))} to {_esc(clock(span.end))}"></a>'
        )
    track += _damage_marks(damaged, origin, scaled)
    if track:
        parts += ['<div class="track" role="group" aria-label="timeline of the video">', *track, "</div>",
                  _scale(origin, total)]  # fmt: skip
    parts.append('<ol class="bands">')
    if spans:
        for number, span in enumerate(spans, start=1):
            picture = picture_for(thumbnails, span.start, span.end)
            hurt = _overlaps((span.start, span.end), damaged)
            image = (_img(picture, f"Frame at {clock(picture.time)}: {span.text}") if picture is not None
                     else f'<div class="nopicture">{_esc(_no_picture(result))}</div>')  # fmt: skip
            parts.append(
                f'<li class="band{" damaged" if hurt else ""}" id="band-{number}" data-start="{span.start:.3f}" '
                f'data-end="{span.end:.3f}">{image}<div class="when">{_time_link(span.start, context)} &ndash; '
                f"{_time_link(span.end, context)}"
                f"{' <span class=badge>damaged</span>' if hurt else ''}</div><p>{_esc(span.text)}</p></li>"
            )
    else:  # no segments: a strip of frames over the whole video
        for number, picture in enumerate(thumbnails, start=1):
            parts.append(
                f'<li class="band frame" id="frame-{number}" data-start="{picture.target:.3f}">'
                f"{_img(picture, f'Frame at {clock(picture.time)}')}"
                f'<div class="when">{_time_link(picture.time, context)}</div></li>'
            )
    parts.append("</ol>")
    parts += _pictures_note(result)
    parts.append("</section>")
    return parts


def _damage_marks(damaged: Sequence[tuple[float, float]], origin: float, scaled: float) -> list[str]:
    """The parts of the track that could not be decoded, hatched."""
    marks = []
    for start, end in damaged:
        left, width = 100 * (max(start, origin) - origin) / scaled, 100 * (end - max(start, origin)) / scaled
        title = f"could not be decoded: {_esc(clock(start))}&ndash;{_esc(clock(end))}"
        marks.append(f'<span class="damage" style="left:{left:.3f}%;width:{width:.3f}%" title="{title}"></span>')
    return marks


def _scale(origin: float, total: float) -> str:
    ends = f"<span>{_esc(clock(origin))}</span><span>{_esc(clock(total))}</span>"
    return f'<div class="scale" aria-hidden="true">{ends}</div>'


def _pictures_note(result: VideoResult) -> list[str]:
    preview = result.preview
    if preview is None:
        return ['<p class="muted">No pictures: this result was made without thumbnails.</p>']
    if preview.missing_reason:
        return [f'<p class="muted missing">Pictures are missing: {_esc(preview.missing_reason)}.</p>']
    return []


# The score curve's drawing units: the SVG is stretched to the track's width (preserveAspectRatio
# none), so x runs over the same span of the video as the track's percentages, y from 1 (top) to 0.
CURVE_WIDTH, CURVE_HEIGHT = 1000.0, 100.0


def moment_picture(thumbnails: Sequence[Thumbnail], found: Found, moment: Moment) -> Thumbnail | None:
    """A moment's picture: the one kept in its best window (where the query fits best; the
    collector keeps one per window), else the one nearest the moment's middle."""
    windows = [window for window in found.curve if moment.start <= window[0] < moment.end]
    best = max(windows, key=lambda window: window[2], default=None)  # the earliest on a tie
    picture = picture_for(thumbnails, best[0], best[1]) if best is not None else None
    return picture or picture_for(thumbnails, moment.start, moment.end)


def _curve(found: Found, origin: float, scaled: float, query: int) -> str:
    """The score of each window as inline SVG (markup, not a loaded resource: the CSP allows it
    without a source; no script): the moments shaded, the threshold dashed, a point per window at
    its middle, and a hover title per window."""

    def x(seconds: float) -> float:
        return CURVE_WIDTH * (seconds - origin) / scaled

    def y(score: float) -> float:
        return CURVE_HEIGHT * (1 - min(1.0, max(0.0, score)))

    shapes = [f'<rect class="hit" x="{x(m.start):.2f}" y="0" width="{x(m.end) - x(m.start):.2f}" '
              f'height="{CURVE_HEIGHT:g}"/>' for m in found.moments]  # fmt: skip
    if found.threshold is not None:
        level = y(found.threshold)
        shapes.append(f'<line class="threshold" x1="0" x2="{CURVE_WIDTH:g}" y1="{level:.2f}" y2="{level:.2f}"/>')
    points = " ".join(f"{x((start + end) / 2):.2f},{y(score):.2f}" for start, end, score in found.curve)
    shapes.append(f'<polyline class="line" points="{points}"/>')
    for start, end, score in found.curve:
        shapes.append(
            f'<rect class="window" x="{x(start):.2f}" y="0" width="{x(end) - x(start):.2f}" height="{CURVE_HEIGHT:g}">'
            f"<title>{_esc(clock(start))}&ndash;{_esc(clock(end))}: {score:.2f}</title></rect>"
        )
    label = f"score of each window for query {query}, from 0 (bottom) to 1 (top)"
    return (f'<svg class="curve" viewBox="0 0 {CURVE_WIDTH:g} {CURVE_HEIGHT:g}" preserveAspectRatio="none" '
            f'role="img" aria-label="{_esc(label)}">{"".join(shapes)}</svg>')  # fmt: skip


def _found_section(number: int, found: Found, result: VideoResult, context: ReportContext) -> list[str]:
    """One query: what was found, the track with its moments, the curve, and a card per moment, best first."""
    preview = result.preview
    thumbnails = preview.thumbnails if preview is not None else []
    damaged = preview.damaged if preview is not None else []
    origin = result.start
    total = max(result.end, *(end for _, end, _ in found.curve), origin + 1e-9)
    scaled = total - origin
    anchor = f"query-{number}"
    at_least = f" at least {found.threshold:g}" if found.threshold is not None else ""
    parts = [f'<section class="query" aria-labelledby="{anchor}">',
             f'<h2 id="{anchor}"><span class="muted">Query:</span> {_esc(found.query)}</h2>']  # fmt: skip
    if found.moments:
        parts.append(f'<p class="answer">{counted(len(found.moments), "moment")} scoring{at_least}, best first</p>')
    elif found.curve:
        start, end, score = max(found.curve, key=lambda window: window[2])
        parts.append(f'<p class="answer">No window scored{at_least or " enough"}: the best was '
                     f"{_time_link(start, context)} &ndash; {_time_link(end, context)} ({score:.2f}). "
                     "A lower --threshold shows more.</p>")  # fmt: skip
    else:
        parts.append('<p class="answer">No window was read.</p>')
    track = []
    for rank, moment in enumerate(found.moments, start=1):
        left, width = 100 * (moment.start - origin) / scaled, 100 * (moment.end - moment.start) / scaled
        when = f"{_esc(clock(moment.start))}&ndash;{_esc(clock(moment.end))}"
        track.append(
            f'<a class="moment" href="#{anchor}-moment-{rank}" style="left:{left:.3f}%;width:{width:.3f}%" '
            f'title="{rank}: {when}, score {moment.score:.2f}" '
            f'aria-label="moment {rank}: {_esc(clock(moment.start))} to {_esc(clock(moment.end))}"></a>'
        )
    track += _damage_marks(damaged, origin, scaled)
    parts += [f'<div class="track" role="group" aria-label="moments of query {number} in the video">', *track,
              "</div>"]  # fmt: skip
    if found.curve:
        parts.append(_curve(found, origin, scaled, number))
    parts.append(_scale(origin, total))
    threshold = f"; dashed: the threshold, {found.threshold:g}" if found.threshold is not None else ""
    parts.append(f'<p class="muted legend">The curve: each window\'s score, 0 at the bottom, 1 at the top{threshold}; '
                 "shaded: the moments.</p>")  # fmt: skip
    parts.append('<ol class="bands moments">')
    for rank, moment in enumerate(found.moments, start=1):
        picture = moment_picture(thumbnails, found, moment)
        image = (_img(picture, f"Frame at {clock(picture.time)}: {found.query}") if picture is not None
                 else f'<div class="nopicture">{_esc(_no_picture(result))}</div>')  # fmt: skip
        parts.append(
            f'<li class="band moment" id="{anchor}-moment-{rank}" data-start="{moment.start:.3f}" '
            f'data-end="{moment.end:.3f}" data-score="{moment.score:.4f}">{image}<div class="when">{rank}. '
            f"{_time_link(moment.start, context)} &ndash; {_time_link(moment.end, context)}</div>"
            f'<p class="score">score {moment.score:.2f}</p></li>'
        )
    parts += ["</ol>", "</section>"]
    return parts


def _problems(result: VideoResult, context: ReportContext) -> list[str]:
    parts = []
    damaged = result.preview.damaged if result.preview is not None else []
    if result.warnings or damaged:
        parts.append('<section aria-labelledby="warnings"><h2 id="warnings">Warnings</h2><ul class="warnings">')
        parts += [f"<li>{_esc(warning)}</li>" for warning in result.warnings]
        for start, end in damaged:
            where = f"{_time_link(start, context)} &ndash; {_time_link(end, context)}"
            parts.append(f"<li>could not be decoded: {where}</li>")
        parts.append("</ul></section>")
    if result.notes:
        parts.append('<section aria-labelledby="notes"><h2 id="notes">Notes</h2><ul>')
        parts += [f"<li>{_esc(note)}</li>" for note in result.notes]
        parts.append("</ul></section>")
    return parts


def _settings(result: VideoResult, context: ReportContext) -> list[str]:
    rows = [("file", shown(result.path)), ("frames read", f"{result.frames} ({clock(result.first_frame)} to "
                                                    f"{clock(result.last_frame)})")]  # fmt: skip
    for name, value in context.settings.items():
        if isinstance(value, dict):
            rows += [(f"{name} {key}", item) for key, item in value.items() if item not in (None, [], {})]
        elif value not in (None, [], {}):
            rows.append((name, value))
    parts = ['<section aria-labelledby="settings"><h2 id="settings">Settings</h2><dl class="settings">']
    for name, value in rows:
        text = "; ".join(map(str, value)) if isinstance(value, list) else value
        parts.append(f"<dt>{_esc(name)}</dt><dd>{_esc(text)}</dd>")
    parts.append("</dl></section>")
    return parts


def _video(path: str, name: str, context: ReportContext) -> str:
    return f'<a href="{_esc(context.video_href)}">{_name(name)}</a>' if context.video_href else _name(path)


def to_html(result: VideoResult, context: ReportContext | None = None) -> str:
    """One video's report: name, duration, model and settings, the answer, the timeline with a
    picture per band, label scores as bars, warnings where they are on the timeline. find: a
    section per query, its moments on the track, its score curve, and a picture per moment."""
    context = context or ReportContext()
    name = PurePosixPath(result.path.replace("\\", "/")).name or result.path
    model = context.settings.get("model")
    facts = [result.task, f"duration {clock(result.duration)}", counted(result.frames, "frame")]
    if model:
        facts.append(f"model {model}")
    if result.task == "find":
        facts.insert(1, counted(len(result.found), "query"))
        found = [part for number, each in enumerate(result.found, start=1)
                 for part in _found_section(number, each, result, context)]  # fmt: skip
        answer = [*found, *_pictures_note(result)]
    else:
        answer = [*_summary(result, context), *_timeline(result, context)]
    body = [
        f"<header><h1>{_name(name)}</h1>",
        f'<p class="meta">{" · ".join(_esc(fact) for fact in facts)}</p>',
        f'<p class="meta">Video: {_video(result.path, name, context)}</p></header>',
        "<main>",
        *answer,
        *_problems(result, context),
        *_settings(result, context),
        "</main>",
    ]
    return _page(f"{shown(name)}: malmm {result.task}", "\n".join(body))


@dataclass(frozen=True)
class IndexRow:
    """One video of a folder's index: its report (relative URL; None when there is none)."""

    name: str
    status: str
    detail: str = ""
    report: str | None = None
    duration: float | None = None
    text: str = ""
    thumbnail: Thumbnail | None = None


def headline(result: VideoResult) -> str:
    """What the index says of a video: its caption, first answer, top label or next action; find:
    each query's best moment."""
    if result.task == "find":
        return "; ".join(f"{found.query}: {_best(found)}" for found in result.found)
    if result.caption:
        return result.caption
    if result.answers:
        return result.answers[0].answer
    if result.labels:
        return f"{result.labels[0].label} ({100 * result.labels[0].probability:.1f}%)"
    return result.next_action or ""


def _best(found: Found) -> str:
    if not found.moments:
        return "no moment"
    best = found.moments[0]
    return f"{clock(best.start)}\u2013{clock(best.end)} ({best.score:.2f})"


def poster(result: VideoResult) -> Thumbnail | None:
    """The picture standing for the whole video: the one nearest its middle; find: the first
    query's best moment's, where it has one."""
    thumbnails = result.preview.thumbnails if result.preview is not None else []
    moments = [(found, found.moments[0]) for found in result.found if found.moments]
    if moments and (picture := moment_picture(thumbnails, *moments[0])) is not None:
        return picture
    return min(thumbnails, key=lambda t: abs(t.target - result.duration / 2), default=None)


def summary(result: VideoResult) -> dict[str, Any]:
    """What the index shows of a video, as JSON (kept in its record, so a rerun that skips the
    video still lists it)."""
    picture = poster(result)
    data: dict[str, Any] = {"duration": result.duration, "text": headline(result),
                            "status": "partial" if result.warnings else "done"}  # fmt: skip
    if picture is not None:
        jpeg = base64.b64encode(picture.jpeg).decode("ascii")
        data["thumbnail"] = {"target": picture.target, "time": picture.time, "width": picture.width,
                             "height": picture.height, "jpeg": jpeg}  # fmt: skip
    return data


def index_row(name: str, status: str, detail: str, report: str | None, data: dict[str, Any] | None) -> IndexRow:
    """A row from a video's outcome and its `summary` (None: there is none, the video failed)."""
    data = data or {}
    picture = data.get("thumbnail")
    thumbnail = None
    if isinstance(picture, dict):
        try:
            thumbnail = Thumbnail(float(picture["target"]), float(picture["time"]), base64.b64decode(picture["jpeg"]),
                                  int(picture["width"]), int(picture["height"]))  # fmt: skip
        except (KeyError, TypeError, ValueError):
            thumbnail = None
    duration = data.get("duration")
    return IndexRow(name, status, detail, report, float(duration) if isinstance(duration, int | float) else None,
                    str(data.get("text", "")), thumbnail)  # fmt: skip


def to_index(rows: Sequence[IndexRow], title: str) -> str:
    """A folder's index page: a table of its videos, each linking to its report."""
    body = [f"<header><h1>{_esc(title)}</h1>",
            f'<p class="meta">{counted(len(rows), "video")}</p></header>', "<main>",
            '<table class="videos"><caption class="muted">Videos and their reports</caption>',
            '<thead><tr><th scope="col">Picture</th><th scope="col">Video</th><th scope="col">Duration</th>'
            '<th scope="col">Result</th><th scope="col">Status</th></tr></thead><tbody>']  # fmt: skip
    for row in rows:
        picture = _img(row.thumbnail, f"{shown(row.name)}: {row.text}") if row.thumbnail is not None else ""
        name = f'<a href="{_esc(row.report)}">{_name(row.name)}</a>' if row.report else _name(row.name)
        duration = clock(row.duration) if row.duration is not None else ""
        detail = f'<br><span class="muted">{_name(row.detail)}</span>' if row.detail else ""
        body.append(
            f'<tr class="video"><td>{picture}</td><th scope="row">{name}</th><td>{_esc(duration)}</td>'
            f'<td><p>{_esc(row.text)}</p></td><td><span class="status-{_esc(row.status)}">{_esc(row.status)}</span>'
            f"{detail}</td></tr>"
        )
    body += ["</tbody></table>", "</main>"]
    return _page(title, "\n".join(body))
