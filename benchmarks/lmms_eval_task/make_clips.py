"""Four synthetic clips of one colour each, and a question about each, for lmms-eval's
`openai_compatible` model against `malmm serve` (docs/serve.md, "lmms-eval").

    python benchmarks/lmms_eval_task/make_clips.py      # writes benchmarks/lmms_eval_task/data/

The frames are one plain colour with a little noise, and the answer is the colour. A random-weight
model will not know it: the point is that the pipeline (clips, task, client, server, scoring) runs
end to end offline, not the score.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np

DATA = Path(__file__).resolve().parent / "data"
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
QUESTION = "What colour is the whole picture? Answer with one word."


def write_clip(path: Path, rgb: tuple[int, int, int], seconds: float = 2.0, fps: int = 10, seed: int = 0) -> None:
    """An H.264 MP4 of `seconds` whose frames are all `rgb`, with a little noise."""
    generator = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for _ in range(int(seconds * fps)):
            picture = np.clip(np.array(rgb) + generator.integers(-8, 9, (96, 128, 3)), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    DATA.mkdir(exist_ok=True)
    rows = []
    for seed, (name, rgb) in enumerate(COLOURS.items()):
        write_clip(DATA / f"{name}.mp4", rgb, seed=seed)
        rows.append({"id": name, "video": f"{name}.mp4", "question": QUESTION, "answer": name})
    (DATA / "questions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"{len(rows)} clips and questions in {DATA}")


if __name__ == "__main__":
    main()
