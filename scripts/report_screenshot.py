"""Make docs/html-report.png, the README's picture of an HTML report, from a synthetic clip.

    python scripts/report_screenshot.py [--workdir DIR]

A 2-minute clip of four coloured scenes (a shape moving over each) is written with PyAV, read by
`malmm caption --segment 30s --format html` with a tiny random-weight model (so its captions are
random words), and the report is photographed in headless Chromium at 1000x900 (tests/browser.py).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SCENES = [(200, 60, 50), (40, 150, 80), (40, 80, 190), (220, 170, 40)]  # RGB, 30 s each


def make_clip(path: Path, seconds_per_scene: int = 30, fps: int = 4, size: tuple[int, int] = (320, 180)) -> Path:
    import av
    import numpy as np

    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps), options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(len(SCENES) * seconds_per_scene * fps):
            scene = index // (seconds_per_scene * fps)
            picture = np.empty((height, width, 3), np.uint8)
            picture[:] = SCENES[scene]
            shade = np.linspace(0.7, 1.1, height)[:, None, None]
            picture = np.clip(picture * shade, 0, 255).astype(np.uint8)
            x = (index * 3) % (width - 60)
            picture[60:120, x : x + 60] = (245, 245, 245)
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
            frame.pts, frame.time_base = index, 1 / stream.average_rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/malmm-report-screenshot"))
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "html-report.png")
    args = parser.parse_args()
    from tests.browser import Browser, find_chromium
    from tests.tiny_models import build_tiny_model

    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.workdir / "tiny-model"
    if not (model / "config.json").exists():
        build_tiny_model(model)
    clip = make_clip(args.workdir / "kitchen.mp4")
    command = [str(Path(sys.executable).parent / "malmm"), "caption", str(clip), "--segment", "30s", "--fps", "1",
               "--model", str(model), "--device", "cpu", "--num-beams", "1", "--max-new-tokens", "6", "--no-cache",
               "--format", "html", "--output-dir", str(args.workdir), "--overwrite", "--quiet"]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)  # stdout gets the report too
    executable = find_chromium()
    if executable is None:
        raise SystemExit("no Chromium: apt-get install chromium")
    with Browser(executable) as browser:
        page = browser.open(args.workdir / "kitchen.caption.html", width=1000, height=900)
        args.output.write_bytes(page.screenshot())
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
