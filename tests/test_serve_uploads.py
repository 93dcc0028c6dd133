"""`POST /v1/videos`: a video uploaded once (a multipart form or a raw body, streamed to disk) and
asked about many times as `malmm://videos/ID`; listed, fetched, deleted, expired, capped, removed
when the server stops, and guarded by the key like every other route."""

from __future__ import annotations

import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("python_multipart")

from tests.serving import KEY, Clips, Log, Running, make_clips, serve_tiny, start, video  # noqa: E402

QUESTION = "what is the man doing?"
AUTH = {"Authorization": f"Bearer {KEY}"}
MIB = 1024 * 1024
RECORD = {"id", "object", "bytes", "filename", "content_type", "url", "created", "expires_at"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    return make_clips(tmp_path_factory.mktemp("uploads"))


@pytest.fixture(scope="module")
def served(tiny_llama_dir: Path, clips: Clips) -> Iterator[Running]:
    yield from serve_tiny(tiny_llama_dir, clips)


class NoModel:
    """A service that is never asked: the store's limits need no model."""

    model_id, device = "none", "cpu"

    def __init__(self) -> None:
        from malmm_cli.jobs.model import RunOptions

        self.defaults = RunOptions()

    def answer(self, request, video, progress=None):
        raise AssertionError("no request should reach the model")


def light(**limits: object) -> Iterator[Running]:
    """The application with the key and the given Limits, and no model."""
    from malmm_cli.jobs.server.app import Limits, create_app

    app = create_app(NoModel(), Limits(api_key=KEY, **limits), Log())
    for url in start(app):
        yield Running(url, app, Log())


def upload_form(url: str, data: bytes, name: str = "short.mp4", key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{url}/v1/videos", files={"file": (name, data, "video/mp4")}, headers=headers, timeout=60)


def files_in(folder: Path) -> list[Path]:
    return sorted(folder.iterdir()) if folder.exists() else []


def test_a_form_upload_is_asked_about_twice_as_a_path_is(served: Running, clips: Clips) -> None:
    data = clips.short.read_bytes()
    response = upload_form(served.url, data, name="../../my clip.mp4")
    assert response.status_code == 200, response.text
    record = response.json()
    assert set(record) == RECORD and re.fullmatch(r"video-[0-9a-f]{32}", record["id"])
    assert (record["object"], record["bytes"], record["content_type"]) == ("video", len(data), "video/mp4")
    assert record["filename"] == "my clip.mp4" and record["url"] == f"malmm://videos/{record['id']}"
    assert record["expires_at"] - record["created"] == 3600
    (stored,) = files_in(served.app.state.uploads)
    assert stored.name.startswith(record["id"]) and "clip" not in stored.name
    assert stored.read_bytes() == data and stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert stat.S_IMODE(served.app.state.uploads.stat().st_mode) == 0o700

    asked = {"model": "tiny", "extra_body": {"frames": 4}}
    from_path = served.client().chat.completions.create(messages=video(str(clips.short), QUESTION), **asked)
    for _ in range(2):  # kept after it is read: many questions about one upload
        reply = served.client().chat.completions.create(messages=video(record["url"], QUESTION), **asked)
        assert reply.choices[0].message.content == from_path.choices[0].message.content
        said = reply.model_extra["malmm"]
        assert said["answers"] == from_path.model_extra["malmm"]["answers"] and said["file"] == record["url"]
        assert said["upload"] == {"id": record["id"], "type": "video/mp4", "bytes": len(data),
                                  "filename": "my clip.mp4"}  # fmt: skip
        assert files_in(served.app.state.uploads) == [stored]  # the request's own link is gone
    assert httpx.delete(f"{served.url}/v1/videos/{record['id']}", headers=AUTH).status_code == 200


def test_a_raw_body_upload_is_captioned(served: Running, clips: Clips) -> None:
    data = clips.short.read_bytes()
    response = httpx.post(f"{served.url}/v1/videos?filename=ignored.mp4", content=data, timeout=60,
                          headers={**AUTH, "Content-Type": "video/mp4", "X-Filename": "raw.mp4"})  # fmt: skip
    assert response.status_code == 200, response.text
    record = response.json()
    assert (record["filename"], record["bytes"], record["content_type"]) == ("raw.mp4", len(data), "video/mp4")
    asked = {"model": "tiny", "frames": 4, "segment": "1s"}
    by_id = served.post({**asked, "messages": video(record["url"])}).json()
    by_path = served.post({**asked, "messages": video(str(clips.short))}).json()
    assert by_id["choices"] == by_path["choices"] and len(by_id["malmm"]["segments"]) == 3
    by_query = httpx.post(f"{served.url}/v1/videos?filename=query.mp4", content=data, timeout=60,
                          headers={**AUTH, "Content-Type": "video/mp4"}).json()  # fmt: skip
    assert by_query["filename"] == "query.mp4"
    for ident in (record["id"], by_query["id"]):
        httpx.delete(f"{served.url}/v1/videos/{ident}", headers=AUTH)


@pytest.fixture
def store() -> Iterator[Running]:
    yield from light(max_upload=MIB, upload_space=3 * MIB // 2)


def test_list_get_delete_and_unknown_ids(store: Running) -> None:
    first, second = (upload_form(store.url, bytes([n]) * 1000).json() for n in (1, 2))
    listed = httpx.get(f"{store.url}/v1/videos", headers=AUTH).json()
    assert listed["object"] == "list" and [v["id"] for v in listed["data"]] == [first["id"], second["id"]]
    assert httpx.get(f"{store.url}/v1/videos/{first['id']}", headers=AUTH).json() == first
    deleted = httpx.delete(f"{store.url}/v1/videos/{first['id']}", headers=AUTH)
    assert deleted.json() == {"id": first["id"], "object": "video.deleted", "deleted": True}
    assert [v["id"] for v in httpx.get(f"{store.url}/v1/videos", headers=AUTH).json()["data"]] == [second["id"]]
    assert len(files_in(store.app.state.uploads)) == 1
    unknown = f"video-{'0' * 32}"
    for ident in (first["id"], unknown):
        for method in ("GET", "DELETE"):
            response = httpx.request(method, f"{store.url}/v1/videos/{ident}", headers=AUTH)
            assert response.status_code == 404, response.text
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["code"] == "video_not_found"
        asked = store.post({"model": "x", "messages": video(f"malmm://videos/{ident}")})
        assert asked.status_code == 404 and "no such video" in asked.json()["error"]["message"]
    wrong = store.post({"model": "x", "messages": video("malmm://elsewhere/x")})
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "invalid_url"


def test_an_oversized_upload_is_refused_and_its_partial_file_removed(store: Running) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(6):
            yield b"x" * (MIB // 4)
            time.sleep(0.05)

    streamed = httpx.post(f"{store.url}/v1/videos", content=chunks(), timeout=60,
                          headers={**AUTH, "Content-Type": "video/mp4"})  # fmt: skip
    assert streamed.request.headers.get("transfer-encoding") == "chunked"
    assert streamed.status_code == 413 and "--max-upload" in streamed.json()["error"]["message"]
    assert files_in(store.app.state.uploads) == [] and store.app.state.videos.receiving == 0
    declared = upload_form(store.url, b"x" * (3 * MIB))  # refused by its Content-Length
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "upload_too_large"
    assert upload_form(store.url, b"x" * 1000).status_code == 200  # the server still takes uploads


def test_the_upload_space_is_capped(store: Running) -> None:
    first = upload_form(store.url, b"a" * (MIB - 1000))
    assert first.status_code == 200
    full = upload_form(store.url, b"b" * (MIB - 1000))
    assert full.status_code == 507 and "--upload-space" in full.json()["error"]["message"]
    assert len(files_in(store.app.state.uploads)) == 1
    httpx.delete(f"{store.url}/v1/videos/{first.json()['id']}", headers=AUTH)
    assert upload_form(store.url, b"b" * (MIB - 1000)).status_code == 200


def test_what_is_not_a_video_upload(store: Running) -> None:
    cases = [
        (httpx.post(f"{store.url}/v1/videos", json={"file": "x"}, headers=AUTH), 415, "unsupported_media_type"),
        (httpx.post(f"{store.url}/v1/videos", files={"other": ("a.mp4", b"x")}, headers=AUTH), 400, "missing_file"),
        (httpx.post(f"{store.url}/v1/videos", files={"file": ("a.txt", b"x", "text/plain")}, headers=AUTH), 415,
         "unsupported_media_type"),
        (httpx.post(f"{store.url}/v1/videos", content=b"", headers={**AUTH, "Content-Type": "video/mp4"}), 400,
         "empty_upload"),
    ]  # fmt: skip
    for response, status, code in cases:
        assert (response.status_code, response.json()["error"]["code"]) == (status, code), response.text
    assert files_in(store.app.state.uploads) == []


def test_uploads_expire() -> None:
    for running in light(upload_ttl=0.5):
        record = upload_form(running.url, b"x" * 1000).json()
        assert httpx.get(f"{running.url}/v1/videos/{record['id']}", headers=AUTH).status_code == 200
        time.sleep(0.7)
        assert httpx.get(f"{running.url}/v1/videos/{record['id']}", headers=AUTH).status_code == 404
        assert files_in(running.app.state.uploads) == []
        asked = running.post({"model": "x", "messages": video(record["url"])})
        assert asked.status_code == 404 and asked.json()["error"]["code"] == "video_not_found"


def test_the_store_is_emptied_when_the_server_stops() -> None:
    servers = light()
    running = next(servers)
    record = upload_form(running.url, b"x" * 1000).json()
    folder = running.app.state.uploads
    assert len(files_in(folder)) == 1 and record["id"] in running.app.state.videos.videos
    servers.close()  # the server stops
    assert not folder.exists() and running.app.state.videos.videos == {}


def test_the_key_guards_the_store_but_not_the_page(store: Running) -> None:
    record = upload_form(store.url, b"x" * 1000).json()
    for key in (None, "wrong"):
        assert upload_form(store.url, b"x" * 1000, key=key).status_code == 401
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        for method, path in (("GET", "/v1/videos"), ("GET", f"/v1/videos/{record['id']}"),
                             ("DELETE", f"/v1/videos/{record['id']}")):  # fmt: skip
            response = httpx.request(method, f"{store.url}{path}", headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert len(files_in(store.app.state.uploads)) == 1
    for path in ("/", "/page/app.js", "/page/style.css", "/page/report.css"):
        assert httpx.get(f"{store.url}{path}").status_code == 200
