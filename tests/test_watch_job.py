"""`malmm watch` as a job driven from Python (jobs/watch.py), and the one interface the reading loop
reads a file or a live stream through (`FrameSource`, reading/stream.py)."""

from __future__ import annotations

from pathlib import Path

from malmm_cli.media.live import parse_source
from malmm_cli.reading.live import LiveStream
from malmm_cli.reading.pipeline import Memory, Reader, Sampling, VideoStream, read_streams
from malmm_cli.reading.results import VideoResult
from malmm_cli.reading.stream import FrameSource
from models import CAPTION, GenerationSettings, Malmm
from tests import media
from tests.live_media import mpegts_bytes

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
