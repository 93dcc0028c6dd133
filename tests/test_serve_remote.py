"""`malmm serve --allow-remote`: http(s) videos fetched by the server from a test HTTP server on
loopback. The fetcher takes its resolver and address check as parameters: here loopback counts as
public (and a few made-up host names resolve), in these tests only; the server itself never takes
them from anywhere but remote.py's defaults."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from tests.serving import KEY, Clips, Log, Running, make_clips, start, video  # noqa: E402

LIMIT = 200_000  # bytes: --remote-max-mb, in bytes, for these tests (the clip is smaller)


class Clip(BaseHTTPRequestHandler):
    """The test server: the clip, redirects, a file declared too large, one too large without a
    declared length, a server that goes silent, one that sends a byte at a time, a 404."""

    clip: bytes = b""
    still: bytes = b""
    protocol_version = "HTTP/1.0"  # no Content-Length: the body runs to the connection's close

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        port = self.server.server_address[1]
        if self.path == "/clip.mp4":
            self._send(200, {"Content-Type": "video/mp4", "Content-Length": str(len(self.clip))}, self.clip)
        elif self.path == "/photo":  # a still, named by its type alone
            self._send(200, {"Content-Type": "image/png", "Content-Length": str(len(self.still))}, self.still)
        elif self.path == "/moved":
            self._send(302, {"Location": "/clip.mp4"})
        elif self.path == "/to-named":  # to a host name the injected resolver answers
            self._send(301, {"Location": f"http://clips.example:{port}/clip.mp4"})
        elif self.path == "/to-private":  # cloud metadata: refused before any connection
            self._send(302, {"Location": "http://169.254.169.254/latest/meta-data/"})
        elif self.path.startswith("/loop"):
            self._send(302, {"Location": f"/loop{len(self.path)}"})
        elif self.path == "/declared-large":
            self._send(200, {"Content-Type": "video/mp4", "Content-Length": str(LIMIT + 1)})
        elif self.path == "/streamed-large":
            self._send(200, {"Content-Type": "video/mp4"})
            for _ in range(LIMIT // 10_000 + 2):
                self.wfile.write(b"x" * 10_000)
        elif self.path == "/trickle":  # never silent for long, never done
            self._send(200, {"Content-Type": "video/mp4"})
            for _ in range(30):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.1)
        elif self.path == "/silent":
            self._send(200, {"Content-Type": "video/mp4"}, self.clip[:100])
            time.sleep(3)
        else:
            self._send(404, {"Content-Length": "0"})

    def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Clips:
    return make_clips(tmp_path_factory.mktemp("remote"))


@pytest.fixture(scope="module")
def site(clips: Clips) -> Iterator[str]:
    from tests import media

    still = media.make_still_image(clips.allowed / "still.png")
    handler = type("Handler", (Clip,), {"clip": clips.short.read_bytes(), "still": still.read_bytes()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def loopback_counts(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """The address check of these tests: the real one, and loopback (where the test server is)."""
    from malmm_cli.jobs.server.remote import is_public

    return address.is_loopback or is_public(address)


def names(host: str, port: int) -> list[str]:
    """The resolver of these tests: made-up names, one of them with a private address among its answers."""
    from malmm_cli.jobs.server.remote import resolve_host

    made_up = {"clips.example": ["127.0.0.1"], "rebound.example": ["127.0.0.1", "10.0.0.7"]}
    return made_up[host] if host in made_up else resolve_host(host, port)


def serve(tiny_llama_dir: Path, clips: Clips, **remote: object) -> Iterator[Running]:
    """The tiny model served with --allow-remote: the fetcher built as the server builds it, with
    the given fields (the test's resolver and check, smaller caps) in place of its defaults."""
    from malmm_cli.jobs.model import RunOptions
    from malmm_cli.jobs.serve import load_service
    from malmm_cli.jobs.server.app import Limits, create_app
    from malmm_cli.jobs.server.remote import RemoteFetcher

    log = Log()
    service = load_service(RunOptions(model=str(tiny_llama_dir), device="cpu", num_beams=1, max_new_tokens=5), log)
    limits = Limits(api_key=KEY, allowed=(clips.allowed.resolve(),), remote=RemoteFetcher(**remote))
    app = create_app(service, limits, log)
    for url in start(app):
        yield Running(url, app, log)


@pytest.fixture(scope="module")
def pinned(tiny_llama_dir: Path, clips: Clips) -> Iterator[Running]:
    """--allow-remote with the test's resolver and address check, a cap of LIMIT bytes and 1 s."""
    yield from serve(tiny_llama_dir, clips, max_bytes=LIMIT, timeout=1.0, resolve=names, public=loopback_counts)


@pytest.fixture(scope="module")
def real(tiny_llama_dir: Path, clips: Clips) -> Iterator[Running]:
    """--allow-remote exactly as `malmm serve` builds it: loopback is private."""
    yield from serve(tiny_llama_dir, clips)


def refused(served: Running, url: str) -> dict:
    response = served.post({"model": "tiny", "messages": video(url), "frames": 2})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    return error


def test_a_remote_video_is_read_as_the_same_file_by_path(pinned: Running, clips: Clips, site: str) -> None:
    asked = {"model": "tiny", "frames": 4}
    for url in (f"{site}/clip.mp4", f"{site}/moved", f"{site}/to-named"):  # directly, and through redirects
        remote = pinned.post({**asked, "messages": video(url, "what is it?")})
        assert remote.status_code == 200, remote.text
        by_path = pinned.post({**asked, "messages": video(str(clips.short), "what is it?")}).json()
        assert remote.json()["choices"] == by_path["choices"]
        record = remote.json()["malmm"]
        assert record["file"] == url
        assert record["download"] == {"type": "video/mp4", "bytes": clips.short.stat().st_size}
        assert {k: v for k, v in record.items() if k not in ("file", "download")} == {
            k: v for k, v in by_path["malmm"].items() if k != "file"
        }
        assert list(pinned.app.state.uploads.iterdir()) == []  # removed once read


def test_a_remote_still_is_read_as_the_same_file_by_path(pinned: Running, clips: Clips, site: str) -> None:
    still = {"type": "image_url", "image_url": {"url": f"{site}/photo"}}
    remote = pinned.post({"model": "tiny", "frames": 4, "messages": [{"role": "user", "content": [still]}]})
    assert remote.status_code == 200, remote.text
    by_path = {"type": "image_url", "image_url": {"url": str(clips.allowed / "still.png")}}
    local = pinned.post({"model": "tiny", "frames": 4, "messages": [{"role": "user", "content": [by_path]}]}).json()
    assert remote.json()["choices"] == local["choices"] and remote.json()["malmm"]["frames"] == 1
    assert remote.json()["malmm"]["download"]["type"] == "image/png"


def test_loopback_is_refused_with_the_real_check(real: Running, site: str) -> None:
    for url in (f"{site}/clip.mp4", f"http://localhost:{site.rsplit(':', 1)[1]}/clip.mp4", "http://[::1]/x.mp4",
                "http://10.1.2.3/x.mp4", "http://169.254.169.254/latest/meta-data/"):  # fmt: skip
        error = refused(real, url)
        assert error["code"] == "private_address", error
        assert "only from public addresses" in error["message"]


def test_every_answer_of_the_resolver_is_checked(pinned: Running) -> None:
    """One private address among a host's answers refuses it (which one is used is the resolver's choice)."""
    error = refused(pinned, "http://rebound.example/clip.mp4")
    assert error["code"] == "private_address" and "10.0.0.7" in error["message"]


def test_a_redirect_to_a_private_address_is_refused(pinned: Running, site: str) -> None:
    error = refused(pinned, f"{site}/to-private")
    assert error["code"] == "private_address" and "169.254.169.254" in error["message"]


def test_redirects_are_followed_at_most_five_times(pinned: Running, site: str) -> None:
    error = refused(pinned, f"{site}/loop")
    assert error["code"] == "remote_fetch_failed" and "more than 5 redirects" in error["message"]


@pytest.mark.parametrize(
    ("path", "code", "words"),
    [
        ("/declared-large", "remote_too_large", f"is {LIMIT + 1} bytes"),  # refused before reading
        ("/streamed-large", "remote_too_large", f"sent more than {LIMIT} bytes"),  # no Content-Length: counted
        ("/silent", "remote_fetch_failed", "longer than 1 s (--remote-timeout)"),  # waiting for a read
        ("/trickle", "remote_fetch_failed", "longer than 1 s (--remote-timeout)"),  # counted between reads
        ("/missing.mp4", "remote_fetch_failed", "HTTP 404"),
    ],
)
def test_downloads_that_fail(pinned: Running, site: str, path: str, code: str, words: str) -> None:
    started = time.monotonic()
    error = refused(pinned, f"{site}{path}")
    assert error["code"] == code and words in error["message"], error
    assert time.monotonic() - started < 2.5  # the silent server is cut at the time limit, not at its own end
    assert list(pinned.app.state.uploads.iterdir()) == []  # a partial file is removed


def test_schemes_and_servers_without_the_option(pinned: Running, clips: Clips, tiny_llama_dir: Path) -> None:
    for url in ("ftp://example.com/clip.mp4", "rtsp://example.com/live"):
        error = refused(pinned, url)
        assert error["code"] == "remote_url_refused" and "not fetched" in error["message"]
    from tests.serving import serve_tiny

    for closed in serve_tiny(tiny_llama_dir, clips):
        error = refused(closed, "https://example.com/clip.mp4")
        assert error["code"] == "remote_url_refused" and "--allow-remote" in error["message"]


def test_the_address_check() -> None:
    from malmm_cli.jobs.server.remote import is_public

    private = ["127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
               "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1",
               "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1"]  # fmt: skip
    assert [a for a in private if is_public(ipaddress.ip_address(a))] == []
    assert all(is_public(ipaddress.ip_address(a)) for a in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111"))
