"""The FastAPI application of `malmm serve`: OpenAI's chat completions with a video, the model list,
a health check, the uploaded videos (uploads.py) and the page at / (page.py). Every refusal is in
OpenAI's error shape; nothing a request does puts a traceback in a response (the server's log says
what failed)."""

from __future__ import annotations

import asyncio
import hmac
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from malmm_cli.jobs.server.caps import Caps
from malmm_cli.jobs.server.chat import ApiError, ChatRequest, chunk, completion, completion_id, parse_chat
from malmm_cli.jobs.server.page import page_routes
from malmm_cli.jobs.server.remote import RemoteFetcher
from malmm_cli.jobs.server.service import Job, ModelLine, QueueFull, Reply, Service
from malmm_cli.jobs.server.sources import Video, VideoPolicy
from malmm_cli.jobs.server.uploads import UploadStore, upload_routes

if TYPE_CHECKING:
    from malmm_cli.jobs.reporting import Reporter

JSON_TYPES = ("application/json", "text/json")
CLIENT_CHECK_SECONDS = 0.25  # how often a request waiting for its answer looks whether its client left


@dataclass(frozen=True)
class Limits:
    """What a client may do: the key it must send (None: any client on the bound address), the
    folders its paths may name (resolved), the largest request body, how many requests may wait
    for the model while one is read, how remote URLs are fetched (None: refused), what one request
    may ask (caps.Caps), the web origins whose pages may read the answers (CORS; none: no CORS
    headers at all), and the uploaded videos' lifetime (seconds), largest file and total space
    (bytes)."""

    api_key: str | None = None
    allowed: tuple[Path, ...] = ()
    max_body: int = 256 * 1024 * 1024
    queue: int = 8
    remote: RemoteFetcher | None = None
    caps: Caps = field(default_factory=Caps)
    cors_origins: tuple[str, ...] = ()
    upload_ttl: float = 3600.0
    max_upload: int = 2048 * 1024 * 1024
    upload_space: int = 8192 * 1024 * 1024


class FrameCount:
    """A request's reading progress, handed from the model's thread to the response's event loop."""

    def __init__(self, tell: Callable[[str], None]):
        self.tell, self.total, self.read = tell, None, 0

    def start(self, total_frames: int | None, from_cache: bool = False) -> None:
        self.total = total_frames
        self.tell(f"reading {total_frames} frames" + (" (from the feature cache)" if from_cache else ""))

    def advance(self, frames: int = 1) -> None:
        self.read += frames
        self.tell(f"read {self.read} of {self.total} frames")


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class UnforeseenErrors:
    """Answers an exception no handler took with the plain 500 of `unexpected`, in OpenAI's error
    shape. An ASGI middleware inside CORS's, not an exception handler: Starlette runs a handler of
    Exception outside every middleware, so its 500 would lack the CORS headers and an allowed
    page would see a CORS failure instead of the error. Once a response has started (a stream)
    nothing can be sent instead: the error goes on up, and the connection ends."""

    def __init__(self, app: ASGIApp, reporter: Reporter):
        self.app, self.reporter = app, reporter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as error:
            if started:
                raise
            await error_response(unexpected(error, self.reporter))(scope, receive, send)


def create_app(service: Service, limits: Limits, reporter: Reporter) -> FastAPI:
    """The application serving `service`'s model within `limits`. Uploads go to a private folder
    made when the server starts and removed when it stops."""
    line = ModelLine(service, limits.queue)
    state: dict[str, Any] = {"started": int(time.time())}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        uploads = Path(tempfile.mkdtemp(prefix="malmm-serve-"))  # mode 0700: this user's alone
        app.state.uploads = uploads
        app.state.videos = UploadStore(uploads, limits.upload_ttl, limits.max_upload, limits.upload_space)
        state["policy"] = VideoPolicy(limits.allowed, uploads, limits.remote, app.state.videos)
        try:
            yield
        finally:
            app.state.videos.clear()
            shutil.rmtree(uploads, ignore_errors=True)

    app = FastAPI(title="malmm", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(UnforeseenErrors, reporter=reporter)  # added first: inside CORS, whose headers it gets
    if limits.cors_origins:  # else no CORS headers: browsers on other origins cannot read the answers
        app.add_middleware(
            CORSMiddleware, allow_origins=list(limits.cors_origins), allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"], expose_headers=["Retry-After"], max_age=600,
        )  # fmt: skip

    @app.exception_handler(ApiError)
    async def refused(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(HTTPException)
    async def not_here(request: Request, error: HTTPException) -> JSONResponse:
        words = {404: f"no such endpoint: {request.method} {request.url.path}",
                 405: f"{request.method} is not allowed on {request.url.path}"}  # fmt: skip
        return error_response(ApiError(words.get(error.status_code, str(error.detail)), status=error.status_code,
                                       code="not_found" if error.status_code == 404 else None))  # fmt: skip

    @app.exception_handler(ClientGone)
    async def gone(request: Request, error: ClientGone) -> Response:
        return Response(status_code=499)  # nginx's "client closed request": nobody reads it

    def authorized(request: Request) -> None:
        if limits.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError("missing API key: send the header Authorization: Bearer KEY", status=401,
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
        if not hmac.compare_digest(token.strip().encode(), limits.api_key.encode()):
            raise ApiError("wrong API key", status=401, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorized)]
    app.include_router(upload_routes(guarded))
    app.include_router(page_routes())

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Unguarded, for load balancers: whether the model is loaded, where, and the line for it."""
        return {"status": "ok", "model": service.model_id, "device": service.device, "queued": line.queued,
                "reading": line.reading}  # fmt: skip

    @app.get("/v1/models", dependencies=guarded)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": service.model_id, "object": "model", "created": state["started"],
                                            "owned_by": "malmm"}]}  # fmt: skip

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat(request: Request) -> Any:
        body = await read_json(request, limits.max_body)
        asked = parse_chat(body, service.defaults)
        limits.caps.check_request(asked)
        try:
            line.check_room()  # before a remote video is downloaded or an upload written
        except QueueFull as full:
            raise busy(full, line.queued) from None
        video = await asyncio.to_thread(state["policy"].open, asked.video, asked.still)  # an upload is written
        try:
            await asyncio.to_thread(check_video, asked, video, limits.caps)
        except BaseException:
            video.remove()
            raise
        events: asyncio.Queue[str | Grown | None] = asyncio.Queue()
        tell = handed_to(asyncio.get_running_loop(), events.put_nowait)
        progress = FrameCount(tell) if asked.stream else None
        started = time.monotonic()
        job = Job(asked, video.path, progress, on_text=(lambda text: tell(Grown(text))) if asked.stream else None)
        try:
            line.submit(job)
        except QueueFull as full:
            video.remove()
            raise busy(full, line.queued) from None
        job.answer.add_done_callback(lambda _: video.remove())  # read, failed, dropped or stopped
        ident, created = completion_id(), int(time.time())
        if asked.stream:
            job.answer.add_done_callback(lambda _: tell(None))
            return StreamingResponse(
                stream(asked, video, job, events, ident, created, service.model_id, reporter, started),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )  # fmt: skip
        reply = await answered(job, request, reporter, video)
        reporter.info(f"{asked.task.name} {described(video)}: {time.monotonic() - started:.1f} s")
        return completion(ident, service.model_id, reply.content, result_record(reply, video), reply.usage, created)

    return app


async def answered(job: Job, request: Request, reporter: Reporter, video: Video) -> Reply:
    """The job's reply, once read; if the client goes away first, the job is cancelled (dropped
    from the line, or its reading stopped) and nothing is answered."""
    waiting = asyncio.wrap_future(job.answer)
    while True:
        done, _ = await asyncio.wait({waiting}, timeout=CLIENT_CHECK_SECONDS)
        if done:
            break
        if await request.is_disconnected():
            abandon(job, video, reporter)
            raise ClientGone
    try:
        return waiting.result()
    except ApiError:
        raise
    except Exception as error:
        raise unexpected(error, reporter) from None


def abandon(job: Job, video: Video, reporter: Reporter, how: str = "") -> None:
    """Its client went away: the job is dropped from the line, or its reading stopped; one line says so."""
    job.cancel()
    reporter.info(f"{job.request.task.name} {described(video)}{how}: the client went away, its reading stopped")


class ClientGone(Exception):
    """The client closed its connection before its answer was ready: nobody to answer."""


def check_video(asked: ChatRequest, video: Video, caps: Caps) -> None:
    """The video's length (and the frames an fps reads from it) against the caps, probed before the
    request takes its place in the line; an unreadable video is said as the reading would say it."""
    if not caps.needs_probe(asked):
        return
    from malmm_cli.media.plans import VideoError
    from malmm_cli.media.probe import probe

    try:
        info = probe(video.path)
    except VideoError as error:
        raise ApiError(str(error), code="unreadable_video") from None
    caps.check_video(asked, info)


def handed_to(loop: asyncio.AbstractEventLoop, receive: Callable[[Any], None]) -> Callable[[Any], None]:
    """`receive`, called on the event loop's thread from any other; nothing once the loop has closed
    (a request still being read when the server stopped)."""

    def hand(item: Any) -> None:
        with suppress(RuntimeError):
            loop.call_soon_threadsafe(receive, item)

    return hand


async def stream(
    asked: ChatRequest,
    video: Video,
    job: Job,
    events: asyncio.Queue[str | Grown | None],
    ident: str,
    created: int,
    model: str,
    reporter: Reporter,
    started: float,
) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format: the role first, reading progress as SSE comments
    (clients skip them), the answer's words as they are generated (where the answer is one text and
    decoding greedy; else the whole answer once read), then the end with the `malmm` record (and the
    usage, if asked for), and [DONE]. A failure after the start is an error event."""

    def event(data: dict[str, Any]) -> str:
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    sent = ""  # the answer's text sent so far
    try:
        yield event(chunk(ident, model, created, {"role": "assistant", "content": ""}))
        while (said := await events.get()) is not None:
            if isinstance(said, Grown):
                words = settled(said.text)
                if len(words) > len(sent) and words.startswith(sent):
                    yield event(chunk(ident, model, created, {"content": words[len(sent) :]}))
                    sent = words
            else:
                yield f": {said}\n\n"
    finally:  # the client went away (the response is cancelled) or the answer is ready
        if not job.answer.done():
            abandon(job, video, reporter, " (streamed)")
    try:
        reply: Reply = job.answer.result()
    except ApiError as error:
        yield event(error.body())
    except Exception as error:
        yield event(unexpected(error, reporter).body())
    else:
        reporter.info(f"{asked.task.name} {described(video)} (streamed): {time.monotonic() - started:.1f} s")
        if not reply.content.startswith(sent):  # never so far: the words sent are not how the answer begins
            error = RuntimeError(f"the streamed words {sent!r} do not begin the answer {reply.content!r}")
            yield event(unexpected(error, reporter).body())
            yield "data: [DONE]\n\n"
            return
        if reply.content[len(sent) :]:
            yield event(chunk(ident, model, created, {"content": reply.content[len(sent) :]}))
        yield event(chunk(ident, model, created, {}, "stop", malmm=result_record(reply, video)))
        if asked.include_usage:
            yield event(chunk(ident, model, created, None, usage=reply.usage))
    yield "data: [DONE]\n\n"


@dataclass(frozen=True)
class Grown:
    """The answer so far, while it is generated."""

    text: str


def settled(text: str) -> str:
    """What of an answer being generated later tokens will not change: its text up to its last
    whitespace (a word may still grow), and nothing from a half-decoded character on."""
    text = text.split("\ufffd", 1)[0]
    cut = max(text.rfind(" "), text.rfind("\n"))
    return text[: cut + 1] if cut >= 0 else ""


def result_record(reply: Reply, video: Video) -> dict[str, Any]:
    """What the command line's JSON has, naming the video as the client did (an upload by its type
    and size: its file was the server's own, and is gone)."""
    record = reply.result.to_dict()
    record.pop("file_base64", None)
    return {**video.shown, **{key: value for key, value in record.items() if key != "file"}}


def described(video: Video) -> str:
    upload = video.shown.get("upload")
    return str(video.shown["file"]) if upload is None else f"an upload of {upload['bytes']} bytes"


def busy(full: QueueFull, queued: int) -> ApiError:
    """429: the line for the model is full, and when to come back."""
    return ApiError(f"the model is busy: {queued} requests are waiting for it; retry after {full.retry_after} s",
                    status=429, kind="rate_limit_error", code="queue_full",
                    headers={"Retry-After": str(full.retry_after)})  # fmt: skip


def unexpected(error: BaseException, reporter: Reporter) -> ApiError:
    """An error nobody foresaw: one line in the server's log, a plain 500 to the client."""
    first = (str(error).strip().splitlines() or [""])[0]
    reporter.error(f"a request failed: {type(error).__name__}: {first}")
    return ApiError("the server failed to answer (its log says why)", status=500, kind="server_error",
                    code="internal_error")  # fmt: skip


async def read_json(request: Request, limit: int) -> object:
    """The request's JSON body, refused when it is larger than `limit` bytes (before it is all read
    when its length is declared), not JSON, or declared as another type."""
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if kind not in JSON_TYPES:
        raise ApiError(f"send the body as application/json, not {kind}", status=415, code="unsupported_media_type")
    too_large = ApiError(f"the request body is larger than this server takes ({limit} bytes, --max-body)",
                         status=413, code="body_too_large")  # fmt: skip
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise too_large
        parts.append(part)
    try:
        return json.loads(b"".join(parts))
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(f"the request body is not valid JSON: {error}", code="invalid_json") from None
