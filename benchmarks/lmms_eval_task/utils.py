"""The task's functions, loaded by lmms-eval (`!function utils.NAME` in malmm_synthetic.yaml).

Videos are named in questions.jsonl relative to data/ beside this file; lmms-eval's chat model
sends each as a `video_url` (file://) when given `pass_video_url=True`.
"""

from __future__ import annotations

import re
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def doc_to_visual(doc: dict) -> list[str]:
    return [str(DATA / doc["video"])]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["question"]


def doc_to_target(doc: dict) -> str:
    return doc["answer"]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def process_results(doc: dict, results: list[str]) -> dict[str, float]:
    """exact_match: the answer is the prediction's first word; contains: the answer is among its words."""
    predicted = words(results[0]) if results else []
    return {
        "exact_match": float(predicted[:1] == [doc["answer"]]),
        "contains": float(doc["answer"] in predicted),
    }
