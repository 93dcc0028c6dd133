#!/usr/bin/env bash
# The GPU check's dress rehearsal, on a CPU, in an environment built like the GPU machine's image:
# CPython 3.12, torch 2.11.0 (PyPI's build for 3.12 is the CUDA 13.0 one the machine has; it runs
# on a CPU), transformers 5.17.0 and the other packages the image has, malmm NOT installed, and the
# wheels gpu_check_carry.sh carries installed the way docs/benchmarks.md installs them there. Then
# the device command with --cpu: every section must run and none may fail.
#   bash benchmarks/gpu_check_rehearsal.sh          # output and results under $OUT (/tmp/malmm-rehearsal)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-rehearsal}
OUT=${OUT:-/tmp/malmm-rehearsal}
if [[ ! -x $VENV/bin/python3 ]]; then
    python312=$(PYENV_VERSION=3.12.1 pyenv which python3.12 2>/dev/null || command -v python3.12)
    "$python312" -m venv "$VENV"
    "$VENV/bin/pip" install -q torch==2.11.0 transformers==5.17.0 accelerate==1.15.0 huggingface-hub==1.33.0 \
        safetensors==0.8.0 opencv-python-headless pillow psutil peft nvidia-ml-py
fi
[[ -d .whl ]] || bash benchmarks/gpu_check_carry.sh
rm -rf "$OUT" && mkdir -p "$OUT"
export PATH="$PWD/$VENV/bin:$PATH" OUT
# The device command (docs/benchmarks.md, "GPU check"), with --cpu, its folders under $OUT, and a
# budget a shared 2-core machine cannot run out of (tiny shapes time nothing; skipping for time is
# tested in tests/test_gpu_check.py).
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$OUT/site" .whl/*.whl &&
    export PYTHONPATH="$OUT/site" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 || exit
python3 benchmarks/gpu_check.py --cpu --budget 3600 --workdir "$OUT/work" --out "$OUT/gpu_check.json" 2>&1 |
    tee "$OUT/gpu_check.log"
python3 - "$OUT/gpu_check.json" <<'EOF'
import json, sys
results = json.load(open(sys.argv[1]))
failed = {name: section for name, section in results["sections"].items() if "error" in section or "skipped" in section}
print(f"rehearsal: {len(results['sections']) - len(failed)} of {len(results['sections'])} sections ran, "
      f"{results['seconds']:.0f} s; " + ", ".join(f"{n} {s['seconds']:.1f} s" for n, s in results["sections"].items() if "seconds" in s))
sys.exit(f"failed or skipped: {json.dumps(failed)[:2000]}" if failed else 0)
EOF
