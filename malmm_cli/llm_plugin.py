"""malmm as a model of simonw/llm: `llm -m malmm -a clip.mp4 "what happens?"` (no prompt: a caption).

A front end beside the command line: llm reads the prompt and the video attachment, and this
plugin answers either with the model loaded here, read exactly as `malmm ask` / `malmm caption`
read one video, or, with `-o server URL`, by asking a running `malmm serve` in OpenAI's chat
format. Both build the same chat request, so the server's checks and words apply to both.

llm imports every plugin when it starts (`llm models`, `llm --help`): nothing here imports torch,
the reading layer or httpx until a prompt runs.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import llm
from pydantic import Field

if TYPE_CHECKING:
    from malmm_cli.jobs.server.service import VideoService

# What `-a FILE` may be: videos (stills are not read yet). llm checks each attachment's type first.
VIDEO_TYPES = frozenset({"video/mp4", "video/webm", "video/quicktime", "video/x-matroska", "video/x-msvideo",
                         "video/mpeg", "video/mp2t", "video/x-flv", "video/3gpp", "video/ogg"})  # fmt: skip
LOCAL_ONLY = ("model", "device", "quantize")  # how this process loads the model; a server has its own


@llm.hookimpl
def register_models(register: Any) -> None:
    register(MalmmModel())


class MalmmModel(llm.KeyModel):
    """MA-LMM on one video attachment: the prompt is the question; without one, a caption."""

    model_id = "malmm"
    attachment_types = VIDEO_TYPES
    can_stream = False  # beam search: the answer is final only once every beam ends (as the server's)
    needs_key = "malmm"  # `llm keys set malmm`, or MALMM_API_KEY, as `malmm serve` reads it
    key_env_var = "MALMM_API_KEY"

    class Options(llm.Options):
        frames: int | None = Field(None, description="frames read, spread over the video (default: the task's)")
        fps: float | None = Field(None, description="frames read per second of video, instead of frames")
        memory_bank_length: int | None = Field(None, description="frames the memory bank keeps")
        segment: str | None = Field(None, description="caption: also caption every N seconds (90, 90s, 1m30s)")
        num_beams: int | None = Field(None, description="beams of the beam search")
        max_tokens: int | None = Field(None, description="most tokens of the answer (--max-new-tokens)")
        model: str | None = Field(None, description="local: the model folder or hub name to load")
        device: str | None = Field(None, description="local: auto, cpu, cuda, cuda:N, mps")
        quantize: str | None = Field(None, description="local: auto, none, 8bit, 4bit")
        server: str | None = Field(None, description="ask a `malmm serve` at this URL instead of loading here")
        api_key: str | None = Field(None, description="server: its --api-key (or `llm keys set malmm`)")
        send_path: bool = Field(False, description="server: send a file's path, not its bytes (--allow-dir)")

    def __init__(self) -> None:
        # The loaded model, per (model, device, quantize): a conversation or a Python caller loads it once
        self._services: dict[tuple[str, str, str], VideoService] = {}

    def get_key(self, explicit_key: str | None = None) -> str | None:
        """The key if one is set; none is fine (the local model, or a server on loopback without one)."""
        return llm.get_key(explicit_key, self.needs_key, self.key_env_var)

    def execute(
        self, prompt: llm.Prompt, stream: bool, response: llm.Response, conversation: Any, key: str | None = None
    ) -> Iterator[str]:
        options, text = prompt.options, prompt.prompt or ""  # llm 0.22 gives None without a prompt
        video = self._video(prompt, conversation)
        if options.server:
            given = [name for name in LOCAL_ONLY if getattr(options, name) is not None]
            if given:
                raise llm.ModelError(f"-o {given[0]} is for the model loaded here: a server loads its own "
                                     "(malmm serve --model ... --device ...); leave it out with -o server")  # fmt: skip
            if options.api_key:  # -o api_key: the key itself, or the name of one set with `llm keys set`
                key = self.get_key(options.api_key)
            answer = self._ask_server(options, text, video, key)
        else:
            if video.url:
                raise llm.ModelError(f"{video.url}: URLs are read by a server only (-o server URL); "
                                     "download the video and attach the file")  # fmt: skip
            answer = self._ask_here(options, text, video)
        content, usage, record = answer
        response.response_json = record
        if usage:
            response.set_usage(input=usage.get("prompt_tokens"), output=usage.get("completion_tokens"))
        yield content

    def _video(self, prompt: llm.Prompt, conversation: Any) -> llm.Attachment:
        """The one video: this prompt's, or else the latest of the conversation (`llm -c "and then?"`)."""
        videos = list(prompt.attachments)
        if not videos and conversation is not None:
            for earlier in reversed(conversation.responses):
                if earlier.prompt.attachments:
                    videos = list(earlier.prompt.attachments)
                    break
        if not videos:
            raise llm.ModelError("malmm reads a video: attach one with -a clip.mp4")
        if len(videos) > 1:
            raise llm.ModelError(f"one video per prompt: this one has {len(videos)} (ask about each on its own)")
        return videos[0]

    def _ask_here(self, options: Any, text: str, video: llm.Attachment) -> tuple[str, dict, dict]:
        """Read the video with the model loaded in this process, as `malmm ask|caption` reads it."""
        from malmm_cli.jobs.errors import SetupError, UsageError
        from malmm_cli.jobs.model import RunOptions
        from malmm_cli.jobs.server.chat import ApiError, parse_chat
        from models.presets import DEFAULT_MODEL

        load = (options.model or DEFAULT_MODEL, options.device or "auto", options.quantize or "auto")
        try:
            defaults = RunOptions(model=load[0], device=load[1], quantize=load[2])
            with _as_file(video) as path:
                asked = parse_chat(chat_body(options, text, str(path)), defaults)
                service = self._services.get(load) or self._load(defaults)
                self._services[load] = service
                reply = service.answer_one(asked, path)
        except ApiError as error:
            raise llm.ModelError(error.message) from None
        except (SetupError, UsageError) as error:
            raise llm.ModelError(str(error)) from None
        record = {key: value for key, value in reply.result.to_dict().items() if key != "file_base64"}
        return reply.content, reply.usage, record

    def _load(self, defaults: Any) -> VideoService:
        """The model, loaded as `malmm serve` loads it (planned for the largest default task)."""
        import importlib.util

        missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
        if missing:  # llm installed beside malmm without its model stack
            raise llm.ModelError(f"the local model needs {' and '.join(missing)}: pip install 'malmm[llm]' "
                                 "(or ask a running server: -o server http://HOST:8000)")  # fmt: skip
        from malmm_cli.jobs.serve import load_service

        return load_service(defaults, WarningsToStderr())

    def _ask_server(self, options: Any, text: str, video: llm.Attachment, key: str | None) -> tuple[str, dict, dict]:
        """Ask a `malmm serve` with OpenAI's chat completion request; its refusals are said as given."""
        import httpx

        url = options.server.rstrip("/")
        if urlsplit(url).scheme not in ("http", "https"):
            raise llm.ModelError(f"-o server takes the server's URL, http://HOST:PORT, not {options.server!r}")
        url = url if url.endswith("/v1") else f"{url}/v1"
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        body = chat_body(options, text, _video_url(video, options))
        try:  # no timeout: a long video reads for minutes
            reply = httpx.post(f"{url}/chat/completions", json=body, headers=headers, timeout=None)
        except httpx.HTTPError as error:
            raise llm.ModelError(f"cannot reach the malmm server at {options.server}: {error}") from None
        try:
            answer = reply.json()
        except ValueError:
            answer = None
        if reply.status_code != 200 or not isinstance(answer, dict) or "choices" not in answer:
            error = answer.get("error") if isinstance(answer, dict) else None
            message = error.get("message") if isinstance(error, dict) else reply.text[:200]
            raise llm.ModelError(f"the malmm server refused ({reply.status_code}): {message}")
        return answer["choices"][0]["message"]["content"], answer.get("usage") or {}, answer.get("malmm") or {}


def chat_body(options: Any, text: str, video_url: str) -> dict[str, Any]:
    """The chat completion request for one video: the question as text (none: a caption), llm's
    options as the server's fields (`malmm serve` and the local model read the same body)."""
    parts: list[dict[str, Any]] = [{"type": "video_url", "video_url": {"url": video_url}}]
    if text.strip():
        parts.append({"type": "text", "text": text})
    fields = {name: getattr(options, name) for name in ("frames", "fps", "memory_bank_length", "num_beams",
                                                         "max_tokens", "segment")}  # fmt: skip
    return {"model": "malmm", "messages": [{"role": "user", "content": parts}],
            **{name: value for name, value in fields.items() if value is not None}}  # fmt: skip


def _video_url(video: llm.Attachment, options: Any) -> str:
    """How the server gets the video: a URL as given; a file's bytes as a data: upload (any server
    reads it); its absolute path with -o send_path true (a server on this machine with --allow-dir)."""
    if video.url:
        return video.url
    if video.path and options.send_path:
        return Path(video.path).resolve().as_uri()
    kind = video.resolve_type() or "video/mp4"
    return f"data:{kind};base64,{video.base64_content()}"


@contextmanager
def _as_file(video: llm.Attachment) -> Iterator[Path]:
    """The attachment as a file to read: its path, or its bytes (`-a -`) in a private file for the read."""
    if video.path:
        yield Path(video.path)
        return
    handle, name = tempfile.mkstemp(prefix="malmm-llm-", suffix=".video")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(video.content_bytes())
        yield Path(name)
    finally:
        os.unlink(name)


class WarningsToStderr:
    """A Reporter for llm: the answer goes to stdout through llm; only warnings and errors (a
    checkpoint that did not fit) are said, on stderr."""

    def __init__(self) -> None:
        from malmm_cli.jobs.reporting import Silent

        self._silent = Silent()

    def warn(self, message: str) -> None:
        print(f"malmm: {message}", file=sys.stderr)

    def error(self, message: str) -> None:
        print(f"malmm: {message}", file=sys.stderr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._silent, name)
