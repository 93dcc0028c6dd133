#!/usr/bin/env bash
# Fill .whl/ (gitignored) with what benchmarks/gpu_check.py needs on the project's GPU machine and
# that machine lacks, within the device tool's 64 MiB for carried files: bitsandbytes 0.50.2
# (43 MB: 4-/8-bit, with its CUDA 13 kernels), pillow (image preprocessing) and psutil for
# Python 3.12, and a 40 s 720p H.264 clip at ~2.4 Mbit/s (12 MB) for the end-to-end and watch
# sections (watch reads it with PyAV: where the machine has none, that section says so, alone).
# Then run, through the device tool, with carry [".whl"]:
#   pip install --no-index --no-deps -q .whl/*.whl && python benchmarks/gpu_check.py \
#       --out $OUT/gpu_check.json --video .whl/clip-720p.mp4 --budget 470
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python -m pip download --quiet --no-deps bitsandbytes==0.50.2 -d .whl
python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_28_x86_64 pillow==13.0.0 psutil==7.2.2 -d .whl
if [[ ! -f .whl/clip-720p.mp4 ]]; then
    python -c "from pathlib import Path; from tests.media import make_video
make_video(Path('.whl/clip-720p.partial.mp4'), seconds=40, fps=30, size=(1280, 720), noise=10, crf=23)"
    mv .whl/clip-720p.partial.mp4 .whl/clip-720p.mp4
fi
du -sh .whl
