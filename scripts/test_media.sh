#!/usr/bin/env bash
# The media tests (probing, decoding, keyframes, timestamps) on the newest Python this project
# supports, with the newest numpy, OpenCV, PyAV and pytest and without torch: what a user on a
# new Python gets from pip, which the main run (scripts/test.sh, Python 3.11, the CPU torch wheel)
# never sees. PyAV 19, for one, installs only on Python 3.12+ and changed av.open. .ci/run calls
# this script after scripts/test.sh. Extra arguments go to pytest.
#
# MALMM_MEDIA_PYTHON: the interpreter (default: python3.13 from PATH or pyenv; none is an error).
# MALMM_MEDIA_VENV: the virtual environment (default .venv-media; reused, its packages upgraded).
set -euo pipefail
cd "$(dirname "$0")/.."

want=3.13
# Only these need nothing but numpy, OpenCV, PyAV and pytest (tests/conftest.py imports torch
# lazily); a torch import in one of them fails the run, as it should.
tests=(tests/test_video.py tests/test_fast_decode.py tests/test_parallel_failures.py tests/test_timefmt.py)

# Each candidate must run and be $want: pyenv's shim for python3.13 is on PATH even where no 3.13
# is selected, and then fails.
find_python() {
    local candidates=() pyenv_bin root version candidate
    if [[ -n ${MALMM_MEDIA_PYTHON:-} ]]; then
        candidates=("$MALMM_MEDIA_PYTHON")
    else
        candidates=("python$want")
        root=${PYENV_ROOT:-$HOME/.pyenv}
        pyenv_bin=$(command -v pyenv || true)
        [[ -z $pyenv_bin && -x $root/bin/pyenv ]] && pyenv_bin=$root/bin/pyenv
        if [[ -n $pyenv_bin ]]; then
            while read -r version; do
                candidates+=("$(PYENV_VERSION=$version "$pyenv_bin" which "python$want" 2>/dev/null || true)")
            done < <("$pyenv_bin" versions --bare 2>/dev/null | grep -E "^${want//./\\.}\.[0-9]+$" | sort -rV)
        fi
        for candidate in "$root"/versions/"$want".*/bin/python"$want"; do
            candidates+=("$candidate")
        done
    fi
    for candidate in "${candidates[@]}"; do
        if [[ -n $candidate ]] && "$candidate" -c "import sys; sys.exit('%d.%d' % sys.version_info[:2] != '$want')" 2>/dev/null
        then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

if ! python=$(find_python); then
    if [[ -n ${MALMM_MEDIA_PYTHON:-} ]]; then
        echo "error: MALMM_MEDIA_PYTHON=$MALMM_MEDIA_PYTHON is not a Python $want interpreter" >&2
    else
        echo "error: no Python $want found (PATH, pyenv): the media tests need it. Install it" \
            "(pyenv install $want) or set MALMM_MEDIA_PYTHON to a Python $want interpreter." >&2
    fi
    exit 1
fi

venv=${MALMM_MEDIA_VENV:-.venv-media}
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
# shellcheck disable=SC1091
source "$venv/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet --upgrade numpy opencv-python-headless av pytest

if python -c "import torch" 2>/dev/null; then
    echo "error: torch is importable in $venv: the media tests must run without it" >&2
    exit 1
fi
python - <<'EOF'
import sys

import av
import cv2
import numpy

print(f"media tests: Python {sys.version.split()[0]}, PyAV {av.__version__}, OpenCV {cv2.__version__}, "
      f"numpy {numpy.__version__}, no torch")
EOF
# `python -m pytest` from the repository root imports malmm_cli from the source tree: installing
# malmm would pull in torch.
OMP_NUM_THREADS=1 python -m pytest -q "${tests[@]}" "$@"
