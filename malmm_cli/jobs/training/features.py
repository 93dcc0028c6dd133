"""Training clips to ViT features: sampled as MA-LMM samples training clips (one random time in
each of `frames` equal segments; `samplings` such draws per clip, used in turn by the epochs), read
by `VideoStream` with the frozen ViT, stopping before its LayerNorm (which is trained), and replayed
from the feature cache once computed, so that later epochs cost the Q-Former and the LLM only. With
`augment` every epoch draws new times and a new crop and flip for the clip (media/augment.py), so
the ViT runs on every step. Validation clips are sampled evenly."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import torch

from malmm_cli.jobs.dataset import Example
from malmm_cli.media.augment import ClipAugment
from malmm_cli.media.plans import VideoError
from malmm_cli.media.sampling import Sampling
from malmm_cli.reading.feature_cache import FeatureCache
from malmm_cli.reading.stream import VideoStream
from models import Malmm


class ClipFeatures:
    """ViT features (before its LayerNorm) of examples' clips, through the feature cache.

    A clip with fewer decodable frames than `frames` repeats its nearest ones, as MA-LMM's loader
    repeats frames of short clips. A clip that cannot be read at all is reported once and then
    left out of every epoch.
    """

    def __init__(
        self,
        malmm: Malmm,
        frames: int,
        cache: FeatureCache | None,
        warn: Callable[[str], None],
        augment: bool = False,
    ):
        """augment: random draws are also cropped and flipped (`ClipAugment`), and so encoded by
        the ViT every time instead of cached; even samplings (validation) stay plain and cached."""
        self.malmm = malmm
        self.frames = frames
        self.cache = cache
        self.warn = warn
        self.augment = augment
        self.unreadable: set[str] = set()

    def get(self, example: Example, draw: int | None, seed: int) -> torch.Tensor | None:
        """[frames, N, C], or None for an unreadable clip. draw: which random sampling (None: even)."""
        clip = self.timed(example, draw, seed)
        return None if clip is None else clip[0]

    def timed(self, example: Example, draw: int | None, seed: int) -> tuple[torch.Tensor, list[float]] | None:
        """`get`'s features with the time of each frame, in seconds from the clip's start, as the
        decoder stamped it (what time-aware frames read), or None for an unreadable clip."""
        if example.id in self.unreadable:
            return None
        # the clip by its id (named by its data file, not by where that file lies), so that the
        # same data trains the same wherever it is
        where = f"{example.id}|{example.start}|{example.end}"
        jitter = None if draw is None else zlib.crc32(f"{seed}|{draw}|{where}".encode())
        sampling = Sampling(frames=self.frames, start=example.start, end=example.end, jitter=jitter)
        augmented = self.augment and draw is not None
        transform = ClipAugment(zlib.crc32(f"{seed}|augment|{draw}|{where}".encode())) if augmented else None
        cache = None if augmented else self.cache
        try:
            with VideoStream(self.malmm, example.video, sampling, cache=cache, normalize=False,
                             transform=transform) as stream:  # fmt: skip
                samples = list(stream)
                start = stream.span[0]
            features = [feature[0] for _, feature in samples]
            times = [sample.time - start for sample, _ in samples]
        except (VideoError, OSError) as error:
            features, reason = [], str(error) or type(error).__name__
        else:
            reason = "no frame could be decoded"
        if not features:
            self.unreadable.add(example.id)
            use = "validation" if draw is None else "training"  # validation clips are sampled evenly
            self.warn(f"{example.id} ({example.video}): {reason}; left out of {use}")
            return None
        nearest = [min(len(features) - 1, i * len(features) // self.frames) for i in range(self.frames)]
        return torch.stack([features[i] for i in nearest]), [times[i] for i in nearest]

    def readable(
        self, examples: list[Example], draw: int | None, seed: int
    ) -> tuple[list[Example], list[torch.Tensor], list[list[float]]]:
        """The examples whose clips can be read, with their features and frame times (see `timed`)."""
        read = [(example, self.timed(example, draw, seed)) for example in examples]
        read = [(example, clip) for example, clip in read if clip is not None]
        return [e for e, _ in read], [clip[0] for _, clip in read], [clip[1] for _, clip in read]
