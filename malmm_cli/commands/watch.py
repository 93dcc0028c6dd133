"""watch: caption a live stream as it plays."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import typer.core

from malmm_cli.commands.options import (
    BankOption,
    BatchOption,
    BeamsOption,
    CheckpointOption,
    DeviceOption,
    DtypeOption,
    MaxTokensOption,
    MemoryOption,
    ModelOption,
    QuantizeOption,
    QuantizeVisionOption,
    QuietOption,
    choice_of,
    metavar_of,
    parse_attempts,
    parse_rate,
    parse_seconds,
)
from malmm_cli.commands.terminal import EXIT_FAILED, EXIT_OK, Terminated, refusals, stopped_by
from malmm_cli.jobs.model import RunOptions, check_checkpoint, load_model
from malmm_cli.media.names import shown
from malmm_cli.output.events import EVENT_FORMATS
from malmm_cli.wording import counted
from models.presets import (
    CAPTION,
    DEFAULT_MODEL,
)

if TYPE_CHECKING:  # the heavy modules (torch, transformers, OpenCV) load only when a command runs
    pass


def watch(
    source: Annotated[str, typer.Argument(metavar="SOURCE", hidden=True, show_default=False)],
    every: Annotated[
        float,
        typer.Option(
            "--every",
            metavar="DURATION",
            parser=parse_seconds,
            help="A caption of each interval of this length.",
        ),
    ] = "10s",  # type: ignore[assignment]  # parsed like a given value: help shows 10s, not 10.0
    question: Annotated[
        str | None, typer.Option("--question", metavar="Q", help="Also answer Q about each interval.")
    ] = None,
    reset_every: Annotated[
        float | None,
        typer.Option(
            "--reset-every",
            metavar="DURATION",
            parser=parse_seconds,
            help="Start the memory afresh every DURATION (a multiple of --every); by default it runs on.",
        ),
    ] = None,
    duration: Annotated[
        float | None,
        typer.Option(
            "--duration", metavar="DURATION", parser=parse_seconds, help="Stop after this much of the stream."
        ),
    ] = None,
    fps: Annotated[
        float, typer.Option("--fps", metavar="FPS", parser=parse_rate, help="Frames read per second of stream.")
    ] = 1.0,
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            "-f",
            metavar=metavar_of(EVENT_FORMATS),
            parser=choice_of(*EVENT_FORMATS),
            help="Events as jsonl (the default when stdout is not a terminal), txt, srt or vtt.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", metavar="FILE", help="Also append every event to FILE, durably."),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            metavar="DURATION",
            parser=parse_seconds,
            help="How long the source may take to open or stay silent before it counts as lost.",
        ),
    ] = "10s",  # type: ignore[assignment]  # parsed like a given value (--every)
    reconnect: Annotated[
        int,
        typer.Option(
            "--reconnect",
            metavar="N",
            parser=parse_attempts,
            help="Reconnect attempts in a row when a network stream or camera is lost (back-off 1, 2, 4... s).",
        ),
    ] = 5,
    model: ModelOption = DEFAULT_MODEL,
    checkpoint: CheckpointOption = None,
    memory_bank_length: BankOption = None,
    memory: MemoryOption = "malmm",
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    quantize: QuantizeOption = "auto",
    quantize_vision: QuantizeVisionOption = "none",
    max_new_tokens: MaxTokensOption = None,
    num_beams: BeamsOption = None,
    batch_size: BatchOption = None,
    quiet: QuietOption = False,
) -> None:
    """Caption a live stream as it plays, every --every of stream time, from the memory of what it
    has seen (never reading back), in memory that stays the same size for hours.

    SOURCE: an RTSP/RTSPS, HTTP(S) (MJPEG, HLS), udp:// or tcp:// URL; a camera (0, /dev/video0);
    a file still being written (MPEG-TS or fragmented MP4, followed like tail -f); or - for
    MPEG-TS on standard input. Events go to stdout as they happen, flushed one by one. When the
    model is slower than the stream, frames are dropped to keep up (each event says how many).
    A lost network stream or camera is reconnected to, keeping the memory and the stream clock.
    Exit status: 0 the stream ended (or --duration), 1 it failed or was lost, 2 usage error,
    130 Ctrl-C (the interval in progress is written first).
    """
    import signal

    from malmm_cli.commands.progress import LiveStatus, Reporter
    from malmm_cli.jobs.loading import vision_batch_size
    from malmm_cli.jobs.watch import check_watch
    from malmm_cli.jobs.watch import watch as watch_stream
    from malmm_cli.media.live import STDIN_ADVICE, SourceError, check_source, check_stdin, parse_source
    from malmm_cli.media.plans import VideoError
    from malmm_cli.output.events import EventWriter, WatchEvent
    from malmm_cli.reading.live import LiveStream
    from malmm_cli.reading.pipeline import Memory, check_memory

    reporter = Reporter(quiet=quiet)
    options = RunOptions(
        model=model, checkpoint=checkpoint, memory_bank_length=memory_bank_length, memory=memory, device=device,
        dtype=dtype, quantize=quantize, quantize_vision=quantize_vision, max_new_tokens=max_new_tokens,
        num_beams=num_beams, batch_size=batch_size, quiet=quiet,
    )  # fmt: skip
    try:
        parsed = parse_source(source)
    except SourceError as error:
        raise typer.BadParameter(str(error), param_hint="SOURCE") from None
    try:
        check_watch(every, fps, reset_every, Memory(options.bank(CAPTION), memory))
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--reset-every/--memory") from None
    with refusals(reporter):
        check_checkpoint(options)
    try:
        if parsed.kind == "stdin":
            check_stdin()  # a terminal, or an MP4 a pipe cannot give, is said before the model loads
        check_source(parsed, timeout)  # a wrong address is said now, not after the model loads
    except SourceError as error:
        reporter.error(f"{parsed.display}: {error}")
        raise typer.Exit(EXIT_FAILED) from None
    fmt = format or ("txt" if sys.stdout.isatty() else "jsonl")
    try:
        writer = EventWriter(fmt, stdout=True, path=output)
    except OSError as error:
        reason = f"cannot write {shown(output)}: {error.strerror or error}"
        raise typer.BadParameter(reason, param_hint="--output") from None
    except ValueError as error:
        raise typer.BadParameter(shown(str(error)), param_hint="--output") from None
    stopped, closed, problems, streams = [], [], [], []
    name = parsed.display  # no password in messages

    def stop_on_ctrl_c(stream: LiveStream) -> None:
        def handler(signum: int, frame: object) -> None:
            stopped.append(Terminated() if signum == signal.SIGTERM else KeyboardInterrupt())
            stream.stop()
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C quits at once
            reporter.info("Stopping: the interval in progress is written (Ctrl-C again to quit now)")

        streams.append(stream)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)  # a service manager stopping watch: the same way out
        status.describe = stream.status

    def write(event: WatchEvent) -> None:
        try:
            writer.write(event)
        except BrokenPipeError:  # the reader of stdout went away (`| head -3`): stop, quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            closed.append(True)
            streams[0].stop()
        except OSError as error:  # --output cannot be written (disk full...): stop, and say so
            problems.append(f"cannot write {output}: {error.strerror or error}")
            streams[0].stop()

    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    status = LiveStatus(reporter, lambda: f"opening {name}")
    try:
        with refusals(reporter):
            malmm = load_model(options, CAPTION, reporter, readers=2 if question else 1)
        bank = Memory(options.bank(CAPTION), memory)
        check_memory(malmm, bank)
        reporter.info(f"Watching {name}: a caption every {every:g} s of stream, {fps:g} frames/s read")
        with status:
            summary = watch_stream(
                malmm, parsed, every=every, fps=fps, question=question, reset_every=reset_every, memory=bank,
                settings=options.generation(CAPTION), on_event=write, duration=duration, timeout=timeout,
                reconnect=reconnect, batch_size=vision_batch_size(malmm, batch_size), notify=reporter.warn,
                on_start=stop_on_ctrl_c,
            )  # fmt: skip
    except KeyboardInterrupt as interrupt:
        word, status = stopped_by(interrupt)
        reporter.console.print(f"{word}.")
        raise typer.Exit(status) from None
    except (VideoError, ValueError) as error:
        if stopped:  # Ctrl-C before the first frame
            word, status = stopped_by(stopped[0])
            reporter.console.print(f"{word} before a frame was read.")
            raise typer.Exit(status) from None
        hint = f" (standard input is read in order, as {STDIN_ADVICE})" if parsed.kind == "stdin" else ""
        reporter.error(f"{name}: {error}{hint}")
        raise typer.Exit(EXIT_FAILED) from None
    finally:
        writer.close()
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    counts = f"{counted(summary.read, 'frame')} read, {summary.dropped} dropped to keep up"
    if stopped:  # Ctrl-C, also when it closed the pipe stdout went to
        word, status = stopped_by(stopped[0])
        reporter.console.print(f"{word}: {counts}.")
        raise typer.Exit(status)
    if problems or summary.failed:
        reporter.error(f"{name}: {problems[0] if problems else summary.ended} ({counts})")
        raise typer.Exit(EXIT_FAILED)
    if not closed:
        reporter.info(
            f"{name}: {'--duration reached' if summary.ended == 'duration' else 'the stream ended'} ({counts})"
        )
    raise typer.Exit(EXIT_OK)
