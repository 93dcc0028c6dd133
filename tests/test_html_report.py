"""The HTML report, rendered in a real headless Chromium: bands, pictures, no requests, escaping, layout."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from malmm_cli.output import html_report
from malmm_cli.reading.results import Preview, RankedLabel, Thumbnail, TimedText, VideoResult
from malmm_cli.reading.thumbnails import ThumbnailCollector, damaged_spans, shrink
from tests import media
from tests.browser import Browser, running_browser

INJECTION = '<script>document.title="pwned"</script><img src=x onerror="document.title=1">'
PAGE_FACTS = """(() => {
  const spans = Array.from(document.querySelectorAll('.track a.span'));
  const bands = Array.from(document.querySelectorAll('ol.bands > li.band'));
  return {
    title: document.title, scripts: document.scripts.length,
    spans: spans.map(s => { const r = s.getBoundingClientRect(); return [r.left, r.width]; }),
    bands: bands.map(b => [Number(b.dataset.start), Number(b.dataset.end), !!b.querySelector('img')]),
    alts: Array.from(document.images).map(i => i.alt),
    links: Array.from(document.querySelectorAll('a[href*="#t="]')).map(a => a.getAttribute('href')),
    text: document.body.innerText,
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    headings: Array.from(document.querySelectorAll('h1, h2')).map(h => h.textContent),
  };
})()"""
IMAGES_DECODE = "Promise.all(Array.from(document.images).map(i => i.decode().then(() => i.naturalWidth))).then(w => w)"


@pytest.fixture(scope="module")
def browser():
    yield from running_browser("render the reports")


def _picture(target: float, shade: int) -> Thumbnail:
    image = np.full((90, 160, 3), shade, np.uint8)
    picture = shrink(image)
    return Thumbnail(target, target + 0.01, picture.jpeg, picture.width, picture.height)


def _result(**changes: object) -> VideoResult:
    segments = [TimedText(0, 60, "a man cracks eggs"), TimedText(60, 120, INJECTION), TimedText(120, 150, "he eats")]
    result = VideoResult(
        "clip.mp4", "caption", 150.0, 30, 0.0, 149.0, caption=f"breakfast {INJECTION}", segments=segments,
        warnings=["3 of 30 sampled frames could not be decoded"],
        preview=Preview([_picture(30, 40), _picture(90, 120), _picture(135, 200)], [(100.0, 110.0)]),
    )  # fmt: skip
    for name, value in changes.items():
        setattr(result, name, value)
    return result


def _write(tmp_path: Path, text: str, name: str = "clip.caption.html") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_collector_keeps_the_frame_planned_nearest_each_span_middle() -> None:
    from malmm_cli.reading.pipeline import Grid

    planned = [0.5 * i for i in range(20)]  # 0 .. 9.5 s
    collector = ThumbnailCollector([Grid(4.0, 10.0)], planned, 10.0)
    for target in planned:
        collector.offer(target, target + 0.02, np.full((48, 400, 3), int(target * 20), np.uint8))
    preview = collector.preview(missing=[])
    assert [t.target for t in preview.thumbnails] == [2.0, 6.0, 9.0]  # middles 2, 6 and 9 (the last span ends at 10)
    assert preview.thumbnails[0].width == 192 and preview.thumbnails[0].height == 23  # shrunk, aspect kept
    decoded = np.asarray(Image.open(io.BytesIO(preview.thumbnails[1].jpeg)))
    assert abs(int(decoded.mean()) - 120) <= 2  # the frame of 6.0 s, not another one
    assert preview.missing_reason is None and preview.damaged == []


def test_pictures_of_cached_frames_that_cannot_be_decoded_are_counted_in_words() -> None:
    """Frames chosen among those replayed from the feature cache are decoded at the end; those that
    cannot be are said, with a count that agrees with its words."""
    from malmm_cli.media.plans import VideoError
    from malmm_cli.reading.pipeline import Grid

    def fails(_targets: list[float]):
        raise VideoError("the file is gone")

    def reason(frames: int) -> str | None:
        planned = [float(i) for i in range(frames)]
        collector = ThumbnailCollector([Grid(1.0, float(frames))], planned, float(frames))
        for target in planned:
            collector.replayed_frame(target, target)
        return collector.preview(missing=[], decode=fails).missing_reason

    assert reason(1).startswith("1 picture is missing: ")
    assert reason(2).startswith("2 pictures are missing: ")


def test_damaged_spans_run_from_the_first_missing_frame_to_the_next_read() -> None:
    planned = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert damaged_spans(planned, [1.0, 2.0, 5.0], 6.0) == [(1.0, 3.0), (5.0, 6.0)]
    assert damaged_spans(planned, [], 6.0) == []
    # decoding stopped at 3.6 s: the band starts there, where the report's warning says, not at 4.0
    assert damaged_spans(planned, [1.0, 4.0, 5.0], 6.0, ended_at=3.6) == [(1.0, 2.0), (3.6, 6.0)]


def test_every_text_is_escaped_and_nothing_is_loaded_from_elsewhere() -> None:
    page = html_report.to_html(_result(), html_report.ReportContext({"model": "m<b>"}, "clip%20one.mp4"))
    assert "<script" not in page and "&lt;script&gt;" in page and "m&lt;b&gt;" in page
    assert 'http-equiv="Content-Security-Policy"' in page and "default-src 'none'" in page
    assert "http://" not in page and "https://" not in page
    assert 'href="clip%20one.mp4#t=60"' in page  # the time, as a media fragment


def test_report_in_the_browser_bands_pictures_escaping_requests(browser: Browser, tmp_path: Path) -> None:
    path = _write(tmp_path, html_report.to_html(_result(), html_report.ReportContext({}, "clip.mp4")))
    page = browser.open(path)
    facts = page.evaluate(PAGE_FACTS)
    assert [band[:2] for band in facts["bands"]] == [[0, 60], [60, 120], [120, 150]]  # one per segment, in order
    lefts = [left for left, _ in facts["spans"]]
    assert len(lefts) == 3 and lefts == sorted(lefts) and all(width > 0 for _, width in facts["spans"])
    assert all(has_picture for *_, has_picture in facts["bands"])
    assert len(page.evaluate(IMAGES_DECODE)) == 3 and all(w > 0 for w in page.evaluate(IMAGES_DECODE))
    assert facts["title"] == "clip.mp4: malmm caption" and facts["scripts"] == 0  # the caption's script never ran
    assert INJECTION in facts["text"]  # shown as text, whole
    assert any(INJECTION in alt for alt in facts["alts"])  # alt text from the caption
    assert facts["links"][:2] == ["clip.mp4#t=0", "clip.mp4#t=60"]
    assert "could not be decoded: 1:40" in facts["text"]  # the damaged part, placed on the timeline
    assert facts["headings"][:3] == ["clip.mp4", "Caption", "Segments"]
    outside = [url for url in page.requests if not url.startswith("data:") and url != path.as_uri()]
    assert outside == [] and path.as_uri() in page.requests


def test_the_request_check_catches_a_page_that_loads_something(browser: Browser, tmp_path: Path) -> None:
    """The check above must be able to fail: the same report with a remote picture and stylesheet."""
    page = html_report.to_html(_result())
    remote = '<img src="http://127.0.0.1:9/x.png" alt=""><link rel="stylesheet" href="https://example.invalid/a.css">'
    path = _write(tmp_path, page.replace("<main>", "<main>" + remote), "bad.html")
    requests = browser.open(path).requests
    assert {"http://127.0.0.1:9/x.png", "https://example.invalid/a.css"} <= set(requests)


def test_labels_as_bars_and_plain_times_without_the_video(browser: Browser, tmp_path: Path) -> None:
    labels = [RankedLabel("cooking", -0.5, 0.6), RankedLabel("eating", -1.2, 0.3), RankedLabel("dancing", -3, 0.1)]
    result = VideoResult("far/away/v.mp4", "predict", 90.0, 10, 0.0, 89.0, labels=labels,
                         timeline=[TimedText(0, 60, "cooking"), TimedText(60, 90, "eating")],
                         preview=Preview([_picture(30, 90)]))  # fmt: skip
    page = browser.open(_write(tmp_path, html_report.to_html(result)))
    bars = page.evaluate(
        "Array.from(document.querySelectorAll('.bars li')).map(li => [li.querySelector('.label').textContent,"
        " li.querySelector('.fill').getBoundingClientRect().width])"
    )
    assert [name for name, _ in bars] == ["cooking", "eating", "dancing"]
    widths = [width for _, width in bars]
    assert widths == sorted(widths, reverse=True) and widths[0] == pytest.approx(2 * widths[1], rel=0.05)
    facts = page.evaluate(PAGE_FACTS)
    assert facts["links"] == [] and "0:00" in facts["text"]  # the video is not beside the report: plain times
    assert [band[2] for band in facts["bands"]] == [True, False]  # no picture planned in the second interval
    assert "no picture" in facts["text"]


@pytest.mark.parametrize(("width", "columns"), [(1000, 4), (390, 2)])
def test_screenshot_layout_at_a_fixed_viewport(browser: Browser, tmp_path: Path, width: int, columns: int) -> None:
    """Structure, not pixels: the cards' grid, nothing wider than the screen, the track painted where it is."""
    path = _write(tmp_path, html_report.to_html(_result()))
    page = browser.open(path, width=width, height=800)
    shot = Image.open(io.BytesIO(page.screenshot())).convert("RGB")
    assert shot.size == (width, 800)
    facts = page.evaluate(PAGE_FACTS)
    assert facts["overflow"] <= 0  # readable on a phone: no sideways scrolling
    rows = page.evaluate(
        "Array.from(document.querySelectorAll('ol.bands > li')).map(li => Math.round(li.getBoundingClientRect().top))"
    )
    assert len(set(rows)) == -(-3 // columns)  # as many rows as the cards need at this width
    top = page.evaluate("document.querySelector('.track').getBoundingClientRect().top + 10")
    for left, span_width in facts["spans"]:
        r, _g, b = shot.getpixel((int(left + span_width / 2), int(top)))
        assert b > r + 40 and b > 100  # a blue band where the DOM says the band is
    printed = browser.open(path, width=width, height=800, media="print").evaluate(PAGE_FACTS)
    assert printed["overflow"] <= 0 and len(printed["bands"]) == 3


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report-clips")
    media.make_video(folder / "five.mp4", seconds=5, fps=10, size=(96, 64))
    media.make_truncated(media.make_video(folder / "whole.mp4", seconds=6, fps=10), folder / "cut.mp4", 0.5, True)
    (folder / "whole.mp4").unlink()
    return folder


def test_caption_folder_reports_and_index(run, browser: Browser, clips: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ("caption", clips, "--fps", "2", "--segment", "2s", "--format", "html", "--format", "json",
            "--output-dir", out, "--no-cache")  # fmt: skip
    result = run(*args)
    assert result.exit_code == 1, result.stderr  # cut.mp4 is only partly readable
    data = json.loads((out / "five.caption.json").read_text())
    page = browser.open(out / "five.caption.html")
    facts = page.evaluate(PAGE_FACTS)
    spans = [[s["start"], s["end"]] for s in data["segments"]]
    assert [band[:2] for band in facts["bands"]] == spans and all(b[2] for b in facts["bands"])
    assert all(width > 0 for width in page.evaluate(IMAGES_DECODE))
    assert facts["links"] == []  # the videos are in another folder
    cut = browser.open(out / "cut.caption.html").evaluate(PAGE_FACTS)
    assert "decoding stopped at" in cut["text"] and "could not be decoded" in cut["text"]
    assert browser.open(out / "cut.caption.html").evaluate(
        "document.querySelectorAll('.track .damage').length"
    ) >= 1  # fmt: skip

    def index_rows() -> list:
        index = browser.open(out / "index.html")
        assert all(width > 0 for width in index.evaluate(IMAGES_DECODE))
        return index.evaluate(
            "Array.from(document.querySelectorAll('tr.video')).map(tr => [tr.querySelector('th').textContent,"
            " tr.querySelector('a') && tr.querySelector('a').getAttribute('href'), !!tr.querySelector('img'),"
            " tr.querySelector('[class^=status]').textContent])"
        )

    first = index_rows()
    assert first == [["cut", "cut.caption.html", True, "partial"], ["five", "five.caption.html", True, "done"]]
    again = run(*args)  # nothing to redo: the index still lists both, from their records
    assert "skipped" in again.stderr and "Loading" not in again.stderr
    assert index_rows() == first


def _report_twice(run, video: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The same report made twice with the feature cache on: the second replays every feature."""
    for attempt in ("first", "second"):
        result = run("caption", video, "--fps", "2", "--segment", "2s", "-f", "html", "-o", tmp_path / attempt)
        assert result.exit_code == 0, result.stderr
    assert "(vision features from the cache)" in result.stderr  # the second read decoded nothing
    return tmp_path / "first" / f"{video.stem}.caption.html", tmp_path / "second" / f"{video.stem}.caption.html"


def test_features_from_the_cache_still_give_every_picture(
    run, clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replayed features mean no frame was decoded; the few frames the pictures need are decoded
    for them, so both reports show the same pictures."""
    monkeypatch.setenv("MALMM_CACHE_DIR", str(tmp_path / "cache"))  # the first read decodes, whatever ran before
    first, second = _report_twice(run, clips / "five.mp4", tmp_path)

    def pictures(path: Path) -> list[str]:
        return re.findall(r'src="(data:image/jpeg;base64,[^"]+)"', path.read_text())

    assert len(pictures(first)) >= 3 and pictures(second) == pictures(first)
    assert "feature cache" not in second.read_text()


def test_features_from_the_cache_show_their_pictures(
    run, browser: Browser, clips: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MALMM_CACHE_DIR", str(tmp_path / "cache"))
    first, second = _report_twice(run, clips / "five.mp4", tmp_path)
    first_facts, second_facts = (browser.open(path).evaluate(PAGE_FACTS) for path in (first, second))
    assert all(band[2] for band in first_facts["bands"]) and "Pictures are missing" not in first_facts["text"]
    assert second_facts["bands"] == first_facts["bands"] and "Pictures are missing" not in second_facts["text"]


def test_html_on_stdout_links_times_to_a_video_in_the_current_folder(run, clips: Path, monkeypatch) -> None:
    monkeypatch.chdir(clips)
    result = run("predict", "five.mp4", "--fps", "2", "--every", "2s", "--format", "html")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("<!doctype html>") and 'href="five.mp4#t=2"' in result.stdout
    several = run("caption", clips, "--frames", "2", "--format", "html")
    assert several.exit_code == 2 and "--output-dir" in several.stderr
