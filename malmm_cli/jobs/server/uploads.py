"""Videos uploaded once and asked about many times: `POST /v1/videos` streams a file (multipart, or
a raw `video/...` body) into the server's private folder and answers an id; a chat request names
it as `malmm://videos/ID`. Unlike a data: URL, a stored video outlives the request that reads it:
it goes when deleted, when it expires (--upload-ttl, checked whenever the store is used), and when
the server stops. Bytes are counted as they arrive, against the size of one file (--max-upload)
and the space the store may hold (--upload-space); no upload is ever held whole in memory."""

from __future__ import annotations

import asyncio
import mimetypes
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fastapi import APIRouter, Request
from python_multipart.multipart import MultipartParser, parse_options_header

from malmm_cli.jobs.server.chat import ApiError
from malmm_cli.jobs.server.sources import SUFFIXES, Video

SCHEME = "malmm"  # malmm://videos/ID
FLUSH = 1 << 20  # bytes gathered before a write to disk (in a thread: the event loop goes on serving)
OPAQUE = ("", "application/octet-stream", "binary/octet-stream")  # a browser that does not know the type


@dataclass
class StoredVideo:
    """One uploaded video: its id, its file (named by the id, never by the client), and what the
    client said of it."""

    id: str
    path: Path
    bytes: int
    filename: str
    content_type: str
    created: int
    expires: float

    def record(self) -> dict[str, Any]:
        return {"id": self.id, "object": "video", "bytes": self.bytes, "filename": self.filename,
                "content_type": self.content_type, "url": f"{SCHEME}://videos/{self.id}", "created": self.created,
                "expires_at": int(self.expires)}  # fmt: skip


def not_found(ident: str) -> ApiError:
    return ApiError(f"no such video: {ident} (never uploaded, deleted, or expired after --upload-ttl)", status=404,
                    param="id", code="video_not_found", kind="invalid_request_error")  # fmt: skip


def shown_filename(given: str | None) -> str:
    """The client's file name as the record shows it (a name only, no folders or control
    characters, at most 255 characters): shown, never used to name a file."""
    name = re.split(r"[/\\]", given or "")[-1]
    name = "".join(c for c in name if c.isprintable()).strip()[:255]
    return name or "video"


def content_type_of(declared: str | None, filename: str) -> str:
    """A video's type: as declared, or from its name's extension when the client did not know it."""
    kind = (declared or "").split(";")[0].strip().lower()
    if kind in OPAQUE:
        kind = mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if not kind.startswith("video/") and kind != "application/octet-stream":
        raise ApiError(f"an upload of type {kind} is not a video: send a video/... file", status=415,
                       param="file", code="unsupported_media_type")  # fmt: skip
    return kind


class UploadStore:
    """The uploaded videos of one running server, in its private folder. Used from the event loop
    only (file writes go to threads), so its counts need no lock."""

    def __init__(self, folder: Path, ttl: float, max_file: int, space: int, clock: Callable[[], float] = time.time):
        self.folder, self.ttl, self.max_file, self.space, self.clock = folder, ttl, max_file, space, clock
        self.videos: dict[str, StoredVideo] = {}
        self.receiving = 0  # bytes of uploads still arriving, counted against the space

    @property
    def used(self) -> int:
        return self.receiving + sum(video.bytes for video in self.videos.values())

    def expire(self) -> None:
        """Forget and remove every video past its time."""
        now = self.clock()
        for ident in [ident for ident, video in self.videos.items() if video.expires <= now]:
            self.videos.pop(ident).path.unlink(missing_ok=True)

    def get(self, ident: str) -> StoredVideo:
        self.expire()
        video = self.videos.get(ident)
        if video is None:
            raise not_found(ident)
        return video

    def list(self) -> list[StoredVideo]:
        """The stored videos in the order they were uploaded."""
        self.expire()
        return list(self.videos.values())

    def delete(self, ident: str) -> None:
        self.get(ident)
        self.videos.pop(ident).path.unlink(missing_ok=True)

    def clear(self) -> None:
        for video in self.videos.values():
            video.path.unlink(missing_ok=True)
        self.videos.clear()

    def open(self, url: str) -> Video:
        """The video a `malmm://videos/ID` URL names, for one request: a hard link to its file, which
        the request removes when done, so a video deleted or expired meanwhile is still read whole."""
        parsed = urlparse(url)
        ident = parsed.path.strip("/")
        if parsed.netloc != "videos" or not re.fullmatch(r"video-[0-9a-f]{32}", ident):
            raise ApiError(f"{url!r} is not a stored video's URL: malmm://videos/ID, with the id POST /v1/videos "
                           "answered", param="messages", code="invalid_url")  # fmt: skip
        try:
            video = self.get(ident)
        except ApiError as error:
            error.param = "messages"
            raise
        shown = {"file": url, "upload": {"id": video.id, "type": video.content_type, "bytes": video.bytes,
                                         "filename": video.filename}}  # fmt: skip
        link = self.folder / f"read-{uuid.uuid4().hex}{video.path.suffix}"
        try:
            os.link(video.path, link)
        except OSError:  # a file system without hard links: the file itself, kept
            return Video(video.path, shown)
        return Video(link, shown, temporary=True)

    async def receive(self, chunks: AsyncIterator[bytes], filename: str | None, content_type: str) -> StoredVideo:
        """Write a video arriving in `chunks` to a new file, counting its bytes against --max-upload
        and --upload-space as they come; the file is removed if anything stops it."""
        self.expire()
        ident = f"video-{uuid.uuid4().hex}"
        path = self.folder / f"{ident}{SUFFIXES.get(content_type, '.video')}"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # only this user reads it
        size, pending = 0, bytearray()
        try:
            with os.fdopen(descriptor, "wb") as file:
                async for data in chunks:
                    self.check_room(size, len(data))
                    size += len(data)
                    self.receiving += len(data)
                    pending += data
                    if len(pending) >= FLUSH:
                        await asyncio.to_thread(file.write, bytes(pending))
                        pending.clear()
                if pending:
                    await asyncio.to_thread(file.write, bytes(pending))
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            self.receiving -= size
        if size == 0:
            path.unlink(missing_ok=True)
            raise ApiError("the upload holds no bytes", param="file", code="empty_upload")
        created = self.clock()
        video = StoredVideo(ident, path, size, shown_filename(filename), content_type, int(created),
                            created + self.ttl)  # fmt: skip
        self.videos[ident] = video
        return video

    def check_room(self, size: int, more: int) -> None:
        if size + more > self.max_file:
            raise ApiError(f"the video is larger than this server takes ({self.max_file // (1 << 20)} MiB, "
                           "--max-upload)", status=413, param="file", code="upload_too_large")  # fmt: skip
        if self.used + more > self.space:
            raise ApiError(
                f"the server's upload space is full ({self.space // (1 << 20)} MiB, --upload-space): delete videos "
                "(DELETE /v1/videos/ID) or wait for them to expire",
                status=507, kind="server_error", code="upload_space_full",
            )  # fmt: skip


async def multipart_file(request: Request, boundary: bytes, found: dict[str, Any]) -> AsyncIterator[bytes]:
    """The bytes of the form's `file` field as they arrive, parsed by python-multipart's streaming
    parser; `found` gets its filename and type once its headers are read. Other fields are skipped
    unread, and a second file is refused."""
    parts: list[dict[str, Any]] = []
    data: list[bytes] = []
    header: dict[str, bytes] = {"field": b"", "value": b""}

    def begin() -> None:
        parts.append({"headers": {}, "file": False})

    def header_field(buffer: bytes, start: int, end: int) -> None:
        header["field"] += buffer[start:end]

    def header_value(buffer: bytes, start: int, end: int) -> None:
        header["value"] += buffer[start:end]

    def header_end() -> None:
        parts[-1]["headers"][header["field"].decode("latin-1").lower()] = header["value"]
        header["field"] = header["value"] = b""

    def headers_done() -> None:
        part = parts[-1]
        _, options = parse_options_header(part["headers"].get("content-disposition", b""))
        if options.get(b"name") != b"file":
            return
        if "filename" in found:
            raise ApiError("one file per upload: the form has two `file` fields", param="file", code="too_many_files")
        part["file"] = True
        found["filename"] = options.get(b"filename", b"").decode("utf-8", "replace")
        found["type"] = part["headers"].get("content-type", b"").decode("latin-1")

    def part_data(buffer: bytes, start: int, end: int) -> None:
        if parts and parts[-1]["file"]:
            data.append(buffer[start:end])

    callbacks = {"on_part_begin": begin, "on_header_field": header_field, "on_header_value": header_value,
                 "on_header_end": header_end, "on_headers_finished": headers_done,
                 "on_part_data": part_data}  # fmt: skip
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    async for chunk in request.stream():
        try:
            parser.write(chunk)
        except ApiError:
            raise
        except Exception as error:  # python-multipart's MultipartParseError and the like
            raise ApiError(f"the form cannot be read: {error}", param="file", code="invalid_form") from None
        if data:
            yield b"".join(data)
            data.clear()
    try:
        parser.finalize()
    except Exception as error:
        raise ApiError(f"the form ends early: {error}", param="file", code="invalid_form") from None


async def drained(request: Request) -> None:
    """Read the rest of a refused body, keeping nothing, so the client (a browser's XMLHttpRequest
    too) reads the refusal rather than a connection reset while it is still sending."""
    try:
        async for _ in request.stream():
            pass
    except Exception:  # the client went away, or the stream was already read to the end
        return


def upload_routes(guarded: list[Any]) -> APIRouter:
    """The routes of the store (`request.app.state.videos`), each guarded as the chat's is."""
    router = APIRouter(dependencies=guarded)

    @router.post("/v1/videos")
    async def upload(request: Request) -> dict[str, Any]:
        store: UploadStore = request.app.state.videos
        kind, options = parse_options_header(request.headers.get("content-type", ""))
        kind_text = kind.decode("latin-1").lower()
        declared = request.headers.get("content-length", "")
        try:
            if declared.isdigit() and int(declared) > store.max_file + (1 << 20):  # a form's own bytes are few
                store.check_room(int(declared), 0)
            if kind_text == "multipart/form-data":
                boundary = options.get(b"boundary")
                if not boundary:
                    raise ApiError("a multipart/form-data body needs a boundary", code="invalid_form")
                found: dict[str, Any] = {}
                parts = multipart_file(request, boundary, found)
                first = await anext(parts, None)  # the file's headers are read with its first bytes
                if "filename" not in found:
                    raise ApiError("no file: send the video as the form field `file` (curl -F file=@clip.mp4)",
                                   param="file", code="missing_file")  # fmt: skip
                filename = shown_filename(found["filename"])
                video = await store.receive(prepended(first, parts), filename, content_type_of(found["type"], filename))
            elif kind_text.startswith("video/") or kind_text in OPAQUE[1:]:
                filename = shown_filename(request.headers.get("x-filename") or request.query_params.get("filename"))
                video = await store.receive(request.stream(), filename, content_type_of(kind_text, filename))
            else:
                raise ApiError(f"send the video as multipart/form-data (a field `file`) or as a video/... body, not "
                               f"{kind_text or 'no type'}", status=415, code="unsupported_media_type")  # fmt: skip
        except ApiError:
            await drained(request)
            raise
        return video.record()

    @router.get("/v1/videos")
    async def listed(request: Request) -> dict[str, Any]:
        return {"object": "list", "data": [video.record() for video in request.app.state.videos.list()]}

    @router.get("/v1/videos/{ident}")
    async def one(ident: str, request: Request) -> dict[str, Any]:
        return request.app.state.videos.get(ident).record()

    @router.delete("/v1/videos/{ident}")
    async def delete(ident: str, request: Request) -> dict[str, Any]:
        request.app.state.videos.delete(ident)
        return {"id": ident, "object": "video.deleted", "deleted": True}

    return router


async def prepended(first: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for data in rest:
        yield data
