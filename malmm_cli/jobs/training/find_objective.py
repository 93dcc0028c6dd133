"""What `--task find` trains: per labelled moment, windows of its video read as `malmm find`
reads them (a fresh memory each, `frames` frames over `window` seconds), with the target of the
rule find scores with (moments.py says which windows are positives and negatives).

- **likelihood** (find's default rule): the query's log-likelihood as the answer to the caption
  instruction, ll(w), raised in the positive windows and lowered in the others of the same video:
  the answer loss of the query in the positives (its cross-entropy per token, what caption
  training does) plus a contrast over the moment's windows, -log(sum_pos e^ll / sum_all e^ll).
  find scores a window by ll(w) less the whole video's; the contrast trains that difference
  directly, where the answer loss alone also raises the query in windows that do not show it.
- **yes**: "yes" as the answer to find's yes question in the positives, "no" in the negatives.

A step reads one positive and up to `negatives` negative windows a moment, drawn per epoch;
validation reads every positive and negatives spread evenly over the video (VALIDATION_WINDOWS
in all) and counts a moment right when its best-scored window is a positive.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable

import torch

from malmm_cli.jobs.dataset import Example
from malmm_cli.jobs.training.features import ClipFeatures
from malmm_cli.jobs.training.moments import LabelledMoment, label_windows, windows
from malmm_cli.jobs.training.settings import TrainSettings
from malmm_cli.media.plans import VideoError
from malmm_cli.media.probe import probe
from malmm_cli.reading.find import YES_NO, yes_prompt
from models import Malmm
from models.presets import CAPTION
from models.training import answer_log_likelihoods, answer_loss

VALIDATION_WINDOWS = 24  # windows a validation moment is judged on (all its positives first)

# (windows, their prompts, draw) -> the last step's query output of each window, read from fresh memories
Read = Callable[[list[Example], list[torch.Tensor], list[str], "int | None"], torch.Tensor]


class FindObjective:
    """The loss and validation of `--task find` over batches of labelled moments."""

    def __init__(self, malmm: Malmm, settings: TrainSettings, features: ClipFeatures, read: Read,
                 warn: Callable[[str], None]):  # fmt: skip
        self.malmm, self.settings, self.features, self.read, self.warn = malmm, settings, features, read, warn
        self.durations: dict[str, float | None] = {}

    def loss(self, moments: list[Example], epoch: int, draw: int) -> tuple[list[Example], torch.Tensor | None]:
        """(the moments read, their mean loss) of a training micro-batch."""
        return self._batch(moments, draw, lambda moment, cut: self._drawn(moment, cut, epoch))[:2]

    def validate(self, moments: list[Example]) -> tuple[list[Example], torch.Tensor | None, int]:
        """(the moments read, their mean loss, how many have a positive as their best window); a
        moment at a time, its windows read in training-sized chunks (`_read_all`)."""
        read, losses, correct = [], [], 0
        for moment in moments:
            done, loss, right = self._batch([moment], None, self._spread)
            if done and loss is not None:
                read += done
                losses.append(loss)
                correct += right
        return read, (torch.stack(losses).mean() if losses else None), correct

    # --- which windows ------------------------------------------------------------------------------

    def _windows(self, moment: LabelledMoment) -> tuple[list[tuple[float, float]], list[int], list[int]] | None:
        """The video's windows, positives and negatives; None (reported once) for a video that cannot be
        probed, or a moment none of whose spans lies in it."""
        if moment.id in self.features.unreadable:
            return None
        key = str(moment.video)
        if key not in self.durations:
            try:
                self.durations[key] = probe(moment.video).duration
            except (VideoError, OSError) as error:
                self.durations[key] = None
                self._unreadable(moment, str(error) or type(error).__name__)
                return None
        duration = self.durations[key]
        if duration is None:
            self._unreadable(moment, "the video cannot be read")
            return None
        cut = windows(duration, self.settings.window)
        positive, negative = label_windows(cut, moment.spans)
        if not positive:
            self._unreadable(moment, f"its span starts after the video's end ({duration:g}s)")
            return None
        return cut, positive, negative

    def _unreadable(self, moment: Example, reason: str) -> None:
        self.features.unreadable.add(moment.id)
        self.warn(f"{moment.id} ({moment.video}): {reason}; left out")

    def _drawn(self, moment: LabelledMoment, chosen: tuple, epoch: int) -> list[tuple[int, bool]]:
        """One positive and up to `negatives` negatives, drawn from (seed, epoch, moment): a resumed
        run draws the same."""
        _, positive, negative = chosen
        rng = random.Random(zlib.crc32(f"{self.settings.seed}|{epoch}|{moment.id}".encode()))
        picked = rng.sample(negative, min(self.settings.negatives, len(negative)))
        return [(rng.choice(positive), True), *[(i, False) for i in sorted(picked)]]

    @staticmethod
    def _spread(moment: LabelledMoment, chosen: tuple) -> list[tuple[int, bool]]:
        """Every positive (up to VALIDATION_WINDOWS - 1) and negatives spread evenly over the video, in
        time order."""
        _, positive, negative = chosen
        positive = _evenly(positive, VALIDATION_WINDOWS - 1)
        negative = _evenly(negative, VALIDATION_WINDOWS - len(positive))
        return sorted([*[(i, True) for i in positive], *[(i, False) for i in negative]])

    # --- reading and scoring ------------------------------------------------------------------------

    def _batch(
        self, moments: list[Example], draw: int | None, choose: Callable
    ) -> tuple[list[Example], torch.Tensor | None, int]:
        read, groups, clips, positives = [], [], [], []
        for moment in moments:
            assert isinstance(moment, LabelledMoment)
            chosen = self._windows(moment)
            if chosen is None:
                continue
            cut = chosen[0]
            picked = choose(moment, chosen)
            clips_here = [Example(f"{moment.id} {cut[i][0]:g}-{cut[i][1]:g}s", moment.video, cut[i][0], cut[i][1])
                          for i, _ in picked]  # fmt: skip
            features = [self.features.get(clip, draw, self.settings.seed) for clip in clips_here]
            if any(f is None for f in features):
                self.features.unreadable.add(moment.id)
                continue
            read.append(moment)
            groups.append((moment, len(clips_here)))
            clips.extend(zip(clips_here, features, strict=True))
            positives.extend(is_positive for _, is_positive in picked)
        if not read:
            return [], None, 0
        queries = [moment.query for moment, n in groups for _ in range(n)]
        prompts = [yes_prompt(q) if self.settings.find_score == "yes" else CAPTION.prompt() for q in queries]
        output = self._read_all([c for c, _ in clips], [f for _, f in clips], prompts, draw)
        positive = torch.tensor(positives, device=output.device)
        sizes = [n for _, n in groups]
        if self.settings.find_score == "yes":
            targets = [YES_NO[0] if p else YES_NO[1] for p in positives]
            loss = answer_loss(self.malmm.model, self.malmm.tokenizer, output, prompts, targets)
            correct = 0
            if draw is None:
                scores = self.malmm.score_labels(output, prompts, list(YES_NO))
                correct = _best_positive(scores[:, 0] - scores[:, 1], positive.cpu(), sizes)
            return read, loss, correct
        ll, tokens = answer_log_likelihoods(self.malmm.model, self.malmm.tokenizer, output, prompts, queries)
        answer = -ll[positive].sum() / tokens[positive].sum()
        contrast = torch.stack([
            torch.logsumexp(group, 0) - torch.logsumexp(group[is_pos], 0)
            for group, is_pos in zip(ll.split(sizes), positive.split(sizes), strict=True)
        ]).mean()  # fmt: skip
        correct = _best_positive(ll.detach().cpu(), positive.cpu(), sizes) if draw is None else 0
        return read, answer + contrast, correct

    def _read_all(
        self, clips: list[Example], features: list[torch.Tensor], prompts: list[str], draw: int | None
    ) -> torch.Tensor:
        """The windows' query outputs; validation (no gradients) reads them as many at a time as a
        training step does, so that it needs no more memory than the plan counted."""
        if torch.is_grad_enabled():
            return self.read(clips, features, prompts, draw)
        size = self.settings.batch_size * (1 + self.settings.negatives)
        return torch.cat([self.read(clips[i : i + size], features[i : i + size], prompts[i : i + size], draw)
                          for i in range(0, len(clips), size)])  # fmt: skip


def _best_positive(scores: torch.Tensor, positive: torch.Tensor, sizes: list[int]) -> int:
    """How many groups (a moment's windows) score a positive window highest."""
    return sum(bool(is_pos[group.argmax()]) for group, is_pos in zip(scores.split(sizes), positive.split(sizes),
                                                                    strict=True))  # fmt: skip


def _evenly(indices: list[int], count: int) -> list[int]:
    """Up to `count` of `indices`, spread evenly (all of them when there are no more)."""
    if len(indices) <= count:
        return indices
    if count <= 0:
        return []
    return [indices[round(i * (len(indices) - 1) / max(count - 1, 1))] for i in range(count)]
