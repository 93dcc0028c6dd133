"""watch: caption a live stream as it plays."""

from __future__ import annotations

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
from malmm_cli.jobs.model import RunOptions
from malmm_cli.output.events import EVENT_FORMATS
from malmm_cli.wording import counted
from models.presets import DEFAULT_MODEL

if TYPE_CHECKING:  # the job's module loads when the command runs
    from malmm_cli.commands.progress import Reporter
    from malmm_cli.jobs.watch import WatchOutcome


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
    from malmm_cli.jobs.watch import WatchRequest, WatchSession

    reporter = Reporter(quiet=quiet)
    options = RunOptions(
        model=model, checkpoint=checkpoint, memory_bank_length=memory_bank_length, memory=memory, device=device,
        dtype=dtype, quantize=quantize, quantize_vision=quantize_vision, max_new_tokens=max_new_tokens,
        num_beams=num_beams, batch_size=batch_size, quiet=quiet,
    )  # fmt: skip
    request = WatchRequest(
        source, every=every, question=question, reset_every=reset_every, duration=duration, fps=fps,
        format=format or ("txt" if sys.stdout.isatty() else "jsonl"), output=output, timeout=timeout,
        reconnect=reconnect,
    )  # fmt: skip
    stopped: list[KeyboardInterrupt] = []  # the signal that stopped the watch

    def stop(signum: int, frame: object) -> None:
        stopped.append(Terminated() if signum == signal.SIGTERM else KeyboardInterrupt())
        session.stop()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C quits at once
        reporter.info("Stopping: the interval in progress is written (Ctrl-C again to quit now)")

    def stop_on_signals() -> None:  # the stream is open: Ctrl-C ends it, and what was read is read out
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)  # a service manager stopping watch: the same way out

    session = WatchSession(request, options, reporter, on_open=stop_on_signals,
                           status_line=lambda describe: LiveStatus(reporter, describe))  # fmt: skip
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        with refusals(reporter):
            outcome = session.run()
    except KeyboardInterrupt as interrupt:
        word, status = stopped_by(interrupt)
        reporter.console.print(f"{word}.")
        raise typer.Exit(status) from None
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    raise typer.Exit(conclude(outcome, stopped[0] if stopped else KeyboardInterrupt(), reporter))


def conclude(outcome: WatchOutcome, interrupt: KeyboardInterrupt, reporter: Reporter) -> int:
    """Say how the watch ended (`interrupt`: the signal that stopped it, if it was); its exit status."""
    summary = outcome.summary
    counts = "" if summary is None else f"{counted(summary.read, 'frame')} read, {summary.dropped} dropped to keep up"
    if outcome.ended == "stopped":  # Ctrl-C, also when it closed the pipe stdout went to
        word, status = stopped_by(interrupt)
        reporter.console.print(f"{word}: {counts}." if summary is not None else f"{word} before a frame was read.")
        return status
    if outcome.ended == "failed":
        reporter.error(f"{outcome.name}: {outcome.reason}" + ("" if summary is None else f" ({counts})"))
        return EXIT_FAILED
    if outcome.ended != "closed":  # a reader of stdout that went away has what it wanted: nothing to say
        said = "--duration reached" if outcome.ended == "duration" else "the stream ended"
        reporter.info(f"{outcome.name}: {said} ({counts})")
    return EXIT_OK
