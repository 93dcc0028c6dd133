"""Which videos a request may read: a path (or file:// URL) under a folder the server was started
with (--allow-dir), or the bytes of a data: URL, kept in the server's private folder while the
request is read. A path is resolved before it is compared (symlinks followed, `..` taken), so
neither leads out of an allowed folder; remote URLs are refused (fetching them is not written)."""

from __future__ import annotations

import base64
import binascii
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from malmm_cli.jobs.server.chat import ApiError

# data:video/mp4;base64,AAAA (parameters such as ;codecs=... may come before ;base64)
DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)(?P<params>(?:;[^;,]*)*?);base64,(?P<data>.*)", re.S)
SUFFIXES = {
    "video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-matroska": ".mkv",
    "video/matroska": ".mkv", "video/x-msvideo": ".avi", "video/mpeg": ".mpg", "video/mp2t": ".ts",
    "video/ogg": ".ogv", "video/3gpp": ".3gp", "video/x-flv": ".flv",
}  # fmt: skip


@dataclass
class Video:
    """A video a request reads: where it is, how results name it (`shown`: a path as the client gave
    it; an upload has its type and size instead), and whether it is the server's to remove."""

    path: Path
    shown: dict[str, object]
    temporary: bool = False

    def remove(self) -> None:
        if self.temporary:
            self.path.unlink(missing_ok=True)


class StoredVideos(Protocol):
    """The videos uploaded with POST /v1/videos (uploads.UploadStore), named malmm://videos/ID."""

    def open(self, url: str) -> Video: ...


@dataclass(frozen=True)
class VideoPolicy:
    """Where a request's video may come from: folders (resolved when the server starts), the
    private folder uploads are written to, and the videos uploaded before (malmm://videos/ID)."""

    allowed: tuple[Path, ...]
    uploads: Path
    stored: StoredVideos | None = None

    def open(self, url: str) -> Video:
        """The video a video_url names, or ApiError: 400 for what cannot be a video here, 403 for a
        path outside the allowed folders (said without telling whether it exists)."""
        if url.startswith("data:"):
            return self._upload(url)
        if url.startswith("malmm://") and self.stored is not None:
            return self.stored.open(url)  # 404 for an id unknown or expired
        parsed = urlparse(url)
        if parsed.scheme in ("http", "https", "ftp", "rtsp", "rtsps", "s3", "gs"):
            raise ApiError(
                f"remote video URLs are not fetched ({parsed.scheme}://): this server reads paths under its "
                "--allow-dir folders and data:video/...;base64 uploads (--allow-remote is not implemented yet)",
                param="messages", code="remote_url_refused",
            )  # fmt: skip
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise ApiError(f"file:// URLs name this machine's files: not {parsed.netloc!r}", param="messages",
                               code="invalid_url")  # fmt: skip
            path = unquote(parsed.path)
        elif parsed.scheme and len(parsed.scheme) > 1:  # (a one-letter scheme is a Windows drive)
            raise ApiError(f"unsupported URL scheme {parsed.scheme!r}: give a path, file:// or data:video/...",
                           param="messages", code="invalid_url")  # fmt: skip
        else:
            path = url
        return self._local(path)

    def _local(self, given: str) -> Video:
        if not self.allowed:
            raise ApiError(
                "local paths are not read by this server: start it with --allow-dir FOLDER to read videos under "
                "FOLDER, or send the video as data:video/...;base64",
                param="messages", code="path_not_allowed", status=403, kind="permission_error",
            )  # fmt: skip
        if "\0" in given or not os.path.isabs(given):
            raise ApiError(f"give an absolute path, not {given!r}", param="messages", code="invalid_path")
        resolved = Path(os.path.realpath(given))
        if not any(resolved.is_relative_to(folder) for folder in self.allowed):
            raise ApiError(
                f"{given} is not under a folder this server reads (--allow-dir); paths are compared once "
                "resolved, symlinks and .. included",
                param="messages", code="path_not_allowed", status=403, kind="permission_error",
            )  # fmt: skip
        if not resolved.is_file():
            raise ApiError(f"{given}: no such file", param="messages", code="video_not_found")
        return Video(resolved, {"file": given})

    def _upload(self, url: str) -> Video:
        match = DATA_URL.fullmatch(url)
        if match is None:
            raise ApiError("a data: URL must be data:video/TYPE;base64,DATA", param="messages", code="invalid_url")
        kind = match["type"].lower()
        if not kind.startswith("video/"):
            raise ApiError(f"a data: URL of type {kind} is not a video: send data:video/...", param="messages",
                           code="unsupported_content")  # fmt: skip
        try:
            data = base64.b64decode(match["data"], validate=True)
        except (binascii.Error, ValueError):
            raise ApiError("the data: URL is not valid base64", param="messages", code="invalid_url") from None
        if not data:
            raise ApiError("the data: URL holds no bytes", param="messages", code="invalid_url")
        path = self.uploads / f"{uuid.uuid4().hex}{SUFFIXES.get(kind, '.video')}"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # only this user reads it
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return Video(path, {"file": None, "upload": {"type": kind, "bytes": len(data)}}, temporary=True)


def allowed_folders(folders: list[Path]) -> tuple[Path, ...]:
    """The --allow-dir folders, resolved once (the comparison is between resolved paths)."""
    return tuple(Path(os.path.realpath(folder)) for folder in folders)
