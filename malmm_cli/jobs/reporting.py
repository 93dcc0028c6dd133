"""What a job tells whoever runs it: messages, progress, and how each input ended.

Jobs speak to a `Reporter` and never draw anything themselves: the terminal's (commands/progress.py)
draws Rich bars and coloured lines, `Silent` drops it all for Python callers and tests, and any
object with these methods will do (a server's event stream, a log). Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


class VideoProgress(Protocol):
    """One video's progress: frames planned (`start`), read (`advance`), and its end (`finish`).
    `frames` is what it counted, set from outside when the reading ran elsewhere (a Ray worker)."""

    frames: int

    def start(self, total_frames: int | None, from_cache: bool = False) -> None: ...

    def advance(self, frames: int = 1) -> None: ...

    def finish(self) -> None: ...


class Reporter(Protocol):
    """Everything a job says while it works."""

    def info(self, message: str) -> None: ...

    def note(self, name: str, note: str) -> None:
        """How a video was read, where it differs from what was asked."""

    def warn(self, message: str) -> None: ...

    def error(self, message: str) -> None: ...

    def status(self, message: str) -> AbstractContextManager[None]:
        """Something slow with no count (loading the model)."""

    def batch(self, videos: int) -> AbstractContextManager[None]:
        """The span of a run over `videos` inputs, within which `video` progress is shown."""

    def downloading(self, repo: str) -> AbstractContextManager[type]:
        """A download from the hub: yields a tqdm-compatible class for huggingface_hub."""

    def video(self, name: str) -> VideoProgress: ...

    def video_done(self) -> None: ...


class SilentProgress:
    """A video's progress that only counts frames."""

    def __init__(self) -> None:
        self.frames = 0

    def start(self, total_frames: int | None, from_cache: bool = False) -> None:
        pass

    def advance(self, frames: int = 1) -> None:
        self.frames += frames

    def finish(self) -> None:
        pass


class Silent:
    """A Reporter that says nothing: jobs run from Python, and tests."""

    def info(self, message: str) -> None:
        pass

    def note(self, name: str, note: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def error(self, message: str) -> None:
        pass

    @contextmanager
    def status(self, message: str) -> Iterator[None]:
        yield

    @contextmanager
    def batch(self, videos: int) -> Iterator[None]:
        yield

    @contextmanager
    def downloading(self, repo: str) -> Iterator[type]:
        from tqdm.auto import tqdm

        yield tqdm

    def video(self, name: str) -> VideoProgress:
        return SilentProgress()

    def video_done(self) -> None:
        pass
