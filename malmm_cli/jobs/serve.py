"""Serve the model over HTTP: the job behind `malmm serve` (the application is jobs/server/).

`serve` checks what needs no model (the address and its key, the folders, the checkpoint, that
FastAPI and uvicorn are installed), takes the port, loads the model once, then answers until
stopped. Importing this module loads neither torch nor FastAPI: a refusal takes a fraction of a
second.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from malmm_cli.jobs.errors import SetupError, UsageError
from malmm_cli.jobs.model import RunOptions, check_checkpoint, load_model
from malmm_cli.jobs.videos import cap_decode_workers, check_engine_options
from malmm_cli.media.names import shown
from models.presets import CAPTION

if TYPE_CHECKING:
    from fastapi import FastAPI

    from malmm_cli.jobs.reporting import Reporter
    from malmm_cli.jobs.server.service import VideoService

MIB = 1024 * 1024


@dataclass(frozen=True)
class ServeOptions:
    """Where the server listens and what its clients may do (see jobs/server/app.Limits)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    allow_dirs: list[Path] = field(default_factory=list)
    max_body_mb: int = 256
    queue: int = 8
    allow_remote: bool = False
    remote_max_mb: int = 2048
    remote_timeout: float = 300.0
    max_frames: int = 1000
    max_duration: float = 14400.0  # seconds; 0: no cap
    max_question: int = 4000
    max_labels: int = 1000
    cors_origins: list[str] = field(default_factory=list)
    upload_ttl: int = 3600
    max_upload_mb: int = 2048
    upload_space_mb: int = 8192


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host`: a loopback address, or localhost."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_serve(serve: ServeOptions, options: RunOptions) -> None:
    """Everything that can be refused before the model loads (UsageError, SetupError)."""
    if not is_loopback(serve.host) and not serve.api_key:
        raise UsageError(
            f"--host {serve.host} lets other machines use the model: give --api-key KEY (or set MALMM_API_KEY), "
            "which clients send as Authorization: Bearer KEY",
            option="--host",
        )
    for folder in serve.allow_dirs:
        if not folder.is_dir():
            raise UsageError(f"{shown(folder)}: no such folder", option="--allow-dir")
    check_cors_origins(serve.cors_origins, serve.api_key)
    check_engine_options(options)
    check_checkpoint(options)
    needed = ("fastapi", "uvicorn", "python_multipart", *(("httpx",) if serve.allow_remote else ()))
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise SetupError(f"malmm serve needs {' and '.join(missing)}: pip install 'malmm[serve]'")


ORIGIN = re.compile(r"https?://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?")


def check_cors_origins(origins: list[str], api_key: str | None) -> None:
    """Each --cors-origin is an exact origin (scheme://host[:port], as a browser sends it in its
    Origin header: no path, no trailing slash), or `*`, which needs --api-key: without a key,
    any page the user opens could use the server (and read what --allow-dir lets it read)."""
    for origin in origins:
        if origin == "*":
            if not api_key:
                raise UsageError(
                    "--cors-origin '*' lets every web page a browser opens use the server: give --api-key KEY "
                    "too (pages must then hold the key), or name the origins one by one",
                    option="--cors-origin",
                )  # fmt: skip
        elif ORIGIN.fullmatch(origin) is None:
            raise UsageError(f"{origin!r} is not an origin: give scheme://host[:port], e.g. https://app.example.com "
                             "(no path, no trailing slash)", option="--cors-origin")  # fmt: skip


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound now: a port in use is said before the model loads."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host.strip("[]"), port), family=family, reuse_port=False)
    except OSError as error:
        raise SetupError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def load_service(options: RunOptions, reporter: Reporter) -> VideoService:
    """The model, loaded once for every request (planned for captions, the task with the largest
    default memory bank, and a segment reader beside the whole video's)."""
    from malmm_cli.jobs.server.service import VideoService

    malmm = load_model(options, CAPTION, reporter, readers=2, frames=CAPTION.frames)
    return VideoService(malmm, options, options.model, reporter)


def create_app(service: VideoService, serve: ServeOptions, reporter: Reporter) -> FastAPI:
    from malmm_cli.jobs.server.app import Limits, create_app
    from malmm_cli.jobs.server.caps import Caps
    from malmm_cli.jobs.server.remote import RemoteFetcher
    from malmm_cli.jobs.server.sources import allowed_folders

    remote = RemoteFetcher(max_bytes=serve.remote_max_mb * MIB, timeout=serve.remote_timeout)
    caps = Caps(frames=serve.max_frames, duration=serve.max_duration, question=serve.max_question,
                labels=serve.max_labels)  # fmt: skip
    limits = Limits(api_key=serve.api_key or None, allowed=allowed_folders(serve.allow_dirs),
                    max_body=serve.max_body_mb * MIB, queue=serve.queue, remote=remote if serve.allow_remote else None,
                    caps=caps, cors_origins=tuple(serve.cors_origins), upload_ttl=serve.upload_ttl,
                    max_upload=serve.max_upload_mb * MIB, upload_space=serve.upload_space_mb * MIB)  # fmt: skip
    return create_app(service, limits, reporter)


def serve(serve: ServeOptions, options: RunOptions, reporter: Reporter) -> None:
    """Check, listen, load the model, answer until stopped (Ctrl-C, SIGTERM: requests being read are
    given a few seconds, then KeyboardInterrupt goes up as from any job)."""
    check_serve(serve, options)
    options = cap_decode_workers(options, reporter)
    server_socket = listen(serve.host, serve.port)
    with server_socket:
        service = load_service(options, reporter)
        app = create_app(service, serve, reporter)
        import uvicorn

        config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        host, port = server_socket.getsockname()[:2]
        shown_host = f"[{host}]" if ":" in host else host
        reporter.info(f"Serving {options.model} at http://{shown_host}:{port}/v1 (POST /v1/chat/completions); "
                      "Ctrl-C stops")  # fmt: skip
        uvicorn.Server(config).run(sockets=[server_socket])
