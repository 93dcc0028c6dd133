"""Do time-aware frames help a model say *when*? (issue 30, TimeChat's timestamp-aware frames)

    python benchmarks/time_aware_grounding.py [--task ground|ask] [--epochs 40] [--lr 5e-3] [--seeds 0,1,2]
        [--train 64] [--held 48] [--frames 8] [--lora-llm 4] [--arms NAME,...]
    python benchmarks/time_aware_grounding.py --smoke   # seconds: one tiny run, nothing written

The task: each clip is a row of coloured scenes, 8 to 16 s long (drawn per clip), with exactly
one red scene at a random place and of a random length; the query is "the screen is red" and the
answer the red scene's span in seconds from the clip's start, in the wording of
malmm_cli/reading/timed_text.span_text ("3.5 - 7.0 seconds"). `--task ground` trains on rows
{"video", "query", "start", "end"} and asks in models/presets.GROUND's wording (`malmm ask
--timed`); `--task ask` trains the same target as the answer to "when is the screen red?" under
ask's "Question: ... Short answer:" (what could be trained before `--task ground` existed).
Frames are sampled uniformly over the clip, so without their times a model can tell *which part*
of the clip is red but not how many seconds that is: only the clip's length, which the pictures
never show, turns one into the other. A time-aware model reads each frame with "This frame is sampled at 12.0 second."
(models/time_aware.py), so it is told the seconds.

Arms, each `malmm train` on the same clips, frames, epochs, batch and learning rate (the same
optimiser steps), then scored on held-out clips (other seeds, so other lengths and places):
- without time-aware frames: MA-LMM's training (Q-Former, queries, projection, frame positions);
- with time-aware frames (`--time-aware`);
- each of them + an LLM adapter (`--lora-llm R`: LoRA on the LLM's attention, as TimeChat trains);
and a row that needs no training: always answering the training set's mean span, what a model
that ignores the video reaches. Scores: mean temporal IoU and R@1 at IoU 0.5
(malmm_cli.jobs.grounding.temporal_iou); an answer that does not parse
(malmm_cli.reading.timed_text.parse_timed) counts IoU 0 and is counted.

The model is tests/tiny_models.py's tiny random-weight MA-LMM, with tokenizers that can spell
numbers (the tiny ones have no digits, so every time would read alike): the LLM's splits them
digit by digit as LLaMA's does, the Q-Former's as BERT's WordPiece does. On the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from typer.testing import CliRunner

from benchmarks.common import update_section, write_colour_clip
from malmm_cli.jobs.grounding import temporal_iou
from malmm_cli.reading.timed_text import parse_timed, span_text

QUESTION = "when is the screen red?"  # --task ask
QUERY = "the screen is red"  # --task ground
RED = (200, 40, 40)
OTHERS = [(40, 180, 60), (40, 60, 200), (200, 200, 60), (128, 128, 128), (60, 200, 200), (160, 60, 200)]
FPS = 4  # frames per second of each file
STEP = 0.5  # scene edges fall on half seconds, so a span's text is exact (span_text writes tenths)
SIZE = 32  # the tiny model's frames are 32 x 32
TIME_AWARE = {"without time-aware frames": [], "with time-aware frames": ["--time-aware"]}
ADAPTER = " + LLM adapter"


def arms(lora_llm: int) -> dict[str, list[str]]:
    """Each arm's extra `malmm train` options; with an LLM adapter of rank `lora_llm` (0: none)."""
    adapted = {name + ADAPTER: [*extra, "--lora-llm", str(lora_llm)] for name, extra in TIME_AWARE.items()}
    return {**TIME_AWARE, **(adapted if lora_llm else {})}


SECTION = "time-aware-grounding"


@dataclass(frozen=True)
class Clip:
    path: Path
    duration: float
    start: float  # the red scene, seconds from the clip's start
    end: float


def scenes(duration: float, start: float, end: float, draw: np.random.Generator) -> list[tuple[float, tuple]]:
    """(length, colour) of each scene: the red one, and before and after it scenes of 1-4 s in
    other colours, neighbours never alike."""
    parts: list[tuple[float, tuple]] = []

    def fill(length: float) -> None:
        while length > 0:
            piece = min(length, float(draw.integers(2, 9)) * STEP)
            if 0 < length - piece < 1:  # no sliver at the end
                piece = length
            choices = [c for c in OTHERS if not parts or c != parts[-1][1]]
            parts.append((piece, choices[int(draw.integers(len(choices)))]))
            length -= piece

    fill(start)
    parts.append((end - start, RED))
    fill(duration - end)
    return parts


def make_clip(path: Path, seed: int) -> Clip:
    """A clip of 8-16 s, one red scene of 1.5-5 s anywhere in it; each frame's shade jitters."""
    draw = np.random.default_rng(seed)
    halves = int(draw.integers(16, 33))  # 8.0 to 16.0 s
    red = int(draw.integers(3, 11))
    first = int(draw.integers(0, halves - red + 1))
    duration, start, end = halves * STEP, first * STEP, (first + red) * STEP
    colours = [rgb for length, rgb in scenes(duration, start, end, draw) for _ in range(round(length * FPS))]
    write_colour_clip(path, colours, FPS, SIZE, draw)
    return Clip(path, duration, start, end)


def make_data(folder: Path, train: int, held: int) -> tuple[list[Clip], list[Clip]]:
    """Training clips (rows of ground's data file, train.jsonl, and of ask's, ask.jsonl) and
    held-out ones, from disjoint seeds."""
    (folder / "train").mkdir(parents=True)
    (folder / "held").mkdir()
    training = [make_clip(folder / "train" / f"{i}.mp4", seed=i) for i in range(train)]
    held_out = [make_clip(folder / "held" / f"{i}.mp4", seed=100_000 + i) for i in range(held)]
    ground = [{"video": f"train/{i}.mp4", "query": QUERY, "start": c.start, "end": c.end}
              for i, c in enumerate(training)]  # fmt: skip
    ask = [{"video": f"train/{i}.mp4", "question": QUESTION, "answer": span_text(c.start, c.end)}
           for i, c in enumerate(training)]  # fmt: skip
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ground))
    (folder / "ask.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ask))
    return training, held_out


def number_tokenizers():
    """(LLM tokenizer, Q-Former tokenizer) for the tiny model that spell numbers: the LLM's as
    LLaMA's sentencepiece does (a word piece per word, a digit per digit, "▁" for a space), the
    Q-Former's as BERT's WordPiece. Ids stay within the tiny model's vocabularies."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast, PreTrainedTokenizerFast

    digits = [str(d) for d in range(10)]
    words = ["seconds", "second", "when", "is", "the", "screen", "red", "question", "short", "answer", "this",
             "frame", "sampled", "at", "does", "happen", "in", "video", "give", "its", "start", "and", "end",
             "as"]  # fmt: skip
    specials = ["<unk>", "<s>", "</s>", "[PAD]", "<image>"]
    marks = ["▁", ".", "-", "?", ":", "'", ","]
    vocab = {t: i for i, t in enumerate(specials + marks + digits + [f"▁{w}" for w in words])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.Punctuation()]
    )
    backend.decoder = decoders.Metaspace()
    backend.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 2)])
    llm = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="</s>", eos_token="</s>", pad_token="[PAD]",
        extra_special_tokens={"image_token": "<image>"},
    )  # fmt: skip
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", ":", "-", "'", ",", *words, *digits,
              *(f"##{d}" for d in digits)]  # fmt: skip
    return llm, BertTokenizerFast(vocab={t: i for i, t in enumerate(pieces)})


def build_model(folder: Path) -> Path:
    """The tiny random-weight model (LLM weights of std 0.3, as the learning tests use: at 0.02 its
    logits hardly depend on what it reads), with number-spelling tokenizers."""
    from tests.tiny_models import build_model_folder, tiny_config

    build_model_folder(folder, tiny_config(llm_initializer_range=0.3))
    llm, qformer = number_tokenizers()
    assert len(llm) <= tiny_config().text_config.vocab_size and len(qformer) <= tiny_config().qformer_config.vocab_size
    llm.save_pretrained(folder)
    qformer.save_pretrained(folder / "qformer_tokenizer")
    return folder


def cli(*args: object) -> str:
    from malmm_cli.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    if result.exit_code != 0:
        raise RuntimeError(result.output)
    return result.stdout


def train_arm(model: Path, data: Path, run: Path, extra: list[str], args: argparse.Namespace, seed: int) -> dict:
    started = time.perf_counter()
    rows = data / ("train.jsonl" if args.task == "ground" else "ask.jsonl")
    cli("train", rows, "--task", args.task, "--output", run, "--model", model, "--device", "cpu",
        "--frames", args.frames, "--memory-bank-length", args.frames, "--epochs", args.epochs, "--batch-size", 4,
        "--warmup-steps", 5, "--lr", args.lr, "--samplings", 2, "--seed", seed, "-q", *extra)  # fmt: skip
    info = json.loads((run / "training.json").read_text())
    return {"train_s": time.perf_counter() - started, "train_loss": info["epochs"][-1]["train_loss"]}


def answers(model: Path, run: Path, clips: list[Clip], frames: int, task: str) -> list[str]:
    """Each held-out clip's generated answer, read as `malmm ask [--timed] --checkpoint RUN` reads
    (same sampling, memory and wording), generated greedily without a repetition penalty, as the
    ground preset generates (ask's penalty of 1.5 would fight the repeated digits of a span)."""
    from malmm_cli.media.sampling import Sampling
    from malmm_cli.reading.pipeline import Memory, question_readers, read_video
    from models import Malmm
    from models.presets import GenerationSettings

    malmm = Malmm.from_pretrained(model, checkpoint=run)
    settings = GenerationSettings(max_new_tokens=20, num_beams=1, repetition_penalty=1.0)
    readers = question_readers([QUERY], timed=True) if task == "ground" else question_readers([QUESTION])
    return [
        read_video(malmm, clip.path, readers, "ask", sampling=Sampling(frames=frames), memory=Memory(frames),
                   settings=settings).answers[0].answer
        for clip in clips
    ]  # fmt: skip


def scores(said: list[str | tuple[float, float]], clips: list[Clip]) -> dict:
    """Mean IoU, R@1 at IoU 0.5 and the share of answers that parsed (an unparsed one: IoU 0)."""
    ious, parsed = [], 0
    for answer, clip in zip(said, clips, strict=True):
        span = answer if isinstance(answer, tuple) else None
        if isinstance(answer, str) and (read := parse_timed(answer)).spans:
            span = (read.spans[0].start, read.spans[0].end)
        parsed += span is not None
        ious.append(temporal_iou(span, (clip.start, clip.end)) if span else 0.0)
    return {"miou": statistics.mean(ious), "r1_05": statistics.mean(i >= 0.5 for i in ious),
            "parsed": parsed / len(clips)}  # fmt: skip


def ceilings(clips: list[Clip], frames: int, mean_span: tuple[float, float], mean_duration: float) -> dict:
    """What a reader that sees exactly which of its sampled frames are red reaches (no training):
    with their seconds, it answers from half a frame gap before the first red frame to half a gap
    after the last; without them (only their place among the frames, as frame positions tell),
    the same span as a share of the clip, times the training clips' mean length. A clip whose red
    scene no sampled frame shows gets the mean span."""
    from malmm_cli.media.plans import sample_times

    timed, untimed = [], []
    for clip in clips:
        times = sample_times(clip.duration, frames=frames)
        red = [t for t in times if clip.start <= t < clip.end]
        if not red:
            timed.append(mean_span)
            untimed.append(mean_span)
            continue
        gap = clip.duration / frames
        span = (max(0.0, red[0] - gap / 2), min(clip.duration, red[-1] + gap / 2))
        timed.append(span)
        untimed.append((span[0] / clip.duration * mean_duration, span[1] / clip.duration * mean_duration))
    return {"with seconds": scores(timed, clips), "without seconds": scores(untimed, clips)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=("ground", "ask"), default="ground")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--held", type=int, default=48)
    parser.add_argument("--frames", type=int, default=8, help="frames per clip, and the memory bank's length")
    parser.add_argument("--lora-llm", type=int, default=4, help="rank of the adapter arms' LLM LoRA (0: no such arms)")
    parser.add_argument("--arms", help="which arms to run (comma-separated names; default: all)")
    parser.add_argument("--smoke", action="store_true", help="one tiny run of every arm; nothing written")
    parser.add_argument("--no-doc", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.smoke:
        args.epochs, args.seeds, args.train, args.held, args.frames, args.no_doc = 1, "0", 4, 3, 4, True
    every = arms(args.lora_llm)
    chosen = {name: every[name] for name in (args.arms.split(",") if args.arms else every)}
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, list[dict]] = {arm: [] for arm in chosen}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["MALMM_CACHE_DIR"] = str(root / "cache")  # a private feature cache, gone afterwards
        model = build_model(root / "model")
        training, held = make_data(root / "data", args.train, args.held)
        mean_span = (statistics.mean(c.start for c in training), statistics.mean(c.end for c in training))
        baseline = scores([mean_span] * len(held), held)
        bounds = ceilings(held, args.frames, mean_span, statistics.mean(c.duration for c in training))
        print(f"mean training span {mean_span[0]:.2f} - {mean_span[1]:.2f} s: {baseline}; {bounds}", flush=True)
        for seed in seeds:
            for number, (arm, extra) in enumerate(chosen.items()):
                run = root / f"run-{seed}-{number}"
                trained = train_arm(model, root / "data", run, extra, args, seed)
                said = answers(model, run, held, args.frames, args.task)
                results[arm].append({**trained, **scores(said, held), "examples": said[:3]})
                print(f"seed {seed} {arm}: {results[arm][-1]}", flush=True)
    minutes = (time.perf_counter() - started) / 60
    steps = args.epochs * -(-args.train // 4)
    if args.json:
        report = {"task": args.task, "baseline": baseline, "ceilings": bounds, "mean_span": mean_span, "runs": results,
                  "minutes": minutes, "steps": steps}  # fmt: skip
        args.json.write_text(json.dumps(report, indent=1))
    lines = [
        f"Held-out grounding on {args.held} clips after training on {args.train} (8-16 s each, one red scene of "
        f"1.5-5 s; the same budget for every arm: {args.epochs} epochs of batch 4 = {steps} optimiser steps, lr "
        f"{args.lr:g}, {args.frames} frames per clip, bank {args.frames}; seeds {args.seeds}; `malmm train --task "
        f"{args.task}`; LLM adapter: rank {args.lora_llm}). Mean IoU and R@1 at "
        f"IoU 0.5 of the first span of each greedy answer; parsed: the share of answers in the span wording (one "
        f"that is not scores IoU 0). {sum(map(len, results.values()))} runs in {minutes:.0f} minutes.",
        "",
        "| arm | mean IoU per seed | mean IoU | R@1@0.5 per seed | R@1@0.5 | parsed | train loss, last epoch |",
        "|---|---|---|---|---|---|---|",
        f"| always the training set's mean span ({mean_span[0]:.1f} - {mean_span[1]:.1f} s) | - | "
        f"{baseline['miou']:.3f} | - | {baseline['r1_05']:.2f} | - | - |",
        *(f"| ceiling: sees which sampled frames are red, {name} | - | {b['miou']:.3f} | - | {b['r1_05']:.2f} | - | - |"
          for name, b in bounds.items()),
    ]  # fmt: skip
    for arm, runs in results.items():
        miou, r1 = [r["miou"] for r in runs], [r["r1_05"] for r in runs]
        lines.append(
            f"| {arm} | {', '.join(f'{v:.3f}' for v in miou)} | {statistics.mean(miou):.3f} | "
            f"{', '.join(f'{v:.2f}' for v in r1)} | {statistics.mean(r1):.2f} | "
            f"{statistics.mean(r['parsed'] for r in runs):.2f} | {statistics.mean(r['train_loss'] for r in runs):.3f} |"
        )
    body = "## Time-aware frames: saying when (`benchmarks/time_aware_grounding.py`)\n\n" + "\n".join(lines)
    print(body)
    if not args.no_doc:
        update_section(SECTION, body)


if __name__ == "__main__":
    main()
