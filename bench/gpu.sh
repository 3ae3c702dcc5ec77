#!/bin/sh
# GPU benchmark on one CUDA device, no network: Florence-2-base and -large shapes with
# random weights (offline sweep per decoding mode, peak memory, compute-bound fraction,
# service under load). Under 8 minutes; see `python -m bench.gpu --help`.
#
#   sh bench/gpu.sh [ARGS for bench.gpu]      e.g. sh bench/gpu.sh --skip-service
#
# Uses the repo venv ($VENV, default .venv). One that already imports the project is used
# as is: `make install` would rebuild the editable install, which needs the network.
# Otherwise the venv is made the way `make install` makes it.
set -eu
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}

if ! "$venv/bin/python" -c "import torch, transformers, xgrammar, service.inference.engine" 2>/dev/null; then
    if command -v make >/dev/null 2>&1; then
        make install VENV="$venv"
    else
        sh scripts/install.sh "$venv" -e ".[dev]"
    fi
fi

export HF_HUB_OFFLINE=1
exec "$venv/bin/python" -m bench.gpu "$@"
