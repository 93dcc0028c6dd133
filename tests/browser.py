"""A real headless Chromium for the HTML report tests, driven over the DevTools protocol.

Chromium is started with `--remote-debugging-pipe`: the protocol's JSON messages go through two
pipes (the browser reads fd 3 and writes fd 4, each message ended by a NUL byte), so no port, no
websocket library and nothing on the network. Every request the page makes is recorded from the
protocol's Network events, so a test sees whether anything leaves the file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    """$MALMM_CHROMIUM, else the first of the usual names on PATH."""
    if os.environ.get("MALMM_CHROMIUM"):
        return os.environ["MALMM_CHROMIUM"]
    return next((found for name in NAMES if (found := shutil.which(name))), None)


class BrowserError(Exception):
    """The browser answered a command with an error, or not in time."""


@dataclass
class Page:
    """One tab: the requests it made (URLs) and the protocol session that drives it."""

    browser: Browser
    session: str
    requests: list[str] = field(default_factory=list)
    load_seconds: float = 0.0

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        return self.browser.send(method, params, self.session)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        reply = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in reply:
            raise BrowserError(f"{expression[:60]}...: {reply['exceptionDetails']}")
        return reply["result"].get("value")

    def requests_so_far(self) -> list[str]:
        """Every URL the page has requested since it opened, the protocol's events read until now."""
        self.evaluate("0")  # the events sent before this reply are read with it
        return [
            message["params"]["request"]["url"]
            for message in self.browser._events
            if message.get("method") == "Network.requestWillBeSent" and message.get("sessionId") == self.session
        ]

    def screenshot(self) -> bytes:
        import base64

        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])


class Browser:
    """A headless Chromium with its own empty profile; close() (or `with`) ends it."""

    def __init__(self, executable: str, timeout: float = 30.0):
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="malmm-chromium-")
        to_browser_read, self._write = os.pipe()
        self._read, from_browser_write = os.pipe()

        def pipes_as_3_and_4() -> None:  # in the child, before exec; copies above 10 first, as 3 or 4 may be taken
            reading, writing = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_read, from_browser_write))
            os.dup2(reading, 3)  # inheritable, unlike the pipes themselves
            os.dup2(writing, 4)

        self.process = subprocess.Popen(
            [executable, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
             "--no-first-run", "--no-default-browser-check", "--mute-audio", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=pipes_as_3_and_4, start_new_session=True,  # its own process group
        )  # fmt: skip
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._events: list[dict[str, Any]] = []
        self._next_id = 0
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self) -> None:
        buffer = b""
        while chunk := os.read(self._read, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._messages.put(json.loads(message))
        self._messages.put(None)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Send a command and wait for its reply; events arriving meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._receive(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        try:
            reply = self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise BrowserError(f"no answer to {waiting_for} within {self.timeout:g} s") from None
        if reply is None:
            raise BrowserError(f"the browser closed while waiting for {waiting_for}")
        return reply

    def wait_for(self, event: str, session: str) -> dict[str, Any]:
        """The first event of this name for this session (those already received included)."""
        deadline = time.monotonic() + self.timeout
        while True:
            for number, message in enumerate(self._events):
                if message.get("method") == event and message.get("sessionId") == session:
                    return self._events.pop(number)
            self._events.append(self._receive(deadline, event))

    def open(self, path: Path | str, width: int = 1000, height: int = 800, media: str = "screen") -> Page:
        """A new tab showing the file (or the http:// URL, given as text) at this viewport size,
        loaded (its load event fired)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        page.send("Page.enable")
        page.send("Network.enable")
        page.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=width < 600)  # fmt: skip
        page.send("Emulation.setEmulatedMedia", media=media)
        started = time.monotonic()
        page.send("Page.navigate", url=path if isinstance(path, str) else Path(path).resolve().as_uri())
        self.wait_for("Page.loadEventFired", session)
        page.load_seconds = time.monotonic() - started
        page.requests = [
            message["params"]["request"]["url"]
            for message in self._events
            if message.get("method") == "Network.requestWillBeSent" and message.get("sessionId") == session
        ]
        return page

    def close(self) -> None:
        with contextlib.suppress(BrowserError):
            self.send("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):  # renderers and helpers it left behind
            os.killpg(self.process.pid, signal.SIGKILL)
        for descriptor in (self._write, self._read):
            with contextlib.suppress(OSError):
                os.close(descriptor)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def running_browser(purpose: str) -> Iterator[Browser]:
    """A headless Chromium for a test module (its `browser` fixture): skipped where there is none,
    failed instead when MALMM_REQUIRE_BROWSER is set (as in CI)."""
    import pytest

    executable = find_chromium()
    if executable is None:
        if os.environ.get("MALMM_REQUIRE_BROWSER"):
            pytest.fail("MALMM_REQUIRE_BROWSER is set but no Chromium is installed (.ci/run installs it)")
        pytest.skip(f"no Chromium on this machine: `apt-get install chromium` (.ci/run does it) to {purpose}")
    with Browser(executable) as running:
        yield running
