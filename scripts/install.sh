#!/bin/sh
# The one install path: `make` (the dev and test venv, and the minimum-versions venv) and the
# Dockerfile (the image) all run this script, so the image gets the same torch selection and
# the same pinned versions (scripts/constraints.txt) that the test suite ran against.
#
#   sh scripts/install.sh VENV REQUIREMENT...     e.g. sh scripts/install.sh .venv -e '.[dev]'
#   sh scripts/install.sh --wheelhouse DIR --target SITE [--deps-only] [--extras LIST]
#
# The second form installs offline (pip --no-index) from a wheelhouse that
# scripts/wheelhouse.sh built, onto an interpreter that already has its own torch (a GPU
# host, an image with a CUDA torch). It never installs torch, nvidia-* or triton, and it
# installs only what that interpreter (with SITE on its path) lacks or has at a version the
# service cannot use: the host's own numpy, transformers, ... are kept, not re-pinned. The
# packages go into SITE, a folder meant for PYTHONPATH (the host's environment may be
# read-only); then run with PYTHONPATH=SITE. --deps-only leaves out this repository's two
# distributions, for running from a checkout (PYTHONPATH=SITE:.:clients/python would
# otherwise import the wheelhouse's copy of `service` before the checkout's).
#
# Environment:
#   PYTHON           interpreter that creates the venv (default python3); in the offline
#                    form, the host interpreter to install for
#   TORCH_SPEC       torch requirement, installed first and on its own (default torch==2.13.0)
#   TORCH_INDEX_URL  index for that torch step only (e.g. PyTorch's CPU wheel index);
#                    empty = pip's configured indexes (PyPI: a CUDA build on Linux x86_64)
#   CONSTRAINTS      pip constraints file (default scripts/constraints.txt, the runtime pins;
#                    scripts/constraints-min.txt: the lowest supported versions)
#   PIP_*            pip's own settings (the image sets PIP_NO_CACHE_DIR=1)
set -eu

scripts="$(cd "$(dirname "$0")" && pwd)"
python=${PYTHON:-python3}

if [ "${1:-}" = "--wheelhouse" ]; then
    wheelhouse=
    target=
    deps_only=
    extras=
    while [ "$#" -gt 0 ]; do
        case $1 in
            --wheelhouse) wheelhouse=${2:?--wheelhouse needs a folder}; shift 2 ;;
            --target) target=${2:?--target needs a folder}; shift 2 ;;
            --deps-only) deps_only=--deps-only; shift ;;
            --extras) extras=${2-}; shift 2 ;;
            *) echo "$0: unknown option $1" >&2; exit 2 ;;
        esac
    done
    if [ -z "$target" ]; then
        echo "usage: $0 --wheelhouse DIR --target SITE [--deps-only]" >&2
        exit 2
    fi
    if ! "$python" -c "import torch" 2>/dev/null; then
        echo "$0: $python has no torch: install the host's torch build first" >&2
        exit 1
    fi
    mkdir -p "$target"
    wheelhouse=$(cd "$wheelhouse" && pwd)
    target=$(cd "$target" && pwd)
    # The plan (name==version per missing package) is made by the host interpreter with
    # SITE on its path, so what an earlier run put there counts as installed.
    plan=$(PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}" \
        "$python" "$scripts/offline_plan.py" $deps_only ${extras:+--extras "$extras"} "$wheelhouse")
    if [ -n "$plan" ]; then
        # --no-deps: the plan is the complete set, so pip cannot pull a second copy of
        # anything the host already has. $plan is split into words on purpose.
        # shellcheck disable=SC2086
        "$python" -m pip install --quiet --no-index --find-links "$wheelhouse" --no-deps \
            --upgrade --target "$target" $plan
    fi
    exit 0
fi

if [ "$#" -lt 2 ]; then
    echo "usage: $0 VENV REQUIREMENT... | $0 --wheelhouse DIR --target SITE" >&2
    exit 2
fi
venv=$1
shift
constraints=${CONSTRAINTS:-$scripts/constraints.txt}
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
