"""Scores as MA-LMM reports them (lavis/tasks in its repository), from plain predictions.

- QA and classification: `top_k_accuracy`. A prediction is the list of beams, best first; top-1
  looks at the first beam, top-5 at any of the first five. MSVD-QA and MSRVTT-QA compare the first
  word of each beam with the answer (`first_word`), ActivityNet-QA and classification the whole
  string, exactly; your own data ignores case and surrounding spaces. Percentages, as the paper
  prints them.
- Captions: `caption_scores`, BLEU-4, METEOR, ROUGE-L and CIDEr with the COCO caption scorers
  (pycocoevalcap), called one by one: the package's `COCOEvalCap.evaluate()` also runs SPICE,
  which downloads Stanford CoreNLP. Its tokenizer and METEOR run Java; without Java the text is
  tokenized as `simple_tokens` says and METEOR is reported as unavailable (None). Fractions, as
  pycocoevalcap gives them; `aggregate` is their sum (MA-LMM's model selection figure; None
  without METEOR).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import string
import sys
from collections.abc import Iterator, Sequence

CAPTION_METRICS = ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def answer_matches(
    beams: Sequence[str], reference: str, first_word: bool = False, ignore_case: bool = False
) -> list[bool]:
    """Whether each beam is the reference: exact strings (MA-LMM's rule), or their first words;
    ignore_case: compared lower-cased and stripped (your own data, as training validates)."""
    if first_word:
        beams = [beam.split(" ")[0] for beam in beams]
    if ignore_case:
        beams, reference = [beam.strip().lower() for beam in beams], reference.strip().lower()
    return [beam == reference for beam in beams]


def top_k_accuracy(
    predictions: Sequence[Sequence[str]],
    references: Sequence[str],
    first_word: bool = False,
    k: int = 5,
    ignore_case: bool = False,
) -> dict[str, float]:
    """top1 and top{k} in percent: the share of examples whose first beam, or any of the first k
    beams, matches (`answer_matches`)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {"top1": 0.0, f"top{k}": 0.0}
    pairs = zip(predictions, references, strict=True)
    hits = [answer_matches(beams, reference, first_word, ignore_case) for beams, reference in pairs]
    return {
        "top1": 100.0 * sum(bool(h[:1] and h[0]) for h in hits) / len(hits),
        f"top{k}": 100.0 * sum(any(h[:k]) for h in hits) / len(hits),
    }


def ranked_accuracy(ranked: Sequence[Sequence[str]], references: Sequence[str], k: int = 5) -> dict[str, float]:
    """top1 and top{k} of label rankings (likeliest first), in percent."""
    scores = top_k_accuracy(ranked, references, k=k)
    return {f"ranked_{name}": value for name, value in scores.items()}


# The punctuation PTBTokenizer (pycocoevalcap/tokenizer/ptbtokenizer.py) removes after tokenizing.
_PTB_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", *".?!,:-;...", "--"}


def simple_tokens(text: str) -> str:
    """The tokenization used without Java: lower case, punctuation split off and removed, split on
    whitespace. It agrees with Stanford's PTB tokenizer on plain captions; it differs on
    contractions ("don't": "don t" here, "do n't" there) and on some symbols."""
    spaced = "".join(f" {c} " if c in string.punctuation else c for c in text.lower())
    return " ".join(token for token in spaced.split() if token not in _PTB_PUNCTUATION and token not in "\"'()[]{}")


def java_available() -> bool:
    return shutil.which("java") is not None


def caption_scores(
    predictions: dict[str, str], references: dict[str, list[str]], use_java: bool | None = None
) -> dict[str, float | None]:
    """BLEU-4, METEOR, ROUGE-L, CIDEr (pycocoevalcap's own values, fractions) and their sum.

    predictions: id -> the caption; references: id -> every reference caption of that id.
    use_java: None: when Java is installed. Without it METEOR is None (and not in the sum).
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    missing = [key for key in predictions if key not in references]
    if missing:
        raise ValueError(f"no references for {len(missing)} predictions ({', '.join(missing[:3])}...)")
    if not predictions:
        return {name: None for name in (*CAPTION_METRICS, "aggregate")}
    java = java_available() if use_java is None else use_java
    hypotheses = tokenized({k: [v] for k, v in predictions.items()}, java)
    truths = tokenized({k: list(references[k]) for k in predictions}, java)
    scores: dict[str, float | None] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # the scorers print their progress on stdout
        scores["Bleu_4"] = float(Bleu(4).compute_score(truths, hypotheses)[0][3])
        if java:
            from pycocoevalcap.meteor.meteor import Meteor

            scores["METEOR"] = float(Meteor().compute_score(truths, hypotheses)[0])
        else:
            scores["METEOR"] = None
        scores["ROUGE_L"] = float(Rouge().compute_score(truths, hypotheses)[0])
        scores["CIDEr"] = float(Cider().compute_score(truths, hypotheses)[0])
    # MA-LMM's figure sums all four: without METEOR there is none to compare
    scores["aggregate"] = None if scores["METEOR"] is None else sum(scores.values())
    return scores


def tokenized(texts: dict[str, list[str]], java: bool) -> dict[str, list[str]]:
    """Captions as the COCO scorers take them: Stanford's PTB tokenizer with Java (one Java run
    for all of them), `simple_tokens` without."""
    if not java:
        return {key: [simple_tokens(text) for text in values] for key, values in texts.items()}
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    with contextlib.redirect_stdout(io.StringIO()), _quiet_stderr():  # Java's own line on stderr
        return PTBTokenizer().tokenize({key: [{"caption": t} for t in values] for key, values in texts.items()})


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the standard error of child processes (the tokenizer's Java prints its speed there)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
