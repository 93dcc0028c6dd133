"""`malmm find -f html`: a section per query with its moments on the track, the score curve as
inline SVG, a picture per moment, rendered in a real headless Chromium (tests/browser.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from malmm_cli.output import html_report
from malmm_cli.reading.find import FindRule
from malmm_cli.reading.results import Found, Moment, Preview, Thumbnail, VideoResult
from malmm_cli.reading.thumbnails import shrink
from tests.browser import Browser, running_browser
from tests.media import make_scenes

INJECTION = '<script>document.title="pwned"</script><img src=x onerror="document.title=1">'
SMALL = ["--device", "cpu", "--fps", "2", "--window", "2", "--memory-bank-length", "2"]
SHADES = {1.0: 40, 3.0: 120, 5.0: 200}  # a picture per window middle, each its own grey
FIND_FACTS = """(() => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.width, r.top, r.height]; };
  return Array.from(document.querySelectorAll('section.query')).map(s => {
    const line = s.querySelector('svg.curve polyline.line');
    const level = s.querySelector('svg.curve line.threshold');
    return {
      heading: s.querySelector('h2').textContent,
      track: box(s.querySelector('.track')),
      marks: Array.from(s.querySelectorAll('.track a.moment')).map(box),
      hits: Array.from(s.querySelectorAll('svg.curve rect.hit')).map(box),
      windows: Array.from(s.querySelectorAll('svg.curve rect.window')).map(box),
      points: line ? Array.from({length: line.points.numberOfItems}, (_, i) => {
        const p = line.points.getItem(i); return [p.x, p.y]; }) : null,
      curve: box(s.querySelector('svg.curve')),
      threshold: level ? level.y1.baseVal.value : null,
      cards: Array.from(s.querySelectorAll('ol.moments > li.moment')).map(li => [Number(li.dataset.start),
        Number(li.dataset.end), Number(li.dataset.score), li.querySelector('img') && li.querySelector('img').alt]),
      links: Array.from(s.querySelectorAll('a[href*="#t="]')).map(a => a.getAttribute('href')),
      text: s.innerText,
    };
  });
})()"""
IMAGES_DECODE = "Promise.all(Array.from(document.images).map(i => i.decode().then(() => i.naturalWidth))).then(w => w)"


@pytest.fixture(scope="module")
def browser():
    yield from running_browser("render the find reports")


def _picture(target: float) -> Thumbnail:
    picture = shrink(np.full((90, 160, 3), SHADES[target], np.uint8))
    return Thumbnail(target, target + 0.01, picture.jpeg, picture.width, picture.height)


def found_result() -> VideoResult:
    """6 s in three 2 s windows: "red" found twice (the 2-4 s window best), the second query nowhere."""
    curve = [(0.0, 2.0, 0.2), (2.0, 4.0, 0.8), (4.0, 6.0, 0.6)]
    return VideoResult(
        "v.mp4", "find", 6.0, 12, 0.0, 5.5,
        found=[Found("red", [Moment(2.0, 4.0, 0.8), Moment(4.0, 6.0, 0.6)], curve, 0.5),
               Found(INJECTION, [], [(s, e, 0.1 + 0.05 * i) for i, (s, e, _) in enumerate(curve)], 0.5)],
        preview=Preview([_picture(t) for t in SHADES]),
    )  # fmt: skip


def _open(browser: Browser, tmp_path: Path, result: VideoResult, **where: int):
    path = tmp_path / "v.find.html"
    path.write_text(html_report.to_html(result, html_report.ReportContext({}, "v.mp4")), encoding="utf-8")
    return path, browser.open(path, **where)


def test_moments_marked_curve_drawn_pictures_and_nothing_loaded(browser: Browser, tmp_path: Path) -> None:
    path, page = _open(browser, tmp_path, found_result())
    red, other = page.evaluate(FIND_FACTS)
    assert page.evaluate("document.title") == "v.mp4: malmm find" and page.evaluate("document.scripts.length") == 0
    # the moments, best first, each with the picture of its best window (3.01 s: the 2-4 s window's middle)
    assert red["cards"] == [[2, 4, 0.8, "Frame at 0:03: red"], [4, 6, 0.6, "Frame at 0:05: red"]]
    assert red["links"][:2] == ["v.mp4#t=2", "v.mp4#t=4"]
    # marked on the track where they are: a third and two thirds of the way along
    left, width = red["track"][:2]
    assert [(round((x - left) / width, 2), round(w / width, 2)) for x, w, *_ in red["marks"]] == [
        (0.33, 0.33), (0.67, 0.33)
    ]  # fmt: skip
    # the curve under the track, as wide, a point per window at its middle, the threshold at 0.5
    assert red["curve"][0] == pytest.approx(left, abs=1) and red["curve"][1] == pytest.approx(width, abs=1)
    assert red["points"] == [
        [pytest.approx(1000 / 6, abs=0.01), 80],
        [500, 20],
        [pytest.approx(5000 / 6, abs=0.01), 40],
    ]
    assert len(red["windows"]) == 3 and red["threshold"] == 50
    for mark, hit in zip(red["marks"], red["hits"], strict=True):  # shaded on the curve where marked on the track
        assert hit[0] == pytest.approx(mark[0], abs=1.5) and hit[1] == pytest.approx(mark[1], abs=1.5)
    widths = page.evaluate(IMAGES_DECODE)
    assert len(widths) == 2 and all(w > 0 for w in widths)
    # a query is user text: shown whole, never run
    assert other["heading"] == f"Query: {INJECTION}" and other["cards"] == [] and other["marks"] == []
    assert "No window scored at least 0.5: the best was 0:04 \u2013 0:06 (0.20)" in other["text"]
    assert len(other["points"]) == 3
    outside = [url for url in page.requests if not url.startswith("data:") and url != path.as_uri()]
    assert outside == [] and path.as_uri() in page.requests


def test_the_curve_is_painted_where_the_dom_says(browser: Browser, tmp_path: Path) -> None:
    """Inline SVG needs no CSP source (it is markup, not a loaded resource): the line is on screen."""
    _, page = _open(browser, tmp_path, found_result(), width=1000, height=1200)
    shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("RGB")).astype(int)
    red = page.evaluate(FIND_FACTS)[0]
    left, width, top, height = red["curve"]
    for x, y in red["points"]:  # the curve passes through each window's point: a blue pixel near it
        px, py = round(left + width * x / 1000), round(top + height * y / 100)
        near = shot[py - 3 : py + 4, px - 3 : px + 4]
        assert ((near[..., 2] > near[..., 0] + 40) & (near[..., 2] > 100)).any(), (x, y)
    level = round(top + height / 2)  # the dashed threshold: red pixels across, at 0.5
    row = shot[level - 2 : level + 3, round(left) : round(left + width)]
    assert ((row[..., 0] > row[..., 2] + 60) & (row[..., 0] > 120)).any(axis=0).mean() > 0.3


def test_a_moment_shows_its_best_window_and_the_index_its_best_moment() -> None:
    result = found_result()
    thumbnails = result.preview.thumbnails
    joined = Found("red", [Moment(0.0, 4.0, 0.8)], [(0.0, 2.0, 0.55), (2.0, 4.0, 0.8), (4.0, 6.0, 0.1)])
    assert html_report.moment_picture(thumbnails, joined, joined.moments[0]).target == 3.0  # not 1.0 (its middle)
    data = html_report.summary(result)
    assert data["text"] == f"red: 0:02\u20130:04 (0.80); {INJECTION}: no moment"
    assert data["thumbnail"]["target"] == 3.0
    late = VideoResult(
        "v.mp4",
        "find",
        6.0,
        12,
        0.0,
        5.5,
        found=[Found("q", [], joined.curve), Found("red", [Moment(4.0, 6.0, 0.9)], joined.curve)],
        preview=result.preview,
    )
    assert html_report.summary(late)["thumbnail"]["target"] == 5.0  # its best moment's picture, not the middle's
    row = html_report.index_row("v", "done", "", "v.find.html", data)
    page = html_report.to_index([row], "malmm find: 1 video")
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_find_keeps_a_picture_per_window() -> None:
    """The moments are known only after reading: the collector keeps the picture of every window,
    and each moment's is picked from them."""
    from malmm_cli.reading.pipeline import find_readers, thumbnail_collector

    planned = [0.5 * i for i in range(12)]  # 2 frames/s over 6 s
    stream = SimpleNamespace(span=(0.0, 6.0), times=planned, duration=6.0)
    collector = thumbnail_collector(stream, find_readers(["red"], 2.0, FindRule()))
    for target in planned:
        collector.offer(target, target, np.full((32, 32, 3), 10 * int(target), np.uint8))
    kept = {t.target for t in collector.preview().thumbnails}
    assert {1.0, 3.0, 5.0} <= kept  # each window's middle frame


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("find-html")
    make_scenes(folder / "brg.mp4", ["blue", "red", "green"], seed=7)
    make_scenes(folder / "gr.mp4", ["green", "red"], seed=8)
    return folder


def test_find_writes_a_page_per_video_and_the_index(run, browser: Browser, scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    queries = tmp_path / "queries.txt"
    queries.write_text(f"red\n{INJECTION}\n", encoding="utf-8")
    result = run("find", scenes, "--query-file", queries, *SMALL, "--threshold", "0.3", "-f", "html", "-f", "json",
                 "-o", out, "--no-cache")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.html")) == ["brg.find.html", "gr.find.html", "index.html"]
    saved = json.loads((out / "brg.find.json").read_text())
    page = browser.open(out / "brg.find.html")
    sections = page.evaluate(FIND_FACTS)
    assert [s["heading"] for s in sections] == ["Query: red", f"Query: {INJECTION}"]
    assert page.evaluate("document.scripts.length") == 0
    for query, section in zip(saved, sections, strict=True):
        assert len(section["points"]) == len(query["curve"]) == 3 == len(section["windows"])
        assert [card[:2] for card in section["cards"]] == [[m["start"], m["end"]] for m in query["moments"]]
        assert len(section["marks"]) == len(query["moments"]) and all(card[3] for card in section["cards"])
    assert sum(len(s["cards"]) for s in sections) >= 1  # threshold 0.3: something is found
    assert all(width > 0 for width in page.evaluate(IMAGES_DECODE))
    assert [url for url in page.requests if not url.startswith(("data:", "file:"))] == []
    index = browser.open(out / "index.html")
    rows = index.evaluate(
        "Array.from(document.querySelectorAll('tr.video')).map(tr => [tr.querySelector('th').textContent,"
        " tr.querySelector('a').getAttribute('href'), tr.querySelector('td p').textContent])"
    )
    assert [row[:2] for row in rows] == [["brg", "brg.find.html"], ["gr", "gr.find.html"]]
    assert all(row[2].startswith("red: ") and f"; {INJECTION}: " in row[2] for row in rows)
    assert index.evaluate("document.scripts.length") == 0
