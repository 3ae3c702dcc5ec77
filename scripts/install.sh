#!/bin/sh
# The one install path: `make` (the dev and test venv) and the Dockerfile (the image) both
# run this script, so the image gets the same torch selection and the same pinned versions
# (scripts/constraints.txt) that the test suite ran against.
#
#   sh scripts/install.sh VENV REQUIREMENT...     e.g. sh scripts/install.sh .venv -e '.[dev]'
#
# Environment:
#   PYTHON           interpreter that creates the venv (default python3)
#   TORCH_SPEC       torch requirement, installed first and on its own (default torch==2.13.0)
#   TORCH_INDEX_URL  index for that torch step only (e.g. PyTorch's CPU wheel index);
#                    empty = pip's configured indexes (PyPI: a CUDA build on Linux x86_64)
#   PIP_*            pip's own settings (the image sets PIP_NO_CACHE_DIR=1)
set -eu

if [ "$#" -lt 2 ]; then
    echo "usage: $0 VENV REQUIREMENT..." >&2
    exit 2
fi
venv=$1
shift
constraints="$(cd "$(dirname "$0")" && pwd)/constraints.txt"
python=${PYTHON:-python3}
torch_spec=${TORCH_SPEC:-torch==2.13.0}

test -x "$venv/bin/python" || "$python" -m venv "$venv"

# Torch first and alone: its index decides the build (CPU or CUDA). Its dependencies are
# brought to the pinned versions by the constrained step below.
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "$venv/bin/python" -m pip install --quiet "$torch_spec" --index-url "$TORCH_INDEX_URL"
else
    "$venv/bin/python" -m pip install --quiet "$torch_spec"
fi
"$venv/bin/python" -m pip install --quiet --constraint "$constraints" "$@"
