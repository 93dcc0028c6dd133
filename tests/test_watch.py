"""`malmm watch`: live streams over loopback (UDP, a growing file, stdin, RTSP), read in real time.

Every stream is sent by the test itself to 127.0.0.1; nothing needs the network.
"""

from __future__ import annotations

import functools
import http.server
import io
import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from malmm_cli.jobs.watch import watch
from malmm_cli.media.live import FpsSampler, LiveReader, SourceError, StreamClock, parse_source
from malmm_cli.output.events import EventWriter, WatchEvent, to_jsonl, to_txt
from malmm_cli.reading.pipeline import Memory, Reader, Sampling, VideoStream, read_streams
from malmm_cli.reading.stream import Sample
from models import CLASSIFICATION, GenerationSettings, Malmm
from tests import media
from tests.conftest import FAST, REPO
from tests.live_media import Sender, free_port, mpegts_bytes, write_frames
from tests.test_cli import _interrupted

QUICK = GenerationSettings(num_beams=1, max_new_tokens=3)


def _no_reader_thread_left() -> bool:
    deadline = time.monotonic() + 5
    while any(t.name.startswith("malmm-watch") for t in threading.enumerate()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _watch(malmm: Malmm, source: str, **options: object) -> tuple[list[WatchEvent], object, list[str]]:
    events, lines = [], []
    options = {"every": 1.0, "fps": 4.0, "timeout": 5.0, "reconnect": 0, "settings": QUICK, **options}
    summary = watch(malmm, parse_source(source), on_event=events.append, notify=lines.append, **options)
    return events, summary, lines


def _in_order(events: list[WatchEvent]) -> None:
    """Stream times only go forward: each interval starts where the one before ended, or later
    (an interval without a frame, while the stream was lost, has no event)."""
    assert events
    for event in events:
        assert event.start < event.end
    for before, after in itertools.pairwise(events):
        assert after.start >= before.end - 1e-6


def test_stream_clock_never_goes_backwards() -> None:
    now = [0.0]
    clock = StreamClock(lambda: now[0])

    def at(wall: float, timestamp: float | None) -> float:
        now[0] = wall
        return clock.time(timestamp)

    assert at(0.0, 10.0) == 0.0  # the stream starts at 0, whatever its first timestamp
    assert at(0.1, 10.1) == pytest.approx(0.1)
    assert at(0.3, None) == pytest.approx(0.3)  # no timestamp: the clock's own time
    assert at(0.4, 0.0) == pytest.approx(0.4)  # the sender restarted its timestamps: time goes on
    assert at(0.5, 0.1) == pytest.approx(0.5)
    clock.discontinue()  # a reconnect: two seconds passed
    assert at(2.5, 50.0) == pytest.approx(2.5)
    assert at(2.6, 950.0) == pytest.approx(2.6)  # a jump far beyond the clock's progress is a discontinuity
    assert at(2.7, 950.1) == pytest.approx(2.7)


def test_a_lost_streams_time_counts_from_when_it_went_quiet() -> None:
    """A decoder hands a lost stream's last frames over only when the read times out: the outage
    is measured from when the stream was last on pace, not from those late frames."""
    now = [100.0]
    clock = StreamClock(lambda: now[0], paced=True)

    def at(wall: float, timestamp: float) -> float:
        now[0] = 100.0 + wall
        return clock.time(timestamp)

    for tenth in range(48):  # on pace: 0.0 .. 4.7 s of stream arrive as they are sent
        assert at(tenth / 10, 30.0 + tenth / 10) == pytest.approx(tenth / 10)
    assert at(9.8, 34.8) == pytest.approx(4.8)  # the last two, released 5 s late by the read timeout
    assert at(9.8, 34.9) == pytest.approx(4.9)
    clock.discontinue()  # reconnected: the new sender started 6.4 s after the stream went quiet
    assert at(11.1, 0.8) == pytest.approx(11.1)
    assert at(11.2, 0.9) == pytest.approx(11.2)
    unpaced = StreamClock(lambda: now[0])  # a pipe or a file: from the last frame, whenever it came
    assert [unpaced.time(ts) for ts in (5.0, 5.1)] == [0.0, pytest.approx(0.1)]
    now[0] += 2.0
    unpaced.discontinue()
    assert unpaced.time(0.0) == pytest.approx(2.1)


def test_fps_sampling_keeps_one_frame_per_grid_slot() -> None:
    sampler = FpsSampler(4)
    times = [round(0.1 * i, 1) for i in range(20)] + [5.0, 5.1, 5.2, 5.3]
    kept = [(t, slot) for t in times if (slot := sampler.slot(t)) is not None]
    assert [t for t, _ in kept] == [0.0, 0.3, 0.5, 0.8, 1.0, 1.3, 1.5, 1.8, 5.0, 5.3]
    assert [slot for _, slot in kept] == [0, 1, 2, 3, 4, 5, 6, 7, 20, 21]  # a gap leaves its slots unused
    ntsc = FpsSampler(1)  # 29.97 frames/s: some frames land just before a grid time, none may take two slots
    slots = [slot for i in range(601 * 30_000 // 1001) if (slot := ntsc.slot(i * 1001 / 30_000)) is not None]
    assert slots == list(range(601))


def test_sources_are_told_apart(tmp_path: Path) -> None:
    assert parse_source("-").kind == "stdin"
    assert parse_source("rtsp://127.0.0.1:8554/live").kind == "network"
    assert parse_source("udp://127.0.0.1:5000").reconnects
    assert parse_source("0").location == "/dev/video0" and parse_source("/dev/video2").kind == "camera"
    with pytest.raises(SourceError, match="not a stream malmm reads"):
        parse_source("gopher://example")
    with pytest.raises(SourceError, match="no such file"):
        parse_source(str(tmp_path / "missing.ts"))
    assert parse_source(str(mpegts_bytes(tmp_path / "a.ts", 1))).follow
    complete = media.make_video(tmp_path / "plain.mp4", seconds=1, fps=10, size=(64, 48))
    assert not parse_source(str(complete)).follow  # a finished MP4: read to its end, not followed
    recording = tmp_path / "recording.mp4"  # a plain MP4 cut before its index: what a recorder has written
    data = complete.read_bytes()
    recording.write_bytes(data[: data.index(b"moov") - 4])
    with pytest.raises(SourceError, match="cannot be read before its index is written"):
        parse_source(str(recording))
    fragmented = tmp_path / "fragmented.mp4"
    output = av.open(str(fragmented), "w", options={"movflags": "frag_keyframe+empty_moov"})
    write_frames(output, [np.zeros((48, 64, 3), np.uint8)] * 5, codec="mpeg4")
    assert parse_source(str(fragmented)).follow


def test_a_file_whose_tags_are_not_utf8_is_read(tmp_path: Path) -> None:
    """Opening a source ignored no tags: with PyAV before 19 a Latin-1 title stopped the reader
    ("reading stopped: 'utf-8' codec can't decode..."), with PyAV 19 the argument that ignores
    them is gone; both go through video.open_input now."""
    clip = media.make_video(tmp_path / "clip.mp4", seconds=2, fps=10, size=(64, 48))
    tagged = media.with_tags_not_utf8(clip, tmp_path / "latin1.mp4")
    reader = LiveReader(parse_source(str(tagged)), 10, lambda image: image, timeout=5, buffered=100)
    reader.start()
    pictures = []
    while taken := reader.take(100):
        pictures.extend(frame.pixels for frame in taken)
    reader.close()
    assert (reader.ended, reader.failed) == ("end", False)
    assert [media.read_barcode(picture) for picture in pictures] == list(range(20))


def test_event_formats_append_and_escape(tmp_path: Path) -> None:
    first = WatchEvent(0.0, 10.0, "2026-12-02T10:00:00.000+00:00", "a <b>dog</b> --> runs", 10, 0, 0.25)
    second = WatchEvent(10.0, 20.0, "2026-12-02T10:00:10.000+00:00", "a cat", 7, 3, 1.5, "who?", "nobody", 1)
    assert json.loads(to_jsonl(first)) == {"start": 0.0, "end": 10.0, "wall_time": first.wall_time,
                                           "text": first.text, "frames": 10, "dropped": 0, "lag": 0.25}  # fmt: skip
    assert json.loads(to_jsonl(second))["answer"] == "nobody" and json.loads(to_jsonl(second))["chapter"] == 1
    assert (
        to_txt(second)
        == "[00:00:10.000 --> 00:00:20.000] a cat (3 frames dropped to keep up)\n    Q: who?\n    A: nobody\n"
    )
    subtitles = tmp_path / "live.srt"
    for event in (first, second):  # two runs appending to one file: the cue numbers go on
        writer = EventWriter("srt", stdout=False, path=subtitles)
        writer.write(event)
        writer.close()
    text = subtitles.read_text()
    assert text.startswith("1\n00:00:00,000 --> 00:00:10,000\na <b>dog</b> -> runs\n\n2\n00:00:10,000 --> ")
    web = tmp_path / "live.vtt"
    for event in (first, second):
        writer = EventWriter("vtt", stdout=False, path=web)
        writer.write(event)
        writer.close()
    assert web.read_text().count("WEBVTT") == 1 and "a &lt;b>dog&lt;/b> -> runs" in web.read_text()
    with pytest.raises(ValueError, match="holds srt events: appending vtt would mix"):
        EventWriter("vtt", stdout=False, path=subtitles)  # another format is refused, not mixed in
    notes = tmp_path / "notes.txt"
    notes.write_text("my own notes\n")
    with pytest.raises(ValueError, match="does not hold malmm watch events"):
        EventWriter("txt", stdout=False, path=notes)
    assert notes.read_text() == "my own notes\n" and subtitles.read_text() == text
    unused = tmp_path / "never.jsonl"
    EventWriter("jsonl", stdout=False, path=unused).close()  # a run that never got to an event
    assert not unused.exists()


class _Replay:
    """Frames read once, given again as a file's stream (planned `times`) or a live one (None)."""

    from_cache = False
    thumbnails = None

    clip = None

    def __init__(self, frames: list, times: list[float] | None, duration: float):
        self.frames, self.times, self.duration = frames, times, duration
        self.span = (0.0, duration)

    def __enter__(self) -> _Replay:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __iter__(self):
        return iter(self.frames)

    def notes(self) -> list[str]:
        return []

    def warnings(self) -> list[str]:
        return []


LABELS = ("cooking", "a dog running", "driving")


def _scores(malmm: Malmm, stream: _Replay, readers: list[Reader]) -> dict[tuple[int, float], list[float]]:
    """Label scores at each read-out, by (reader, span start): they differ with the memory read."""
    scores = {}

    def answered(answer) -> None:
        scores[(readers.index(answer.reader), round(answer.span[0], 6))] = [
            label.log_likelihood for label in answer.answer
        ]

    read_streams(malmm, ["stream"], lambda _: stream, readers, "watch", memory=Memory(3), settings=QUICK,
                 on_answer=answered)  # fmt: skip
    return scores


def test_a_live_stream_is_read_as_a_file_with_the_same_frames(tiny_malmm: Malmm, tmp_path: Path) -> None:
    clip = media.make_video(tmp_path / "clip.mp4", seconds=4, fps=10, size=(64, 48))
    with VideoStream(tiny_malmm, clip, Sampling(fps=4)) as stream:
        frames = list(stream)
        times, duration = stream.times, stream.duration
    live = [(Sample(sample.index, sample.target, sample.target), features) for sample, features in frames]
    prompt = CLASSIFICATION.prompt()
    readers = [Reader("timeline", prompt, every=1.0, at_span=prompt, labels=LABELS),
               Reader("timeline", prompt, every=1.0, at_span=prompt, labels=LABELS, restart=2.0)]  # fmt: skip
    as_file = _scores(tiny_malmm, _Replay(live, times, duration), readers)
    as_stream = _scores(tiny_malmm, _Replay(live, None, live[-1][0].time), readers)
    assert as_file.keys() == as_stream.keys() and len(as_file) == 8
    for key, scores in as_file.items():
        assert as_stream[key] == pytest.approx(scores, abs=1e-5)
    # --reset-every: the memory of chapter [2, 4) is that of a stream starting at 2 s
    chapter = [(Sample(s.index - 8, s.time - 2, s.time - 2), f) for s, f in live if s.time >= 2 - 1e-6]
    fresh = _scores(tiny_malmm, _Replay(chapter, None, chapter[-1][0].time), readers[:1])
    assert fresh[(0, 0.0)] == pytest.approx(as_stream[(1, 2.0)], abs=1e-5)
    assert fresh[(0, 1.0)] == pytest.approx(as_stream[(1, 3.0)], abs=1e-5)
    assert fresh[(0, 1.0)] != pytest.approx(as_stream[(0, 3.0)], abs=1e-5)  # the memory that ran on differs


def test_udp_stream_is_captioned_as_it_plays(tiny_malmm: Malmm) -> None:
    port = free_port()
    sender = Sender(f"udp://127.0.0.1:{port}", seconds=8)
    sender.start()
    try:
        events, summary, _ = _watch(tiny_malmm, f"udp://127.0.0.1:{port}", duration=4.0, buffered=64)
    finally:
        sender.stop()
    assert [event.start for event in events] == [0.0, 1.0, 2.0, 3.0]
    _in_order(events)
    assert summary.ended == "duration" and not summary.failed
    assert all(event.dropped == 0 and 3 <= event.frames <= 5 for event in events[:-1]), events
    assert all(event.lag < 3.0 for event in events), [event.lag for event in events]  # on time
    assert _no_reader_thread_left()


def test_a_stream_already_playing_is_joined_every_time() -> None:
    """Joining H.264 over UDP mid-GOP, as from a camera: the short probe (31 packets, 1.2 s here)
    often ends before a keyframe, with no picture size known, and the decoder refuses packets until
    one comes. Those are skipped, as ffmpeg does, not taken for a failed stream. A keyframe every
    2.4 s: about half the joins land where the probe misses it (each failed at once before)."""
    port = free_port()
    url = f"udp://127.0.0.1:{port}"
    sender = Sender(url, seconds=120, fps=25, codec="h264", gop=60)
    sender.start()
    outcomes = []
    try:
        time.sleep(1.0)  # playing
        for _ in range(10):
            reader = LiveReader(parse_source(url), 10.0, lambda image: torch.zeros(1), timeout=5.0, reconnect=0,
                                duration=0.3)  # fmt: skip
            reader.start()
            reader._thread.join(30)
            outcomes.append((reader.ended, reader.stats.sampled))
    finally:
        sender.stop()
    assert outcomes == [("duration", 3)] * 10, outcomes  # 0.3 s at 10 frames/s, every time
    assert _no_reader_thread_left()


def test_a_stream_that_cannot_be_decoded_fails_after_the_timeout() -> None:
    """Skipping refused packets has a limit: joined 2 s after its only keyframe, a stream is
    failed once nothing decodes for --timeout, with the decoder's reason."""
    port = free_port()
    url = f"udp://127.0.0.1:{port}"
    sender = Sender(url, seconds=30, fps=25, codec="h264", gop=1000)
    sender.start()
    try:
        time.sleep(2.0)
        reader = LiveReader(parse_source(url), 10.0, lambda image: torch.zeros(1), timeout=1.0, reconnect=3)
        started = time.monotonic()
        reader.start()
        reader._thread.join(30)
    finally:
        sender.stop()
    assert reader.failed
    assert reader.ended == "nothing could be decoded for 1 s (Invalid data found when processing input)"
    assert reader.stats.reconnects == 0 and time.monotonic() - started < 10  # a first opening: said at once


def test_mpegts_over_tcp_ends_when_its_sender_closes(tiny_malmm: Malmm) -> None:
    port = free_port(kind=1)  # TCP: malmm listens, the sender connects

    def send() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                Sender(f"tcp://127.0.0.1:{port}", seconds=3).run()
                return
            except av.error.FFmpegError:  # not listening yet
                time.sleep(0.2)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        events, summary, _ = _watch(tiny_malmm, f"tcp://127.0.0.1:{port}?listen=1", timeout=20.0)
    finally:
        sender.join(30)
    assert summary.ended == "end" and not summary.failed  # --reconnect 0: the sender's close is the end
    _in_order(events)
    assert events[-1].end > 2.0 and sum(event.frames + event.dropped for event in events) >= 10


def test_a_sender_that_stops_and_restarts_is_reconnected(tiny_malmm: Malmm) -> None:
    port = free_port()
    url = f"udp://127.0.0.1:{port}"
    first = Sender(url, seconds=3)
    first.start()

    def restart() -> None:
        first.join()
        time.sleep(1.0)
        second.start()

    second = Sender(url, seconds=8)
    restarter = threading.Thread(target=restart, daemon=True)
    restarter.start()
    try:
        events, summary, lines = _watch(tiny_malmm, url, duration=7.0, timeout=1.0, reconnect=4)
    finally:
        restarter.join(15)
        second.stop()
    assert summary.reconnects >= 1 and any("reconnecting in 1 s (attempt 1 of 4)" in line for line in lines), lines
    _in_order(events)
    assert events[-1].end > 5.0  # read on after the gap, on the same clock
    assert sum(event.frames for event in events) > 12
    assert _no_reader_thread_left()


def test_a_growing_file_is_followed_to_its_end(tiny_malmm: Malmm, tmp_path: Path) -> None:
    path = tmp_path / "recording.ts"
    sender = Sender(path, seconds=3.5)
    sender.start()
    deadline = time.monotonic() + 10
    while not (path.is_file() and path.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    try:
        events, summary, _ = _watch(tiny_malmm, str(path), timeout=1.5, buffered=64)
    finally:
        sender.stop()
    assert time.monotonic() - started > 3.0  # it waited for the frames as they were written
    assert summary.ended == "end" and not summary.failed
    assert [event.start for event in events] == [0.0, 1.0, 2.0, 3.0]
    _in_order(events)
    assert events[-1].end == pytest.approx(3.5, abs=0.1)  # the interval in progress: its last frame's slot ends


def test_an_hls_stream_over_http_is_read_to_its_end(tiny_malmm: Malmm, tmp_path: Path) -> None:
    playlist = av.open(str(tmp_path / "live.m3u8"), "w", format="hls", options={"hls_time": "1"})
    write_frames(playlist, (np.full((48, 64, 3), index * 8, np.uint8) for index in range(30)))

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/live.m3u8"
        # the playlist's end is the stream's, reconnects or not: it is not read again from its start. A
        # buffer for all 12 frames: they arrive faster than real time (test_a_slow_model_... tests drops)
        events, summary, lines = _watch(tiny_malmm, url, buffered=64, reconnect=5)
    finally:
        server.shutdown()
        server.server_close()
    assert summary.ended == "end" and not summary.failed
    assert [event.start for event in events] == [0.0, 1.0, 2.0]
    assert [event.frames for event in events] == [4, 4, 4] and summary.dropped == 0
    assert summary.reconnects == 0 and not lines
    assert _no_reader_thread_left()


def test_a_slow_model_drops_frames_and_says_so(tiny_malmm: Malmm, monkeypatch: pytest.MonkeyPatch) -> None:
    step = tiny_malmm.step

    def slow_step(*args: object, **kwargs: object) -> object:
        time.sleep(0.25)  # a model that reads 4 frames/s, of a stream sampled at 10
        return step(*args, **kwargs)

    monkeypatch.setattr(tiny_malmm, "step", slow_step)
    port = free_port()
    sender = Sender(f"udp://127.0.0.1:{port}", seconds=10)
    sender.start()
    try:
        events, summary, _ = _watch(tiny_malmm, f"udp://127.0.0.1:{port}", fps=10.0, duration=5.0, buffered=2)
    finally:
        sender.stop()
    assert summary.dropped > 0 and summary.read + summary.dropped == summary.sampled
    assert sum(event.dropped for event in events) == summary.dropped
    assert sum(event.frames for event in events) == summary.read
    later = events[2:]  # past the burst the source's probing releases at the start
    assert all(event.dropped > 0 for event in later) and all(event.lag < 2.0 for event in later), events
    assert _no_reader_thread_left()


def test_a_file_is_read_at_the_models_pace_without_dropping(
    tiny_malmm: Malmm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = tiny_malmm.step

    def slow_step(*args: object, **kwargs: object) -> object:
        time.sleep(0.05)  # slower than the file decodes: a live source would drop
        return step(*args, **kwargs)

    monkeypatch.setattr(tiny_malmm, "step", slow_step)
    path = mpegts_bytes(tmp_path / "finished.ts", seconds=3)
    events, summary, _ = _watch(tiny_malmm, str(path), fps=10.0, buffered=2)
    assert summary.ended == "end" and summary.dropped == 0
    assert summary.read == summary.sampled >= 28  # 3 s at 10 frames/s (the demuxer may keep the last back)
    assert sum(event.frames for event in events) == summary.read and len(events) == 3
    assert not any(event.dropped for event in events)
    assert _no_reader_thread_left()


def test_the_last_interval_ends_where_its_last_frame_s_slot_does(tiny_malmm: Malmm, tmp_path: Path) -> None:
    path = mpegts_bytes(tmp_path / "short.ts", seconds=2.3)  # the last on the 1 s grid: 2.0 s
    events, summary, _ = _watch(tiny_malmm, str(path), fps=1.0)
    assert [(event.start, event.end) for event in events] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]  # not 2.0 -> 2.0
    events, summary, _ = _watch(tiny_malmm, str(path), every=2.0, fps=2.0, duration=2.0)
    assert summary.ended == "duration" and [(event.start, event.end) for event in events] == [(0.0, 2.0)]


def test_the_status_line_shows_on_a_terminal_only() -> None:
    from rich.console import Console

    from malmm_cli.commands.progress import LiveStatus, Reporter

    screen = io.StringIO()
    terminal = Reporter(console=Console(file=screen, force_terminal=True, width=100))
    with LiveStatus(terminal, lambda: "stream 00:00:12.000 · 1.00 frames/s read · 0.2 s behind · 0 dropped"):
        time.sleep(0.6)
    assert "0.2 s behind" in screen.getvalue()
    plain = io.StringIO()
    with LiveStatus(Reporter(console=Console(file=plain, force_terminal=False)), lambda: "never shown"):
        time.sleep(0.6)
    assert plain.getvalue() == ""


def test_events_go_to_stdout_while_the_status_line_shows(capsys: pytest.CaptureFixture) -> None:
    from rich.console import Console

    from malmm_cli.commands.progress import LiveStatus, Reporter

    screen = io.StringIO()
    event = WatchEvent(0.0, 10.0, "2026-12-02T10:00:00.000+00:00", "a dog runs", 10, 0, 0.25)
    with LiveStatus(Reporter(console=Console(file=screen, force_terminal=True)), lambda: "stream 00:00:10"):
        EventWriter("jsonl").write(event)  # stdout is a pipe here (captured), stderr a terminal
    assert json.loads(capsys.readouterr().out)["text"] == "a dog runs"
    assert "a dog runs" not in screen.getvalue()


class _Scripted:
    """A connection that delivers `frames` frames at 10 frames/s, then ends or fails."""

    def __init__(self, frames: int, failure: str | None = None):
        self.count, self.failure = frames, failure

    def frames(self):
        for index in range(self.count):
            yield index / 10, lambda: np.zeros((4, 4, 3), np.uint8)
        if self.failure:
            raise SourceError(self.failure)

    def close(self) -> None:
        pass


def _reader_outcome(openings: list, **options: object) -> tuple[LiveReader, list[str]]:
    """Run a LiveReader over scripted openings (a connection, or the error opening it raises)."""
    lines: list[str] = []

    def open_connection(source: object, timeout: float) -> _Scripted:
        opening = openings.pop(0) if openings else SourceError("connection refused")
        if isinstance(opening, Exception):
            raise opening
        return opening

    reader = LiveReader(parse_source("rtsp://127.0.0.1:1/live"), 10, lambda image: image, notify=lines.append,
                        open_connection=open_connection, buffered=100, **options)  # fmt: skip
    reader.start()
    return reader, lines


def test_how_a_lost_stream_ends() -> None:
    reader, lines = _reader_outcome([_Scripted(5)], reconnect=2)  # the camera goes away for good
    reader._thread.join(10)
    assert reader.failed and reader.ended == "lost the stream (connection refused) and 2 reconnect attempts failed"
    assert lines == ["lost the stream (it ended): reconnecting in 1 s (attempt 1 of 2)",
                     "lost the stream (connection refused): reconnecting in 2 s (attempt 2 of 2)"]  # fmt: skip
    reader, lines = _reader_outcome([_Scripted(5), _Scripted(0), _Scripted(0)], reconnect=2)
    reader._thread.join(10)  # reopened twice, nothing came: lost, not ended
    assert reader.failed and reader.ended.endswith("2 reconnect attempts failed")
    reader, _ = _reader_outcome([_Scripted(5)], reconnect=0)  # the sender closed it, no reconnecting: the end
    reader._thread.join(10)
    assert not reader.failed and reader.ended == "end"
    reader, _ = _reader_outcome([_Scripted(5, failure="connection reset")], reconnect=3)
    time.sleep(0.3)  # in its first back-off
    reader.close()
    assert not reader._thread.is_alive() and reader.ended == "stopped" and not reader.failed
    assert reader.stats.reconnects == 0  # the attempt it was waiting for was never made
    reader, _ = _reader_outcome([SourceError("name or service not known")], reconnect=5)
    reader._thread.join(10)  # a first opening that fails is said at once, not retried
    assert reader.failed and reader.ended == "name or service not known" and reader.stats.reconnects == 0


def _malmm_watch(tiny_llama_dir: Path, *args: str | Path) -> list[str]:
    return [str(Path(sys.executable).parent / "malmm"), "watch", *map(str, args), "--model", str(tiny_llama_dir),
            *FAST[:2], "--num-beams", "1", "--max-new-tokens", "3"]  # fmt: skip


def test_standard_input_to_jsonl_on_stdout_and_a_file(tiny_llama_dir: Path, tmp_path: Path) -> None:
    data = mpegts_bytes(tmp_path / "in.ts", seconds=3).read_bytes()
    events_file = tmp_path / "events.jsonl"
    command = _malmm_watch(tiny_llama_dir, "-", "--every", "1", "--fps", "4", "--output", events_file)
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    try:
        chunk = len(data) // 6 + 1
        for start in range(0, len(data), chunk):  # arrives over a second and a half, as from ffmpeg
            process.stdin.write(data[start : start + chunk])
            process.stdin.flush()
            time.sleep(0.25)
        out, err = process.communicate(timeout=120)  # closes standard input: the end of the stream
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    events = [json.loads(line) for line in out.decode().splitlines()]
    starts = [event["start"] for event in events]
    assert starts == sorted(set(starts)) and set(starts) <= {0.0, 1.0, 2.0} and starts[-1] == 2.0
    assert sum(event["frames"] + event["dropped"] for event in events) == 12  # 3 s at 4 frames/s, none unsaid
    assert events_file.read_bytes().decode() == out.decode()  # the same events, appended to the file
    assert "the stream ended" in err.decode()


def test_a_wrong_address_is_said_before_the_model_loads(tiny_llama_dir: Path, tmp_path: Path) -> None:
    events_file = tmp_path / "events.jsonl"
    for url in (f"rtsp://127.0.0.1:{free_port()}/live", f"tcp://127.0.0.1:{free_port()}"):  # nobody listens
        command = _malmm_watch(tiny_llama_dir, url, "--timeout", "2s", "--output", events_file)
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1 and "Connection refused" in done.stderr, done.stderr
        assert "Loading" not in done.stderr and "Traceback" not in done.stderr
    assert not events_file.exists()  # nothing made for a run that never started


def test_ctrl_c_writes_the_interval_in_progress(tiny_llama_dir: Path) -> None:
    port = free_port()
    sender = Sender(f"udp://127.0.0.1:{port}", seconds=30)
    sender.start()
    try:
        command = _malmm_watch(tiny_llama_dir, f"udp://127.0.0.1:{port}", "--every", "20", "--fps", "4")
        status, out, err = _interrupted(command, "Watching", after=5.0)
    finally:
        sender.stop()
    assert status == 130, err
    assert "Traceback" not in err and "Interrupted" in err
    (event,) = [json.loads(line) for line in out.splitlines()]
    assert event["start"] == 0.0 and 0.5 < event["end"] < 20.0 and event["frames"] > 2


def _rtsp_server_python() -> str | None:
    """The system's python3 when it has GStreamer's RTSP server bindings (.ci/run installs them)."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        return None
    check = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    found = subprocess.run([python, "-c", check], capture_output=True)
    return python if found.returncode == 0 else None


def _start_rtsp_server(python: str, port: int) -> subprocess.Popen:
    server = subprocess.Popen([python, str(REPO / "tests" / "rtsp_server.py"), str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    if server.stdout.readline().strip() != "ready":
        server.kill()
        pytest.fail(f"the RTSP server did not start: {server.communicate()[1]}")
    return server


def test_rtsp_camera_is_reconnected_to_when_its_server_restarts(tiny_malmm: Malmm) -> None:
    python = _rtsp_server_python()
    if python is None:
        pytest.skip("no GStreamer RTSP server: apt-get install gir1.2-gst-rtsp-server-1.0 python3-gi "
                    "gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly")  # fmt: skip
    port = free_port(kind=1)  # TCP
    servers = [_start_rtsp_server(python, port)]
    events: list[WatchEvent] = []
    lines: list[str] = []
    streams = []
    outcome = {}

    def watching() -> None:
        outcome["summary"] = watch(
            tiny_malmm, parse_source(f"rtsp://127.0.0.1:{port}/live"), every=1.0, fps=4.0, timeout=3.0, reconnect=5,
            settings=QUICK, on_event=events.append, notify=lines.append, on_start=streams.append,
        )  # fmt: skip

    thread = threading.Thread(target=watching)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(events) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        servers[0].kill()  # the camera goes away...
        servers[0].communicate()
        time.sleep(1.5)
        servers.append(_start_rtsp_server(python, port))  # ...and comes back
        before = len(events)
        while len(events) < before + 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        streams[0].stop()
        thread.join(30)
    finally:
        for server in servers:
            if server.poll() is None:
                server.kill()
                server.communicate()
        if streams:
            streams[0].stop()
        thread.join(30)
    assert not thread.is_alive()
    assert outcome["summary"].reconnects >= 1 and any("reconnecting" in line for line in lines), lines
    assert len(events) >= 5
    _in_order(events)
    assert _no_reader_thread_left()


def test_an_mp4_on_standard_input_is_refused_before_the_model_loads(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """FFmpeg cannot read an MP4 whose index is at its end from a pipe: that failed once the model had
    loaded, as 'Invalid data found when processing input', without saying stdin must be read in order."""
    late_index = media.make_video(tmp_path / "late.mp4", seconds=10, fps=10, size=(320, 240), faststart=False)
    done = subprocess.run(_malmm_watch(tiny_llama_dir, "-"), input=late_index.read_bytes(), capture_output=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    err = done.stderr.decode()
    assert done.returncode == 1 and "index comes after its data" in err and "-f mpegts" in err, err
    assert "Loading" not in err and "Traceback" not in err


def test_the_first_bytes_of_standard_input_tell_what_it_holds(tmp_path: Path) -> None:
    from malmm_cli.media.live import _mp4_verdict

    first = media.make_video(tmp_path / "first.mp4", seconds=1, fps=5, faststart=True).read_bytes()
    last = media.make_video(tmp_path / "last.mp4", seconds=1, fps=5, faststart=False).read_bytes()
    ts = mpegts_bytes(tmp_path / "in.ts", seconds=1).read_bytes()
    assert _mp4_verdict(first) == "" and _mp4_verdict(ts[:188]) == ""
    assert "after its data" in _mp4_verdict(last)
    assert _mp4_verdict(last[:20]) is None  # not enough yet: read on
