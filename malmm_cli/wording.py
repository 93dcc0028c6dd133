"""Counts in messages: "1 frame", "2 frames". A message that says "1 frames" reads as a bug."""

from __future__ import annotations

_IRREGULAR = {"was": "were", "has": "have", "is": "are", "entry": "entries", "does": "do", "it": "them",
              "process": "processes", "query": "queries"}  # fmt: skip


def plural(count: int, word: str) -> str:
    """The word as `count` of it is said: frame -> frames, has -> have, entry -> entries."""
    if count == 1:
        return word
    return _IRREGULAR.get(word, word + "s")


def counted(count: int, word: str) -> str:
    """`count` and the word agreeing with it: 1 frame, 2 frames, 0 videos."""
    return f"{count} {plural(count, word)}"
