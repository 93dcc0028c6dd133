"""serve: the model behind an OpenAI-compatible HTTP API (the job is jobs/serve.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from malmm_cli.commands.options import (
    BatchOption,
    BeamsOption,
    CheckpointOption,
    DeviceOption,
    DtypeOption,
    MaxTokensOption,
    MemoryOption,
    ModelOption,
    NoCacheOption,
    QuantizeOption,
    QuantizeVisionOption,
    QuietOption,
    SeekOption,
    WorkersOption,
    parse_attempts,
    parse_count,
    parse_positive,
    parse_seconds,
    parse_whole,
)
from malmm_cli.commands.progress import Reporter
from malmm_cli.commands.terminal import refusals, stopped_by
from malmm_cli.jobs.model import RunOptions
from malmm_cli.jobs.serve import ServeOptions
from malmm_cli.jobs.serve import serve as serve_job
from models.presets import DEFAULT_MODEL


def parse_port(text: str) -> int:
    port = parse_whole(text, 0)
    if port > 65535:
        raise typer.BadParameter(f"must be 65535 or less, not {port}")
    return port


def parse_cap_seconds(text: str | float) -> float:
    """A duration as --segment takes it (14400, 4h, 04:00:00), or 0: no cap."""
    if isinstance(text, (int, float)) or text.strip() in ("0", "0s", "0.0"):
        return float(text)
    return parse_seconds(text)


def serve(
    host: Annotated[
        str, typer.Option("--host", metavar="ADDR", help="Address to listen on; any but loopback needs --api-key.")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option("--port", "-p", metavar="PORT", parser=parse_port, help="Port to listen on (0: any free one)."),
    ] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            metavar="KEY",
            envvar="MALMM_API_KEY",
            help="Clients must send Authorization: Bearer KEY.",
        ),
    ] = None,
    allow_dir: Annotated[
        list[Path] | None,
        typer.Option(
            "--allow-dir",
            metavar="DIR",
            help="Requests may name videos under DIR (repeat for several); by default only uploads are read.",
        ),
    ] = None,
    max_body: Annotated[
        int,
        typer.Option("--max-body", metavar="MB", parser=parse_count, help="Largest request body (an upload), in MiB."),
    ] = 256,
    queue: Annotated[
        int,
        typer.Option(
            "--queue",
            metavar="N",
            parser=parse_attempts,
            help="Requests that may wait while one is read; more are answered 429.",
        ),
    ] = 8,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Fetch http(s):// video and image URLs (public addresses only, at most 5 redirects).",
        ),
    ] = False,
    remote_max_mb: Annotated[
        int,
        typer.Option("--remote-max-mb", metavar="MB", parser=parse_count, help="Largest remote file, in MiB."),
    ] = 2048,
    remote_timeout: Annotated[
        float,
        typer.Option(
            "--remote-timeout",
            metavar="SECONDS",
            parser=parse_positive,
            help="Time a remote download may take, redirects included.",
        ),
    ] = 300.0,
    max_frames: Annotated[
        int,
        typer.Option(
            "--max-frames",
            metavar="N",
            parser=parse_count,
            help="Most frames one request reads (frames, or fps times the video's length).",
        ),
    ] = 1000,
    max_duration: Annotated[
        float,
        typer.Option(
            "--max-duration",
            metavar="TIME",
            parser=parse_cap_seconds,
            help="Longest video a request reads (seconds, or 4h, 01:30:00); 0: any length.",
        ),
    ] = 14400.0,
    max_question: Annotated[
        int,
        typer.Option("--max-question", metavar="CHARS", parser=parse_count, help="Longest question, in characters."),
    ] = 4000,
    max_labels: Annotated[
        int,
        typer.Option("--max-labels", metavar="N", parser=parse_count, help="Most labels one request ranks."),
    ] = 1000,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            metavar="ORIGIN",
            help="Web pages from ORIGIN (https://host[:port]) may read the answers (repeat for several; "
            "'*' needs --api-key); by default no page on another origin may.",
        ),
    ] = None,
    upload_ttl: Annotated[
        int,
        typer.Option(
            "--upload-ttl",
            metavar="SECONDS",
            parser=parse_count,
            help="How long a video uploaded with POST /v1/videos is kept (deleted sooner by DELETE).",
        ),
    ] = 3600,
    max_upload: Annotated[
        int,
        typer.Option(
            "--max-upload", metavar="MB", parser=parse_count, help="Largest video POST /v1/videos takes, in MiB."
        ),
    ] = 2048,
    upload_space: Annotated[
        int,
        typer.Option(
            "--upload-space",
            metavar="MB",
            parser=parse_count,
            help="Disk space the uploaded videos may take together, in MiB; more uploads are refused.",
        ),
    ] = 8192,
    model: ModelOption = DEFAULT_MODEL,
    checkpoint: CheckpointOption = None,
    memory: MemoryOption = "malmm",
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quantize: QuantizeOption = "auto",
    quantize_vision: QuantizeVisionOption = "none",
    max_new_tokens: MaxTokensOption = None,
    num_beams: BeamsOption = None,
    batch_size: BatchOption = None,
    seek: SeekOption = "exact",
    decode_workers: WorkersOption = 1,
    no_cache: NoCacheOption = False,
    quiet: QuietOption = False,
) -> None:
    """Serve the model over HTTP, loaded once: OpenAI's POST /v1/chat/completions with a video_url
    part (a path under --allow-dir, a data:video/...;base64 upload, an http(s) URL with
    --allow-remote, or malmm://videos/ID, a video uploaded with POST /v1/videos) or an image_url part
    (a still), GET /v1/models, GET /health, and a page at / for a person.

    A request reads its video as caption, ask or predict would, with their defaults; the text is the
    question (none: a caption). Requests are read one at a time. docs/serve.md has examples.
    """
    reporter = Reporter(quiet=quiet)
    with refusals():
        options = RunOptions(
            model=model, checkpoint=checkpoint, memory=memory, device=device, dtype=dtype, quantize=quantize,
            quantize_vision=quantize_vision, max_new_tokens=max_new_tokens, num_beams=num_beams,
            batch_size=batch_size, seek=seek, decode_workers=decode_workers, no_cache=no_cache, quiet=quiet,
        )  # fmt: skip
    settings = ServeOptions(host=host, port=port, api_key=api_key, allow_dirs=list(allow_dir or []),
                            max_body_mb=max_body, queue=queue, allow_remote=allow_remote, remote_max_mb=remote_max_mb,
                            remote_timeout=remote_timeout, max_frames=max_frames, max_duration=max_duration,
                            max_question=max_question, max_labels=max_labels,
                            cors_origins=list(cors_origin or []), upload_ttl=upload_ttl, max_upload_mb=max_upload,
                            upload_space_mb=upload_space)  # fmt: skip
    try:
        with refusals(reporter):
            serve_job(settings, options, reporter)
    except KeyboardInterrupt as interrupt:
        word, status = stopped_by(interrupt)
        reporter.console.print(f"{word}: the server stopped.")
        raise typer.Exit(status) from None
