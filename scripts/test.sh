#!/usr/bin/env bash
# Set everything up and run the tests: a virtual environment (.venv, or $MALMM_VENV), the CPU
# build of PyTorch, malmm with its test extras, then ruff and pytest. .ci/run calls this script,
# so CI checks exactly what the README says. Extra arguments go to pytest (`-n 0`: one process).
#
# MALMM_TORCH: what pip installs for PyTorch (default torch==2.13.0, a CPU wheel on this project's
# machines; elsewhere, for example: MALMM_TORCH="torch --index-url https://download.pytorch.org/whl/cpu").
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${MALMM_VENV:-.venv}
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
python -m pip install --quiet ${MALMM_TORCH:-torch==2.13.0}
python -m pip install --quiet -e ".[test]"

ruff check .
ruff format --check .
# Two test processes (pytest-xdist): CI's machines have two cores, and the tests are mostly
# single-threaded (OMP_NUM_THREADS=1). MALMM_TEST_WORKERS=0 runs them in this process.
OMP_NUM_THREADS=1 python -m pytest -q -n "${MALMM_TEST_WORKERS:-2}" "$@"
