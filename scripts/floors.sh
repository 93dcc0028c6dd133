#!/usr/bin/env bash
# Check the declared floors: a fresh Python 3.11 environment with exactly the lowest release that
# pyproject.toml allows of each dependency (`name>=X` installed as `name==X`), then the tests that
# exercise them: loading, generation, label scoring, quantization, the Mamba temporal module, LoRA
# training, the CLI and its terminal output, hub downloads, video decoding through the reading loop.
# .ci/run calls it. A floor that is false fails here, not on a user's machine.
#
# torch is the exception: only torch==2.13.0 (MALMM_TORCH) is installed and tested, whatever the floor.
# tests/test_video.py and tests/test_fast_decode.py are left out: their clips are written rotated,
# which needs av>=18.1 (the test extra), above av's floor.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${MALMM_FLOORS_VENV:-.venv-floors}
python=${MALMM_FLOORS_PYTHON:-python3.11}
rm -rf "$venv"
"$python" -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
python -m pip install --quiet ${MALMM_TORCH:-torch==2.13.0}

# pyproject's floors as pins: "transformers>=5.14,<6" -> "transformers==5.14"
python - >"$venv/floors.txt" <<'EOF'
import re
import tomllib

with open("pyproject.toml", "rb") as file:
    dependencies = tomllib.load(file)["project"]["dependencies"]
for dependency in dependencies:
    floor = re.match(r"^([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)", dependency)
    if floor is None:
        raise SystemExit(f"no floor (>=) in the dependency {dependency!r}")
    name, version = floor.groups()
    if name != "torch":
        print(f"{name}=={version}")
EOF
echo "floors: $(tr '\n' ' ' <"$venv/floors.txt")"
python -m pip install --quiet -c "$venv/floors.txt" -e . "pytest>=8"

OMP_NUM_THREADS=1 python -m pytest -q -p no:cacheprovider "$@" \
    tests/test_loading.py tests/test_scoring.py tests/test_golden.py tests/test_transformers_parity.py \
    tests/test_quantization.py tests/test_temporal.py tests/test_training.py tests/test_checkpoint.py \
    tests/test_reading.py tests/test_cli.py tests/test_terminal.py tests/test_hub.py tests/test_doctor.py
