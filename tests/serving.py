"""The harness of the server's tests: the real application under uvicorn on a free loopback port,
clips in an allowed folder and outside it, and a client that speaks to it with httpx or the
official openai client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import uvicorn

from tests import media

KEY = "test-key"


class Log:
    """A Reporter that keeps the server's error and info lines (jobs.reporting.Silent for the rest)."""

    def __init__(self) -> None:
        from malmm_cli.jobs.reporting import Silent

        self.silent, self.errors, self.infos = Silent(), [], []

    def error(self, message: str) -> None:
        self.errors.append(message)

    def info(self, message: str) -> None:
        self.infos.append(message)

    def __getattr__(self, name: str):
        return getattr(self.silent, name)


@dataclass
class Running:
    url: str
    app: object
    log: Log

    def client(self, key: str | None = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or "none", max_retries=0, timeout=60)

    def post(self, body: object, key: str | None = KEY, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if isinstance(body, (dict, list)):
            return httpx.post(f"{self.url}/v1/chat/completions", json=body, headers=headers, timeout=60, **kwargs)
        headers.setdefault("Content-Type", "application/json")
        headers.update(kwargs.pop("headers", {}))
        return httpx.post(f"{self.url}/v1/chat/completions", content=body, headers=headers, timeout=60, **kwargs)


@dataclass
class Clips:
    allowed: Path
    short: Path
    outside: Path
    link: Path


def make_clips(root: Path) -> Clips:
    """A clip in the allowed folder, one outside it, and a link in the folder to the one outside."""
    allowed, elsewhere = root / "allowed", root / "elsewhere"
    allowed.mkdir()
    elsewhere.mkdir()
    short = media.make_video(allowed / "short.mp4", seconds=3, fps=10, size=(64, 48))
    outside = media.make_video(elsewhere / "outside.mp4", seconds=2, fps=10, size=(64, 48))
    link = allowed / "link.mp4"
    link.symlink_to(outside)
    return Clips(allowed, short, outside, link)


def start(app: object) -> Iterator[str]:
    """Run the app under uvicorn in a thread, on a free loopback port; stop it afterwards."""
    from malmm_cli.jobs.serve import listen

    sock = listen("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def serve_tiny(tiny_llama_dir: Path, clips: Clips, **serve: object) -> Iterator[Running]:
    """The server as `malmm serve --model TINY --device cpu --num-beams 1 --max-new-tokens 5
    --api-key test-key --allow-dir ALLOWED --max-body 1` builds it (the options of conftest.FAST);
    `serve` overrides ServeOptions' fields."""
    from malmm_cli.jobs.model import RunOptions
    from malmm_cli.jobs.serve import ServeOptions, create_app, load_service

    log = Log()
    options = RunOptions(model=str(tiny_llama_dir), device="cpu", num_beams=1, max_new_tokens=5)
    service = load_service(options, log)
    settings = {"api_key": KEY, "allow_dirs": [clips.allowed], "max_body_mb": 1, **serve}
    app = create_app(service, ServeOptions(**settings), log)
    for url in start(app):
        yield Running(url, app, log)


def video(url: str, text: str | None = None) -> list[dict]:
    """A chat's messages: one user message with the video and, if given, the text."""
    parts = [{"type": "video_url", "video_url": {"url": url}}]
    return [{"role": "user", "content": parts + ([{"type": "text", "text": text}] if text else [])}]
