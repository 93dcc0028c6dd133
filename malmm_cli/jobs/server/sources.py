"""Which videos a request may read: a path (or file:// URL) under a folder the server was started
with (--allow-dir), or the bytes of a data: URL, kept in the server's private folder while the
request is read, or (with --allow-remote) an http(s) URL downloaded there (remote.py). A path is
resolved before it is compared (symlinks followed, `..` taken), so neither leads out of an allowed
folder. A still (an image_url part) comes the same ways and is read as a one-frame video, as
`malmm caption still.png` reads it."""

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
from malmm_cli.jobs.server.remote import RemoteFetcher

# data:video/mp4;base64,AAAA (parameters such as ;codecs=... may come before ;base64)
DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)(?P<params>(?:;[^;,]*)*?);base64,(?P<data>.*)", re.S)
SUFFIXES = {
    "video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-matroska": ".mkv",
    "video/matroska": ".mkv", "video/x-msvideo": ".avi", "video/mpeg": ".mpg", "video/mp2t": ".ts",
    "video/ogg": ".ogv", "video/3gpp": ".3gp", "video/x-flv": ".flv",
}  # fmt: skip
IMAGE_SUFFIXES = {
    "image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/webp": ".webp", "image/bmp": ".bmp",
    "image/gif": ".gif", "image/tiff": ".tiff",
}  # fmt: skip
REMOTE_SCHEMES = ("http", "https", "ftp", "rtsp", "rtsps", "s3", "gs")


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
    private folder uploads and downloads are written to, how remote URLs are fetched (None: they
    are refused), and the videos uploaded before (malmm://videos/ID)."""

    allowed: tuple[Path, ...]
    uploads: Path
    remote: RemoteFetcher | None = None
    stored: StoredVideos | None = None

    def open(self, url: str, still: bool = False) -> Video:
        """The video a video_url names (an image_url's still, when `still`), or ApiError: 400 for
        what cannot be a video here, 403 for a path outside the allowed folders (said without
        telling whether it exists)."""
        if url.startswith("data:"):
            return self._upload(url, still)
        if url.startswith("malmm://") and self.stored is not None:
            return self.stored.open(url)  # 404 for an id unknown or expired
        parsed = urlparse(url)
        if parsed.scheme in REMOTE_SCHEMES:
            return self._remote(url, parsed.scheme, still)
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

    def _remote(self, url: str, scheme: str, still: bool) -> Video:
        """An http(s) URL downloaded into the private folder (with --allow-remote), removed with its request."""
        what = "image" if still else "video"
        if self.remote is None or scheme not in ("http", "https"):
            allowed = "data: uploads" + (", http(s):// URLs" if self.remote else "")
            raise ApiError(
                f"remote {what} URLs are not fetched ({scheme}://): this server reads paths under its --allow-dir "
                f"folders and {allowed}" + ("" if self.remote else "; start it with --allow-remote to fetch "
                                            "http(s):// URLs"),
                param="messages", code="remote_url_refused",
            )  # fmt: skip
        fetched = self.remote.fetch(url, self.uploads, lambda kind, path: suffix_for(kind, path, still))
        return Video(fetched.path, {"file": url, "download": {"type": fetched.content_type or None,
                                                              "bytes": fetched.size}}, temporary=True)  # fmt: skip

    def _upload(self, url: str, still: bool = False) -> Video:
        major = "image" if still else "video"
        match = DATA_URL.fullmatch(url)
        if match is None:
            raise ApiError(f"a data: URL must be data:{major}/TYPE;base64,DATA", param="messages",
                           code="invalid_url")  # fmt: skip
        kind = match["type"].lower()
        if not kind.startswith(f"{major}/"):
            raise ApiError(f"a data: URL of type {kind} is not {'an image' if still else 'a video'}: send "
                           f"data:{major}/...", param="messages", code="unsupported_content")  # fmt: skip
        try:
            data = base64.b64decode(match["data"], validate=True)
        except (binascii.Error, ValueError):
            raise ApiError("the data: URL is not valid base64", param="messages", code="invalid_url") from None
        if not data:
            raise ApiError("the data: URL holds no bytes", param="messages", code="invalid_url")
        path = self.uploads / f"{uuid.uuid4().hex}{suffix_for(kind, '', still)}"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # only this user reads it
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return Video(path, {"file": None, "upload": {"type": kind, "bytes": len(data)}}, temporary=True)


def suffix_for(content_type: str, path: str, still: bool) -> str:
    """The extension a received file is saved with, so that its name agrees with its content (FFmpeg
    also probes the content): the type's, else the URL path's own (a known one), else a neutral one."""
    known = IMAGE_SUFFIXES if still else SUFFIXES
    if content_type in known:
        return known[content_type]
    own = os.path.splitext(path)[1].lower()
    if own in set(known.values()) | ({".jpeg", ".tif"} if still else {".m4v", ".mts"}):
        return own
    return ".image" if still else ".video"


def allowed_folders(folders: list[Path]) -> tuple[Path, ...]:
    """The --allow-dir folders, resolved once (the comparison is between resolved paths)."""
    return tuple(Path(os.path.realpath(folder)) for folder in folders)
