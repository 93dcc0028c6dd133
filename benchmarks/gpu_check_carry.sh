#!/usr/bin/env bash
# Fill .whl/ (gitignored) with the wheels benchmarks/gpu_check.py needs on the project's GPU machine
# and that machine's image lacks, for its Python (CPython 3.12, manylinux x86_64):
#   - bitsandbytes 0.50.2 (4-/8-bit layers), stripped to its CUDA 13.0 library: the wheel holds 16
#     native libraries (43 MB) and torch 2.11+cu130 loads one; the stripped wheel is repacked with
#     a matching RECORD, so pip installs it as any other;
#   - PyAV 18.1.0 (probing, keyframe sampling, `malmm watch`, and the clips the check makes; PyAV
#     19 makes probe() raise for every video).
# Not carried, the image has them: torch, transformers, numpy, pillow, psutil, opencv, accelerate,
# peft, nvidia-ml-py (docs/benchmarks.md, "GPU check"). No clip either: the check makes its own.
# The device tool carries at most 64 MiB with the working tree; this refuses past 60 MiB.
# Then run the device call of docs/benchmarks.md ("GPU check") with carry [".whl"].
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT_MIB=${CARRY_LIMIT_MIB:-60}  # the tool takes 64 MiB; a margin for files added meanwhile
PYTHON=${PYTHON:-python3}
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT

"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$fresh" bitsandbytes==0.50.2 av==18.1.0

# Keep one native library of bitsandbytes and rewrite RECORD for what is kept.
"$PYTHON" - "$fresh" <<'EOF'
import base64, hashlib, sys, zipfile
from pathlib import Path

KEEP = "libbitsandbytes_cuda130.so"
(wheel,) = Path(sys.argv[1]).glob("bitsandbytes-*.whl")
stripped = wheel.with_suffix(".stripped")
with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(stripped, "w", zipfile.ZIP_DEFLATED) as target:
    names = [n for n in source.namelist() if not (n.startswith("bitsandbytes/libbitsandbytes_") and not n.endswith(KEEP))]
    assert f"bitsandbytes/{KEEP}" in names, f"{KEEP} is not in {wheel.name}"
    record = next(n for n in names if n.endswith(".dist-info/RECORD"))
    lines = []
    for name in names:
        if name == record:
            continue
        data = source.read(name)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{name},sha256={digest},{len(data)}")
        target.writestr(source.getinfo(name), data, zipfile.ZIP_DEFLATED)
    target.writestr(record, "\n".join([*lines, f"{record},,"]) + "\n")
stripped.replace(wheel)
print(f"{wheel.name}: {len(names)} files kept, {wheel.stat().st_size / 2**20:.1f} MiB")
EOF

# What the device tool sends: tracked and untracked-not-ignored files, plus the carried .whl/.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
wheels=$(du -sb "$fresh" | cut -f1)
rm -rf .whl
awk -v t="$tree" -v w="$wheels" -v l="$LIMIT_MIB" 'BEGIN {
    printf "working tree %.1f MiB + .whl %.1f MiB = %.1f MiB (limit %d MiB of the device tool'"'"'s 64)\n",
        t / 2^20, w / 2^20, (t + w) / 2^20, l }'
if ((tree + wheels > LIMIT_MIB * 1048576)); then
    echo "refused: more than $LIMIT_MIB MiB would travel; .whl/ left empty" >&2
    exit 1
fi
mv "$fresh" .whl && trap - EXIT
ls -l .whl
