"""`malmm watch` as a job driven from Python (jobs/watch.py), and the one interface the reading loop
reads a file or a live stream through (`FrameSource`, reading/stream.py)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from malmm_cli.jobs.model import RunOptions
from malmm_cli.jobs.reporting import Silent
from malmm_cli.jobs.watch import WatchRequest, WatchSession
from malmm_cli.media.live import parse_source
from malmm_cli.output.events import WatchEvent, to_jsonl
from malmm_cli.reading.live import LiveStream
from malmm_cli.reading.pipeline import Memory, Reader, Sampling, VideoStream, read_streams
from malmm_cli.reading.results import VideoResult
from malmm_cli.reading.stream import FrameSource
from models import CAPTION, GenerationSettings, Malmm
from tests import media
from tests.conftest import REPO
from tests.live_media import free_port, mpegts_bytes

QUICK = GenerationSettings(num_beams=1, max_new_tokens=3)


def test_a_file_and_a_live_stream_are_read_through_one_interface(tiny_malmm: Malmm, tmp_path: Path) -> None:
    """VideoStream has every member the loop may read (checked by name, as a type checker would);
    LiveStream, with FrameSource's defaults, reads to a result like a file's, not to an error."""
    clip = media.make_video(tmp_path / "clip.mp4", seconds=2, fps=10, size=(64, 48))
    with VideoStream(tiny_malmm, clip, Sampling(fps=2)) as video:
        assert isinstance(video, FrameSource)
    live = LiveStream(tiny_malmm, parse_source(str(mpegts_bytes(tmp_path / "in.ts", seconds=2))), 2.0, buffered=64)
    prompt = CAPTION.prompt()
    (result,) = read_streams(tiny_malmm, ["in.ts"], lambda _: live, [Reader("caption", prompt, at_end=prompt)],
                             "watch", memory=Memory(4), settings=QUICK)  # fmt: skip
    assert isinstance(result, VideoResult), result
    assert result.frames == 4 and result.clip is None and result.preview is None and result.warnings == []
    assert result.last_frame == 1.5 <= result.duration < 2.0 and result.caption  # the stream read so far


def _options(model: Path) -> RunOptions:
    return RunOptions(model=str(model), device="cpu", num_beams=1, max_new_tokens=3)


def test_every_check_that_needs_no_model_runs_before_torch_loads(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """Each refusal of the job, in a fresh interpreter that then has imported neither torch nor
    transformers: a wrong SOURCE costs a second, not the model's imports."""
    ts = mpegts_bytes(tmp_path / "in.ts", seconds=1)
    late = media.make_video(tmp_path / "late.mp4", seconds=1, fps=5, faststart=False)
    code = f"""
import sys
from pathlib import Path
from malmm_cli.jobs.errors import UsageError
from malmm_cli.jobs.model import RunOptions
from malmm_cli.jobs.reporting import Silent
from malmm_cli.jobs.watch import WatchRequest, WatchSession
ts = {str(ts)!r}
for request, options in [
    (WatchRequest("gopher://camera"), RunOptions()),
    (WatchRequest(ts, every=2.0, reset_every=3.0), RunOptions()),
    (WatchRequest(ts), RunOptions(memory="concat")),
    (WatchRequest(ts), RunOptions(checkpoint=Path({str(tmp_path / "missing")!r}))),
    (WatchRequest("rtsp://127.0.0.1:{free_port(kind=1)}/live", timeout=2.0), RunOptions()),
    (WatchRequest(ts, output=Path({str(tmp_path / "no" / "events.jsonl")!r})), RunOptions()),
    (WatchRequest("-"), RunOptions()),
]:
    try:
        outcome = WatchSession(request, options, Silent()).run()
        print(outcome.ended, outcome.reason.split(",")[0])
    except UsageError as error:
        print("refused", error.option)
print(sorted({{"torch", "transformers"}} & set(sys.modules)))
"""
    with open(late, "rb") as stdin:
        done = subprocess.run([sys.executable, "-c", code], stdin=stdin, capture_output=True, text=True, cwd=REPO,
                              timeout=120, check=True)  # fmt: skip
    assert done.stdout.splitlines() == [
        "refused SOURCE", "refused --reset-every/--memory", "refused --reset-every/--memory", "refused --checkpoint",
        "failed Connection refused", "refused --output",
        "failed standard input is an MP4 whose index comes after its data", "[]",
    ], done.stdout + done.stderr  # fmt: skip


def test_a_session_driven_from_python_writes_its_events_and_says_how_it_ended(
    tiny_llama_dir: Path, tmp_path: Path
) -> None:
    events: list[WatchEvent] = []
    output = tmp_path / "events.jsonl"
    request = WatchRequest(str(mpegts_bytes(tmp_path / "in.ts", seconds=3)), every=1.0, fps=4.0, output=output,
                           stdout=False)  # fmt: skip
    outcome = WatchSession(request, _options(tiny_llama_dir), Silent(), on_event=events.append).run()
    assert outcome.ended == "end" and outcome.reason is None and outcome.name == request.source
    assert outcome.summary.read == 12 and outcome.summary.dropped == 0
    assert [(event.start, event.end, event.frames) for event in events] == [(0.0, 1.0, 4), (1.0, 2.0, 4), (2.0, 3.0, 4)]
    assert output.read_text() == "".join(to_jsonl(event) for event in events)


def test_stop_reads_out_the_interval_in_progress(tiny_llama_dir: Path, tmp_path: Path) -> None:
    events: list[WatchEvent] = []

    def first_then_stop(event: WatchEvent) -> None:
        events.append(event)
        session.stop()  # as the command's Ctrl-C handler does

    request = WatchRequest(str(mpegts_bytes(tmp_path / "in.ts", seconds=10)), every=1.0, fps=2.0, stdout=False)
    session = WatchSession(request, _options(tiny_llama_dir), Silent(), on_event=first_then_stop)
    outcome = session.run()
    assert outcome.ended == "stopped" and 2 <= outcome.summary.read < 20
    assert events[0].start == 0.0 and events[-1].end < 10.0
    assert sum(event.frames for event in events) == outcome.summary.read  # what was read was read out


def test_a_reader_of_stdout_that_goes_away_ends_the_watch_quietly(
    tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Gone(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Gone())
    request = WatchRequest(str(mpegts_bytes(tmp_path / "in.ts", seconds=10)), every=1.0, fps=2.0)
    outcome = WatchSession(request, _options(tiny_llama_dir), Silent()).run()
    assert outcome.ended == "closed" and outcome.summary.read < 20  # stopped after the first event


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full to fill")
def test_an_output_that_cannot_be_written_fails_the_watch_and_says_why(tiny_llama_dir: Path, tmp_path: Path) -> None:
    request = WatchRequest(str(mpegts_bytes(tmp_path / "in.ts", seconds=3)), output=Path("/dev/full"), stdout=False)
    outcome = WatchSession(request, _options(tiny_llama_dir), Silent()).run()
    assert outcome.ended == "failed" and outcome.reason == "cannot write /dev/full: No space left on device"
    assert outcome.summary is not None
