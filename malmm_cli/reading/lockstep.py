"""One home for batching: which videos and clips are read together, and reading them so.

Every reader of many inputs comes here: the local engine (`malmm caption` and the other video
commands, a batch.run_batch group at a time), `malmm eval` (its clips) and the Ray workers (a Ray
batch of clips). Inputs of equal sampling (the same frames or rate, the same clip times) whose
readers step as many memories each are read in lockstep, `videos_at_once` at a time, by the one
reading loop (pipeline.read_streams): their memories step as one batch, frame by frame, and the
read-outs of a step are answered together. Results equal reading each input alone (to float
rounding); each is handed over the moment it is done, and an input that fails (it cannot be
sampled, opened or decoded) fails alone. The caller sizes the batches (jobs/loading.reading_sizes: it
knows the memory left free).

    from malmm_cli.reading.lockstep import Clip, read_in_lockstep
    from malmm_cli.reading.pipeline import Memory, Sampling, VideoFiles, caption_readers
    from models import CAPTION
    clips = [Clip(path, Sampling(frames=20), tuple(caption_readers())) for path in paths]
    results = read_in_lockstep(malmm, clips, VideoFiles(malmm), "caption", videos_at_once=8,
                               memory=Memory(20), settings=CAPTION.generation)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

from malmm_cli.media.inputs import Input, clip_sampling
from malmm_cli.media.plans import VideoError
from malmm_cli.media.sampling import Sampling
from malmm_cli.reading.pipeline import ANSWERS_PER_BATCH, Growing, Memory, Reader, read_streams, shared_memories
from malmm_cli.reading.results import VideoResult
from malmm_cli.reading.stream import NoProgress, Progress, VideoStream
from models import GenerationSettings, Malmm

OpenStream = Callable[[str | Path, Sampling, Sequence[Reader]], VideoStream]  # e.g. pipeline.VideoFiles


@dataclass(frozen=True)
class Clip:
    """A video (path or URL), or a clip of it, to read: how it is sampled (a clip's times are part
    of its sampling) and what reads it. sampling may instead be the error that says why the input
    cannot be sampled: it then fails alone, with that error."""

    source: str | Path
    sampling: Sampling | Exception
    readers: tuple[Reader, ...]


def input_clip(item: Input, sampling: Sampling, readers: Sequence[Reader]) -> Clip:
    """What `read_in_lockstep` reads of a run's input: the video with the run's sampling for it (a
    manifest's clip: its times), or the error that fails it alone (`clip_sampling`)."""
    try:
        return Clip(item.path, clip_sampling(sampling, item), tuple(readers))
    except VideoError as error:
        return Clip(item.path, error, tuple(readers))


def lockstep_groups(clips: Sequence[Clip], size: int) -> list[list[int]]:
    """The clips' numbers in the groups they are read in: equal sampling and as many shared
    memories each, at most `size` a group; groups in the order of their first clip, clips in
    input order within a group. A clip that cannot be sampled is a group of its own."""
    if size < 1:
        raise ValueError(f"videos read at once must be at least 1, got {size}")
    groups: list[list[int]] = []
    filling: dict[Hashable, list[int]] = {}  # the group still taking clips of each kind
    for number, clip in enumerate(clips):
        if isinstance(clip.sampling, Exception):
            groups.append([number])
            continue
        key = (clip.sampling, len(shared_memories(clip.readers)))
        group = filling.get(key)
        if group is None or len(group) == size:
            group = filling[key] = []
            groups.append(group)
        group.append(number)
    return groups


def read_in_lockstep(
    malmm: Malmm,
    clips: Sequence[Clip],
    open_stream: OpenStream,
    task: str,
    *,
    videos_at_once: int,
    memory: Memory,
    settings: GenerationSettings,
    progress: Sequence[Progress] | None = None,
    answers_per_batch: int = ANSWERS_PER_BATCH,
    on_done: Callable[[int, VideoResult | Exception], None] | None = None,
    stopped: Callable[[int], bool] | None = None,
    on_text: Callable[[Growing], None] | None = None,
) -> list[VideoResult | Exception]:
    """Read the clips, a group of `lockstep_groups` at a time, each group in lockstep: one result
    per clip, or the exception it failed with. open_stream(source, sampling, readers) opens one
    (pipeline.VideoFiles for files). on_done(i, result) is called the moment the i-th clip is done;
    stopped(i): whether the i-th clip is still wanted (read_streams' `stopped`); on_text: answers as
    they grow (read_streams'), numbered as the clips."""
    progress = list(progress) if progress is not None else [NoProgress() for _ in clips]
    results: list[VideoResult | Exception | None] = [None] * len(clips)

    def conclude(number: int, result: VideoResult | Exception) -> None:
        results[number] = result
        if on_done is not None:
            on_done(number, result)

    for group in lockstep_groups(clips, videos_at_once):
        members = [clips[number] for number in group]
        sampling = members[0].sampling
        if isinstance(sampling, Exception):
            conclude(group[0], sampling)
            continue
        read_streams(
            malmm, [clip.source for clip in members], _opener(open_stream, sampling, members),
            [clip.readers for clip in members], task,
            memory=memory, settings=settings, progress=[progress[number] for number in group],
            answers_per_batch=answers_per_batch, on_done=lambda i, result, group=group: conclude(group[i], result),
            stopped=None if stopped is None else lambda i, group=group: stopped(group[i]),
            on_text=None if on_text is None else lambda grown, group=group: on_text(
                dataclasses.replace(grown, video=group[grown.video])
            ),
        )  # fmt: skip
    return results


def _opener(open_stream: OpenStream, sampling: Sampling, group: list[Clip]) -> Callable[[str | Path], VideoStream]:
    """read_streams' opener for a group of one sampling (it opens each source once, in order)."""
    unopened = iter(group)
    return lambda source: open_stream(source, sampling, next(unopened).readers)
