"""What one request may ask of the model (`malmm serve --max-frames/--max-duration/--max-question/
--max-labels`): checked before the request takes its place in the model's line, the request's own
fields first (before its video is even opened), then the video's length (probed, not decoded)."""

from __future__ import annotations

from dataclasses import dataclass

from malmm_cli.jobs.server.chat import ApiError, ChatRequest
from malmm_cli.media.plans import VideoError, VideoInfo, plan_times
from malmm_cli.wording import counted


@dataclass(frozen=True)
class Caps:
    """The most frames a request reads, seconds of video (0: any length), characters of question,
    and labels to rank."""

    frames: int = 1000
    duration: float = 14400.0
    question: int = 4000
    labels: int = 1000

    def check_request(self, asked: ChatRequest) -> None:
        """What the request itself asks, before its video is opened (ApiError)."""
        frames = asked.options.most_frames(asked.task.preset)  # None: with fps, it follows the video's length
        if frames is not None and frames > self.frames:
            raise ApiError(f"{counted(frames, 'frame')} asked for: this server reads at most {self.frames} "
                           "(--max-frames)", param="frames", code="too_many_frames")  # fmt: skip
        for question in asked.task.request.get("questions") or ():
            if len(question) > self.question:
                raise ApiError(f"the question has {len(question)} characters: this server takes at most "
                               f"{self.question} (--max-question)", param="messages",
                               code="question_too_long")  # fmt: skip
        labels = asked.task.request.get("labels") or ()
        if len(labels) > self.labels:
            raise ApiError(f"{counted(len(labels), 'label')} to rank: this server ranks at most {self.labels} "
                           "(--max-labels)", param="labels", code="too_many_labels")  # fmt: skip

    def needs_probe(self, asked: ChatRequest) -> bool:
        """Whether the video must be probed: its length is capped, or an fps reads a count that follows it."""
        return self.duration > 0 or asked.options.fps is not None

    def check_video(self, asked: ChatRequest, info: VideoInfo) -> None:
        """The probed video against the caps: its length, and the frames an fps would read from it."""
        if self.duration > 0 and info.duration > self.duration:
            raise ApiError(f"the video is {info.duration:.0f} s long: this server reads at most {self.duration:g} s "
                           "(--max-duration)", param="messages", code="video_too_long")  # fmt: skip
        if asked.options.fps is not None:
            try:
                count = len(plan_times(info, fps=asked.options.fps).times)
            except (ValueError, VideoError):
                return  # the reading says what is wrong with it
            if count > self.frames:
                raise ApiError(
                    f"fps {asked.options.fps:g} reads {count} frames of this {info.duration:.0f} s video: this server "
                    f"reads at most {self.frames} (--max-frames); ask for fewer frames/s or give frames",
                    param="fps", code="too_many_frames",
                )  # fmt: skip
