"""docs/find.md's measurement: a memory per window or one memory for the video, likelihood or yes
rule, on scenes of known colours, with a tiny model trained on the colour task (CPU, a minute).

    python benchmarks/find_windows.py WORKDIR [WINDOW]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ makes the clips and the tiny model

from safetensors.torch import load_file
from typer.testing import CliRunner

from malmm_cli.cli import app
from malmm_cli.media.sampling import Sampling
from malmm_cli.reading.find import FindRule
from malmm_cli.reading.pipeline import Memory, find_readers, read_videos
from models import CAPTION, Malmm
from tests.media import SCENE_COLOURS, make_scene, make_scenes
from tests.tiny_models import build_model_folder, tiny_config

ORDERS = [["blue", "red", "green"], ["green", "red", "blue"], ["red", "blue", "green"], ["blue", "green", "red"]]


def train(root: Path) -> Path:
    model = build_model_folder(root / "steerable", tiny_config(llm_initializer_range=0.3))
    (root / "clips").mkdir(parents=True, exist_ok=True)
    colours = list(SCENE_COLOURS)
    rows = []
    for i in range(12):
        make_scene(root / "clips" / f"{i}.mp4", colours[i % 3], seed=i)
        rows.append(json.dumps({"video": f"clips/{i}.mp4", "caption": colours[i % 3]}) + "\n")
    (root / "captions.jsonl").write_text("".join(rows))
    args = ["train", root / "captions.jsonl", "--task", "caption", "--output", root / "run", "--model", model,
            "--device", "cpu", "--frames", "4", "--memory-bank-length", "2", "--batch-size", "4",
            "--warmup-steps", "5", "--lr", "2e-3", "--epochs", "10", "-q"]  # fmt: skip
    assert CliRunner().invoke(app, [str(a) for a in args]).exit_code == 0
    return model


def iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0])) / (max(a[1], b[1]) - min(a[0], b[0]))


def main(root: Path, window: float) -> None:
    model = train(root)
    videos = [(make_scenes(root / f"scenes{k}.mp4", order, seed=50 + k), order.index("red") * 2.0)
              for k, order in enumerate(ORDERS)]  # fmt: skip
    malmm = Malmm.from_pretrained(model)
    malmm.model.load_state_dict(load_file(root / "run" / "model.safetensors"), strict=False)
    for score in ("likelihood", "yes"):
        for restart in (True, False):
            readers = find_readers(["red"], window, FindRule(score, threshold=0.5, top_k=1), restart=restart)
            results = read_videos(malmm, [v for v, _ in videos], readers, "find", sampling=Sampling(fps=2.0),
                                  memory=Memory(2), settings=CAPTION.generation)  # fmt: skip
            ious, contrasts = [], []
            for result, (_, red) in zip(results, videos, strict=True):
                found = result.found[0]
                top = (found.moments[0].start, found.moments[0].end) if found.moments else (0.0, 0.0)
                ious.append(iou(top, (red, red + 2)))
                inside = [s for a, b, s in found.curve if a >= red and b <= red + 2]
                outside = [s for a, b, s in found.curve if not (a >= red and b <= red + 2)]
                contrasts.append(sum(inside) / len(inside) - sum(outside) / len(outside))
            mean_iou, contrast = sum(ious) / len(ious), sum(contrasts) / len(contrasts)
            print(f"score={score:10} restart={restart!s:5} window={window} top-moment IoU={mean_iou:.2f} "
                  f"contrast={contrast:+.3f}")  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 2.0)
