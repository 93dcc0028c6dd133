"""Where in a video a query happens (`malmm find`): a score per window, and the moments it makes.

The reading is pipeline.py's: `find_readers` (there) reads each window through the memory and ranks
labels at every span read-out. This module turns those rankings into a score curve and moments, as
plain functions of numbers, so the rules can be tested without a model:

- **likelihood**: the log-likelihood of the query as the answer to a describing instruction in a
  window, less the same at the end of the video (the whole video read); the score is the logistic
  of that difference, so 0.5 means "fits this window as well as the whole video", above it better.
- **yes**: the probability of "yes" against "no" for "Does this part of the video show: QUERY?".

Both give scores in [0, 1], so one --threshold (0.5) means "more for than against" for either.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from malmm_cli.reading.results import Found, Moment, RankedLabel

SCORES = ("likelihood", "yes")
YES_NO = ("yes", "no")
YES_PROMPT = "Question: Does this part of the video show: {query}? Short answer:"  # SeViLA's localizer asks so
WINDOW_FRAMES = 4  # frames a default window holds: --window is this many frames at the sampled rate


@dataclass(frozen=True)
class FindRule:
    """How a reader's window scores become moments: the scoring rule, the --threshold a window's
    score must reach, the longest gap (seconds) bridged between windows above it, and how many
    moments to keep (best first)."""

    score: str = "likelihood"
    threshold: float = 0.5
    min_gap: float = 0.0
    top_k: int = 5

    def found(
        self, queries: Sequence[str], spans: Sequence[tuple[tuple[float, float], list[RankedLabel]]],
        whole: list[RankedLabel] | None,
    ) -> list[Found]:  # fmt: skip
        """Each query's curve and moments from the span read-outs of its reader (ranked labels per
        window, in time order) and, for the likelihood rule, its read-out at the end of the video."""
        results = []
        for query in queries:
            curve = [(start, end, self.window_score(query, ranked, whole)) for (start, end), ranked in spans]
            found = moments(curve, self.threshold, self.min_gap, self.top_k)
            results.append(Found(query, found, curve, self.threshold))
        return results

    def window_score(self, query: str, ranked: list[RankedLabel], whole: list[RankedLabel] | None) -> float:
        by_label = {label.label: label for label in ranked}
        if self.score == "yes":
            return by_label["yes"].probability
        if whole is None:
            raise ValueError("the likelihood rule needs the whole video's read-out")
        reference = {label.label: label for label in whole}[query].log_likelihood
        return _logistic(by_label[query].log_likelihood - reference)


def _logistic(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def moments(curve: Sequence[tuple[float, float, float]], threshold: float, min_gap: float, top_k: int) -> list[Moment]:
    """Windows (start, end, score), in time order, to moments: consecutive windows scoring at least
    `threshold` joined, across gaps of at most `min_gap` seconds below it; each moment scored by its
    best window (a short dip bridged does not lower it); the `top_k` best, best first (the earlier
    on a tie)."""
    runs: list[list[tuple[float, float, float]]] = []
    for window in curve:
        if window[2] < threshold:
            continue
        if runs and window[0] - runs[-1][-1][1] <= min_gap + 1e-9:
            runs[-1].append(window)
        else:
            runs.append([window])
    found = [Moment(run[0][0], run[-1][1], max(score for _, _, score in run)) for run in runs]
    return sorted(found, key=lambda moment: (-moment.score, moment.start))[:top_k]


def yes_prompt(query: str) -> str:
    return YES_PROMPT.format(query=query.strip())


def default_window(fps: float) -> float:
    """A window of WINDOW_FRAMES frames at the sampled rate (4 s at 1 frame/s)."""
    return WINDOW_FRAMES / fps
