"""OpenAI's chat completion request and response, for a video: what a request asks of the model in
the command line's terms (a task, RunOptions), checked with the command line's own rules and
words, and the answer in OpenAI's shapes. Plain data only: no web framework, no torch."""

from __future__ import annotations

import dataclasses
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from malmm_cli.jobs.errors import UsageError
from malmm_cli.jobs.model import RunOptions
from malmm_cli.jobs.videos import VideoTask, ask_task, caption_task, check_concat, predict_task
from malmm_cli.media.timefmt import parse_duration
from malmm_cli.wording import counted
from models.presets import MEMORY_STRATEGIES

TASKS = ("caption", "ask", "predict")
# Fields that set how a video is read, as top-level fields of the request or in its "malmm" object
# (the command line's option, with `_` for `-`; max_tokens is OpenAI's name for --max-new-tokens).
READING_FIELDS = ("frames", "fps", "memory_bank_length", "memory", "num_beams", "segment", "every", "top_k")
TASK_FIELDS = {"segment": "caption", "every": "predict", "top_k": "predict", "labels": "predict"}
# vLLM's names, in mm_processor_kwargs and media_io_kwargs.video (lmms-eval sends its max_frames_num there)
VLLM_ALIASES = {"fps": "fps", "num_frames": "frames"}
# The command line's option names in its messages, as the request names them
OPTION_FIELDS = {
    "--frames/--fps": "frames/fps", "--frames": "frames", "--fps": "fps", "--memory-bank-length": "memory_bank_length",
    "--memory": "memory", "--max-new-tokens": "max_tokens", "--num-beams": "num_beams", "--segment": "segment",
    "--every": "every", "--top-k": "top_k", "--labels": "labels",
}  # fmt: skip


class ApiError(Exception):
    """A request the server refuses, said in OpenAI's error shape: status, message, the field to
    blame (param), a machine-readable code, and OpenAI's error type."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
        kind: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.kind = message, param, code, status, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    """What one chat completion asks: the task (as `malmm caption|ask|predict` would run it), the
    options it runs with, the video as the client named it, and how to answer."""

    task: VideoTask
    options: RunOptions
    video: str
    stream: bool = False
    include_usage: bool = False
    still: bool = False  # the video is an image_url's still, read as a one-frame video


def as_fields(message: str) -> str:
    """A command line message in the request's words: `--memory-bank-length` is `memory_bank_length`."""
    return re.sub(r"--[a-z][a-z-]*(?:/--[a-z][a-z-]*)?", lambda m: OPTION_FIELDS.get(m.group(0), m.group(0)), message)


def invalid(field: str, reason: str) -> ApiError:
    """A value the command line would refuse, in its words (`Invalid value for '--frames': ...`)."""
    return ApiError(f"Invalid value for '{field}': {reason}", param=field, code="invalid_value")


def whole(field: str, value: object, least: int = 1) -> int:
    """A whole number, as the command line parses one (a JSON number or its text)."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            number = None
    if number is None:
        raise invalid(field, f"{value!r} is not a whole number")
    if number < least:
        raise invalid(field, f"must be {least} or more, not {number}")
    return number


def rate(field: str, value: object) -> float:
    """Frames per second: a positive, finite number."""
    try:
        number = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None:
        raise invalid(field, f"{value!r} is not a number")
    if not (number > 0 and math.isfinite(number)):
        raise invalid(field, f"must be a positive number of frames per second, not {value}")
    return number


def seconds(field: str, value: object) -> float:
    """A duration: seconds as a number, or text as the command line takes it (90s, 1m30s, 00:01:30)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise invalid(field, f"{value!r} is not a duration")
    try:
        return parse_duration(value if isinstance(value, str) else repr(value))
    except ValueError as error:
        raise invalid(field, str(error)) from None


def choice(field: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise invalid(field, f"{value!r} is not one of: {', '.join(choices)}")
    return str(value)


def _object(value: object, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError(f"{field} must be a JSON object", param=field, code="invalid_type")
    return value


def _reading_fields(body: dict[str, Any], extra: dict[str, Any]) -> dict[str, tuple[str, object]]:
    """Each reading field given, with where it was given: top level, the malmm object, or vLLM's
    mm_processor_kwargs or media_io_kwargs.video. The same field given twice, differently, is
    refused."""
    found: dict[str, tuple[str, object]] = {}

    def give(field: str, where: str, value: object) -> None:
        if value is None:
            return
        if field in found and found[field][1] != value:
            raise ApiError(
                f"{field} is given twice ({found[field][0]} and {where}), differently: give it once",
                param=field, code="conflicting_fields",
            )  # fmt: skip
        found.setdefault(field, (where, value))

    for field in READING_FIELDS:
        give(field, field, body.get(field))
        give(field, f"malmm.{field}", extra.get(field))
    kwargs = _object(body.get("mm_processor_kwargs"), "mm_processor_kwargs")
    media = _object(_object(body.get("media_io_kwargs"), "media_io_kwargs").get("video"), "media_io_kwargs.video")
    for alias, field in VLLM_ALIASES.items():
        give(field, f"mm_processor_kwargs.{alias}", kwargs.get(alias))
        give(field, f"media_io_kwargs.video.{alias}", media.get(alias))
    for where in ("max_tokens", "max_completion_tokens"):
        give("max_tokens", where, body.get(where))
    return found


def _content(body: dict[str, Any]) -> tuple[str, list[tuple[str, bool]]]:
    """The question (the text of the last user message) and every video and still of the user's
    messages (the URL, and whether it is a still)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError("messages must be a non-empty list of messages", param="messages", code="invalid_type")
    videos: list[tuple[str, bool]] = []
    text = ""
    for number, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ApiError(f"messages[{number}] is not an object", param="messages", code="invalid_type")
        if message.get("role") != "user":  # system prompts and earlier answers: the model reads the video only
            continue
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise ApiError(f"messages[{number}].content must be text or a list of parts", param="messages",
                           code="invalid_type")  # fmt: skip
        texts = []
        for part in parts:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind in ("video_url", "image_url", "input_image"):
                field = "image_url" if kind == "input_image" else kind  # the Responses API's name for a still
                video = part.get(field)
                url = video.get("url") if isinstance(video, dict) else video
                if not isinstance(url, str) or not url.strip():
                    raise ApiError(f"a {kind} part needs a url: {{\"{field}\": {{\"url\": ...}}}}",
                                   param="messages", code="invalid_type")  # fmt: skip
                videos.append((url.strip(), kind != "video_url"))
            else:
                raise ApiError(f"content parts of type {kind!r} are not read: text, video_url and image_url are",
                               param="messages", code="unsupported_content")  # fmt: skip
        text = "\n".join(texts).strip()
    return text, videos


def parse_chat(body: object, defaults: RunOptions) -> ChatRequest:
    """The task and options a chat completion request asks for, checked as the command line checks
    them (its defaults, its messages); ApiError says what is wrong with it."""
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object", code="invalid_type")
    text, videos = _content(body)
    if not videos:
        raise ApiError('no video: add a content part {"type": "video_url", "video_url": {"url": ...}} (or an '
                       "image_url part, for a still)", param="messages", code="missing_video")  # fmt: skip
    if len(videos) > 1:
        stills = sum(still for _, still in videos)
        moving = len(videos) - stills
        has = " and ".join(counted(n, word) for n, word in ((moving, "video"), (stills, "image")) if n)
        one = "one video or one image" if stills else "one video"
        raise ApiError(f"{one} per request: this one has {has} (send each in a request of its own)",
                       param="messages", code="too_many_videos")  # fmt: skip
    if body.get("n") not in (None, 1):
        raise ApiError("one answer per request: n must be 1", param="n", code="unsupported_value")
    extra = _object(body.get("malmm"), "malmm")
    unknown = sorted(set(extra) - {"task", "labels", *READING_FIELDS})
    if unknown:
        raise ApiError(f"malmm has no field {unknown[0]!r}: it takes task, labels, {', '.join(READING_FIELDS)}",
                       param=f"malmm.{unknown[0]}", code="unknown_field")  # fmt: skip
    given = _reading_fields(body, extra)
    labels = _labels(extra.get("labels"))
    task = extra.get("task")
    if task is None:
        task = "predict" if labels is not None else "ask" if text else "caption"
    task = choice("malmm.task", task, TASKS)
    if task == "ask" and not text:
        raise ApiError("the ask task needs a question: put it in a text part", param="messages",
                       code="missing_question")  # fmt: skip
    if task != "ask" and text:
        raise ApiError(f"the {task} task reads no question: leave the text out, or leave malmm.task out to ask it",
                       param="messages", code="unexpected_question")  # fmt: skip
    for field, wants in TASK_FIELDS.items():
        if wants != task and (field in given or (field == "labels" and labels is not None)):
            raise ApiError(f"{field} is for the {wants} task, not {task}", param=field, code="unexpected_field")
    values = {field: value for field, (_, value) in given.items()}
    options = _options(defaults, values)
    if task == "caption":
        segment = seconds("segment", values["segment"]) if "segment" in values else None
        chosen = caption_task(segment)
    elif task == "ask":
        chosen = ask_task([text])
    else:
        every = seconds("every", values["every"]) if "every" in values else None
        top_k = whole("top_k", values["top_k"]) if "top_k" in values else 5
        chosen = predict_task(labels, every if every is not None else (None if labels else 60.0), top_k)
    try:
        check_concat(options, chosen.preset)
    except UsageError as error:
        raise ApiError(as_fields(str(error)), param=as_fields(error.option), code="invalid_value") from None
    stream_options = _object(body.get("stream_options"), "stream_options")
    return ChatRequest(
        task=chosen, options=options, video=videos[0][0], stream=body.get("stream") is True,
        include_usage=stream_options.get("include_usage") is True, still=videos[0][1],
    )  # fmt: skip


def _labels(value: object) -> list[str] | None:
    """Closed-set labels to rank: distinct non-empty strings (one given twice is ranked once, as
    `malmm predict --labels` ranks it)."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(label, str) for label in value):
        raise invalid("labels", "give a non-empty list of labels (strings)")
    labels = [label.strip() for label in value if label.strip()]
    if not labels:
        raise invalid("labels", "every label is empty")
    return list(dict.fromkeys(labels))


def _options(defaults: RunOptions, values: dict[str, object]) -> RunOptions:
    """The server's options with the request's own, checked by RunOptions as the command line's are."""
    changes: dict[str, object] = {}
    if "frames" in values:
        changes["frames"] = whole("frames", values["frames"])
    if "fps" in values:
        changes["fps"] = rate("fps", values["fps"])
    if "memory_bank_length" in values:
        changes["memory_bank_length"] = whole("memory_bank_length", values["memory_bank_length"])
    if "memory" in values:
        changes["memory"] = choice("memory", values["memory"], MEMORY_STRATEGIES)
    if "num_beams" in values:
        changes["num_beams"] = whole("num_beams", values["num_beams"])
    if "max_tokens" in values:
        changes["max_new_tokens"] = whole("max_tokens", values["max_tokens"])
    try:
        return dataclasses.replace(defaults, **changes)
    except UsageError as error:
        raise ApiError(as_fields(str(error)), param=as_fields(error.option), code="invalid_value") from None


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion(
    ident: str, model: str, content: str, result: dict[str, Any], usage: dict[str, int], created: int | None = None
) -> dict[str, Any]:
    """A chat.completion object: the answer as the message, what the command line's JSON has as `malmm`."""
    return {
        "id": ident, "object": "chat.completion", "created": created or int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": usage, "malmm": result,
    }  # fmt: skip


def chunk(
    ident: str, model: str, created: int, delta: dict[str, Any] | None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    """A chat.completion.chunk: one delta of choice 0 (none: the usage chunk that ends a stream)."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices,
            **extra}  # fmt: skip
