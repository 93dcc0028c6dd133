"""The page at `/` of `malmm serve`, driven in a real headless Chromium (tests/browser.py) against
the real server: it asks for the key, uploads a picked clip with progress, asks a question and
captions with segments, shows the answer and the timeline, seeks its player from a time, and
requests nothing but its own origin (and the blob: of the picked file)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")

from tests import media  # noqa: E402
from tests.browser import Browser, Page, running_browser  # noqa: E402
from tests.serving import KEY, Clips, Running, make_clips, serve_tiny, video  # noqa: E402

PAGE_FILES = ("index.html", "app.js", "style.css")
QUESTION = "what is the man doing?"


@pytest.fixture(scope="module")
def browser():
    yield from running_browser("drive the page")


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    return make_clips(tmp_path_factory.mktemp("page"))


@pytest.fixture(scope="module")
def served(tiny_llama_dir: Path, clips: Clips) -> Iterator[Running]:
    yield from serve_tiny(tiny_llama_dir, clips)


def wait(page: Page, expression: str, seconds: float = 120, errors: bool = False) -> object:
    """The expression's value once it is truthy (failing at once when the page says an error,
    unless `errors`)."""
    deadline = time.monotonic() + seconds
    while not (value := page.evaluate(expression)):
        error = page.evaluate("document.getElementById('error').textContent")
        assert errors or not error, f"the page says: {error}"
        assert time.monotonic() < deadline, f"never true: {expression}"
        time.sleep(0.1)
    return value


def submit(page: Page, field: str, value: str, form: str) -> None:
    """Type into a field (as a keyboard does) and press Enter to submit its form."""
    page.evaluate(f"document.getElementById({field!r}).value = ''; document.getElementById({field!r}).focus()")
    page.send("Input.insertText", text=value)
    assert page.evaluate("document.activeElement.form.id") == form
    for kind in ("keyDown", "keyUp"):
        page.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                  **({"text": "\r"} if kind == "keyDown" else {}))  # fmt: skip


def click(page: Page, selector: str) -> None:
    """A real mouse click in the middle of the element."""
    box = page.evaluate(
        f"(() => {{ const e = document.querySelector({selector!r}); e.scrollIntoView(); "
        "const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    for kind in ("mousePressed", "mouseReleased"):
        page.send("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)


def test_the_page_uploads_asks_captions_and_seeks(browser: Browser, served: Running, tmp_path: Path) -> None:
    clip = media.make_video(tmp_path / "clip.webm", seconds=3, fps=10, size=(64, 48), codec="vp9")
    page = browser.open(f"{served.url}/")
    wait(page, "!document.getElementById('key-section').hidden", errors=True)  # the server has a key: asked for
    submit(page, "key", KEY, "key-form")
    wait(page, "document.getElementById('key-section').hidden", errors=True)
    assert page.evaluate("document.getElementById('model').textContent").startswith("Model: ")
    assert page.evaluate("sessionStorage.getItem('malmm-key')") == KEY

    node = page.send("Runtime.evaluate", expression="document.getElementById('file')")["result"]["objectId"]
    page.send("DOM.setFileInputFiles", files=[str(clip)], objectId=node)
    said = wait(page, "(s => s.startsWith('Uploaded') && s)(document.getElementById('upload-status').textContent)")
    assert "clip.webm" in said and page.evaluate("document.getElementById('upload-progress').value") == 100
    (stored,) = httpx.get(f"{served.url}/v1/videos", headers={"Authorization": f"Bearer {KEY}"}).json()["data"]
    assert stored["filename"] == "clip.webm" and stored["bytes"] == clip.stat().st_size
    assert page.evaluate("document.getElementById('player').src").startswith("blob:")

    submit(page, "question", QUESTION, "ask-form")
    wait(page, "!document.getElementById('result').hidden && !document.getElementById('ask').disabled")
    expected = served.client().chat.completions.create(model="x", messages=video(stored["url"], QUESTION))
    assert page.evaluate("document.getElementById('answer').textContent") == expected.choices[0].message.content
    assert page.evaluate("document.getElementById('timeline').hidden") is True  # an answer has no segments

    submit(page, "segment", "1", "caption-form")
    bands_read = "document.querySelectorAll('#bands > li.band').length === 3"
    wait(page, f"{bands_read} && !document.getElementById('caption').disabled")
    caption = served.client().chat.completions.create(model="x", messages=video(stored["url"]),
                                                      extra_body={"segment": 1})  # fmt: skip
    record = caption.model_extra["malmm"]
    assert page.evaluate("document.getElementById('answer').textContent") == record["caption"]
    bands = page.evaluate(
        "[...document.querySelectorAll('#bands > li.band')].map(b => "
        "[b.querySelector('p').textContent, [...b.querySelectorAll('time')].map(t => t.textContent)])"
    )
    assert bands == [[s["text"], [f"0:0{int(s['start'])}", f"0:0{int(s['end'])}"]] for s in record["segments"]]
    spans = page.evaluate("[...document.querySelectorAll('#track a.span')].map(a => a.getBoundingClientRect().width)")
    assert len(spans) == 3 and all(width > 50 for width in spans)  # placed by the report's style, sized by the page
    pictures = wait(page, "(i => i.length === 3 && i.every(x => x.complete && x.naturalWidth > 0) && "
                          "i.map(x => x.src.slice(0, 16)))([...document.querySelectorAll('#bands img')])")  # fmt: skip
    assert pictures == ["data:image/jpeg;"] * 3  # drawn in the page from the local file

    click(page, "#bands > li.band:nth-child(3) button.seek")  # the third segment's start: 2 s
    assert abs(wait(page, "document.getElementById('player').currentTime || false", 10) - 2.0) < 0.01
    page.evaluate("document.querySelector('#bands > li.band:nth-child(2) button.seek').focus()")
    for kind in ("keyDown", "keyUp"):  # the keyboard seeks too
        page.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                  **({"text": "\r"} if kind == "keyDown" else {}))  # fmt: skip
    assert abs(wait(page, "(t => t < 1.5 && t)(document.getElementById('player').currentTime)", 10) - 1.0) < 0.01

    requests = page.requests_so_far()
    assert {f"{served.url}/v1/videos", f"{served.url}/v1/chat/completions", f"{served.url}/page/app.js"} <= set(
        requests
    )
    elsewhere = [url for url in requests if not url.startswith((served.url + "/", "blob:", "data:"))]
    assert elsewhere == [], elsewhere


def test_the_page_is_served_with_a_strict_policy(served: Running) -> None:
    """No key needed for the page; a policy that lets it load its own files only; nothing in them
    that names another origin or writes markup from data."""
    from malmm_cli.output.html_report import STYLE

    page = httpx.get(f"{served.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    for rule in ("default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'",
                 "media-src blob:", "img-src data: blob:", "frame-ancestors 'none'"):  # fmt: skip
        assert rule in policy
    assert "unsafe" not in policy and page.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(f"{served.url}/page/report.css").text == STYLE  # the report's look, not a copy
    folder = Path(__file__).resolve().parents[1] / "malmm_cli" / "jobs" / "server" / "page"
    for name in PAGE_FILES:
        text = (folder / name).read_text()
        assert httpx.get(f"{served.url}/{'' if name == 'index.html' else 'page/' + name}").text == text
        assert not re.search(r"\b(?:https?|wss?|ftp):|[\"'(=`]\s*//|@import|url\(", text), name  # no other origin
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "document.write" not in text
        assert "style=" not in text  # inline styles would need 'unsafe-inline'
