"""`malmm serve`: what a request may read and how much. image_url stills read as one-frame videos
(as `malmm caption still.png` reads them), the per-request caps (--max-frames, --max-duration,
--max-question, --max-labels) refused before the request waits for the model, and CORS headers
only for the origins given with --cors-origin."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tests import media  # noqa: E402
from tests.serving import KEY, Clips, Log, Running, make_clips, serve_tiny, start, video  # noqa: E402

ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    clips = make_clips(tmp_path_factory.mktemp("limits"))
    media.make_video(clips.allowed / "second.mp4", seconds=1, fps=10, size=(64, 48))
    media.make_still_image(clips.allowed / "still.png")
    media.make_still_image(clips.allowed / "still.jpg")
    return clips


@pytest.fixture(scope="module")
def limited(tiny_llama_dir: Path, clips: Clips) -> Iterator[Running]:
    """Caps small enough to reach: 8 frames, 2 s of video, 20 characters, 3 labels; one CORS origin."""
    yield from serve_tiny(tiny_llama_dir, clips, max_frames=8, max_duration=2.0, max_question=20, max_labels=3,
                          cors_origins=[ORIGIN])  # fmt: skip


def image(url: str, text: str | None = None) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": url}}]
    return [{"role": "user", "content": parts + ([{"type": "text", "text": text}] if text else [])}]


def cli_json(run, *args: object) -> dict:
    result = run(*args, "--format", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    data.pop("file")
    return data


def record_of(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return {k: v for k, v in response.json()["malmm"].items() if k not in ("file", "upload")}


@pytest.mark.parametrize("name", ["still.png", "still.jpg"])
def test_a_still_is_read_as_malmm_caption_reads_it(limited: Running, clips: Clips, run, name: str) -> None:
    still = clips.allowed / name
    by_path = limited.post({"model": "tiny", "messages": image(str(still)), "frames": 4})
    cli = run("caption", still, "--frames", "4")
    assert by_path.json()["choices"][0]["message"]["content"] == cli.stdout.rstrip("\n")
    assert record_of(by_path) == cli_json(run, "caption", still, "--frames", "4")
    assert by_path.json()["malmm"]["frames"] == 1 and by_path.json()["malmm"]["file"] == str(still)
    kind = "image/png" if name.endswith(".png") else "image/jpeg"
    uploaded = limited.post({"model": "tiny", "messages": image(f"data:{kind};base64,"
                             f"{base64.b64encode(still.read_bytes()).decode()}"), "frames": 4})  # fmt: skip
    assert record_of(uploaded) == record_of(by_path)
    assert uploaded.json()["malmm"]["upload"] == {"type": kind, "bytes": still.stat().st_size}
    assert list(limited.app.state.uploads.iterdir()) == []


def test_a_question_about_a_still_equals_malmm_ask(limited: Running, clips: Clips, run) -> None:
    still = clips.allowed / "still.jpg"
    response = limited.post({"model": "tiny", "messages": image(still.as_uri(), "what is it?"), "frames": 2})
    assert record_of(response) == cli_json(run, "ask", still, "what is it?", "--frames", "2")


@pytest.mark.parametrize(
    ("content", "code", "words"),
    [
        (video("{short}")[0]["content"] + image("{png}")[0]["content"], "too_many_videos", "has 1 video and 1 image"),
        (image("{png}")[0]["content"] + image("{jpg}")[0]["content"], "too_many_videos", "has 2 images"),
        (image("data:video/mp4;base64,AAAA")[0]["content"], "unsupported_content", "is not an image"),
        (video("data:image/png;base64,AAAA")[0]["content"], "unsupported_content", "is not a video"),
    ],
)
def test_stills_the_server_refuses(limited: Running, clips: Clips, content: list, code: str, words: str) -> None:
    paths = {"{short}": str(clips.short), "{png}": str(clips.allowed / "still.png"),
             "{jpg}": str(clips.allowed / "still.jpg")}  # fmt: skip
    text = json.dumps(content)
    for mark, path in paths.items():
        text = text.replace(mark, path)
    response = limited.post({"model": "tiny", "messages": [{"role": "user", "content": json.loads(text)}], "frames": 2})
    assert response.status_code == 400 and response.json()["error"]["code"] == code, response.text
    assert words in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("fields", "clip", "code", "words"),
    [
        ({"frames": 9}, "second.mp4", "too_many_frames", "9 frames asked for: this server reads at most 8"),
        ({}, "second.mp4", "too_many_frames", "80 frames asked for"),  # the caption's default counts
        ({"fps": 10}, "second.mp4", "too_many_frames", "fps 10 reads 10 frames of this 1 s video"),
        ({"frames": 2}, "short.mp4", "video_too_long", "the video is 3 s long: this server reads at most 2 s"),
        ({"frames": 2, "text": "x" * 21}, "second.mp4", "question_too_long", "21 characters"),
        ({"frames": 2, "malmm": {"labels": ["a", "b", "c", "d"]}}, "second.mp4", "too_many_labels", "4 labels"),
    ],
)
def test_requests_over_the_caps_are_refused(
    limited: Running, clips: Clips, fields: dict, clip: str, code: str, words: str
) -> None:
    text = fields.pop("text", None)
    response = limited.post({"model": "tiny", "messages": video(str(clips.allowed / clip), text), **fields})
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == code, response.text
    assert words in error["message"] and "--max-" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}


def test_requests_within_the_caps_are_read(limited: Running, clips: Clips) -> None:
    within = [({"fps": 5}, None), ({"frames": 8}, "x" * 20), ({"frames": 2, "malmm": {"labels": list("abc")}}, None)]
    for fields, text in within:
        response = limited.post({"model": "tiny", "messages": video(str(clips.allowed / "second.mp4"), text), **fields})
        assert response.status_code == 200, response.text


class Idle:
    """A model that is never asked: for what the server answers without one (CORS, health)."""

    model_id, device = "idle", "cpu"

    def __init__(self) -> None:
        from malmm_cli.jobs.model import RunOptions

        self.defaults = RunOptions()


@pytest.fixture(scope="module")
def closed() -> Iterator[Running]:
    """No --cors-origin."""
    from malmm_cli.jobs.server.app import Limits, create_app

    log = Log()
    for url in start(create_app(Idle(), Limits(api_key=KEY), log)):
        yield Running(url, None, log)


def preflight(served: Running, origin: str) -> httpx.Response:
    return httpx.options(f"{served.url}/v1/chat/completions", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})  # fmt: skip


def test_cors_headers_only_for_the_origins_given(limited: Running, closed: Running, clips: Clips) -> None:
    allowed = preflight(limited, ORIGIN)  # with no key: a browser's preflight carries none
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert {"authorization", "content-type"} <= set(allowed.headers["access-control-allow-headers"].lower().split(", "))
    assert "POST" in allowed.headers["access-control-allow-methods"]
    asked = {"model": "tiny", "messages": video(str(clips.allowed / "second.mp4")), "frames": 2}
    answer = httpx.post(f"{limited.url}/v1/chat/completions", json=asked, timeout=60,
                        headers={"Origin": ORIGIN, "Authorization": f"Bearer {KEY}"})  # fmt: skip
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ORIGIN
    other = preflight(limited, "https://evil.example")
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    elsewhere = httpx.post(f"{limited.url}/v1/chat/completions", json=asked, timeout=60,
                           headers={"Origin": "https://evil.example", "Authorization": f"Bearer {KEY}"})  # fmt: skip
    assert elsewhere.status_code == 200 and "access-control-allow-origin" not in elsewhere.headers
    for response in (preflight(closed, ORIGIN), httpx.get(f"{closed.url}/health", headers={"Origin": ORIGIN})):
        assert not [name for name in response.headers if name.lower().startswith("access-control-")]
    assert preflight(closed, ORIGIN).status_code == 405


def test_cors_origins_are_checked_at_start() -> None:
    from malmm_cli.jobs.errors import UsageError
    from malmm_cli.jobs.serve import check_cors_origins

    check_cors_origins([ORIGIN, "http://localhost:3000", "http://[::1]:8080"], None)
    check_cors_origins(["*"], KEY)
    with pytest.raises(UsageError, match="'\\*' lets every web page"):
        check_cors_origins(["*"], None)
    for wrong in ("https://app.example/", "app.example", "https://app.example/page", "ftp://app.example"):
        with pytest.raises(UsageError, match="is not an origin"):
            check_cors_origins([wrong], KEY)


class Failing:
    """A model whose very name fails: an error no route foresees, raised inside one."""

    device = "cpu"

    def __init__(self) -> None:
        from malmm_cli.jobs.model import RunOptions

        self.defaults = RunOptions()

    @property
    def model_id(self) -> str:
        raise RuntimeError("secret detail")


def test_an_unforeseen_500_carries_the_cors_headers_and_openais_error_shape(clips: Clips) -> None:
    """A page of an allowed origin can read why its request failed: the plain 500 is answered
    inside CORS (an exception handler of Exception would answer outside it, without the headers)."""
    from malmm_cli.jobs.server.app import Limits, create_app

    log = Log()
    app = create_app(Failing(), Limits(allowed=(clips.allowed.resolve(),), cors_origins=(ORIGIN,)), log)
    for url in start(app):
        response = httpx.get(f"{url}/v1/models", headers={"Origin": ORIGIN}, timeout=30)
        assert response.status_code == 500
        assert response.headers["access-control-allow-origin"] == ORIGIN
        assert response.json()["error"]["type"] == "server_error" and "secret" not in response.text
        assert log.errors and "RuntimeError: secret detail" in log.errors[0]
