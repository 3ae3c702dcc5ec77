#!/bin/sh
# The one-shot GPU check, no network and nothing installed from an index:
#
#   sh bench/gpu.sh --wheelhouse DIR --out OUT.json --preset florence-2-base
#   sh bench/gpu.sh --python PATH --out OUT.json --preset florence-2-large --skip-tests
#   sh bench/gpu.sh --dry-run --skip-service --out /tmp/dry.json    # CPU, same steps
#
# 1. the Python: --wheelhouse DIR installs the project's runtime dependencies from that
#    folder into $SITE (default .gpu-site) with scripts/install.sh and puts them on
#    PYTHONPATH, next to the host's own torch; otherwise --python PATH (default python3)
#    must already import the project's dependencies;
# 2. bench.gpu_check: torch and the CUDA device first, then every module the run needs;
#    it fails in seconds, naming what is missing;
# 3. the gpu-marked tests (bounded by GPU_TESTS_TIMEOUT_S, default 90 s; --skip-tests);
# 4. python -m bench.gpu with the remaining arguments (see its --help), which keeps to its
#    own --budget-s (default 300 s) and writes its report after every point; a hard
#    timeout of the budget plus 30 s ends a run that a wedged device would hang.
set -eu
cd "$(dirname "$0")/.."

python=python3
wheelhouse=
tests=1
device=cuda
service=1
budget=300
site=${SITE:-$PWD/.gpu-site}
fail() { echo "bench/gpu.sh: $*" >&2; exit 2; }

# Our own options are taken out; everything else goes to bench.gpu as given.
for arg in "$@"; do
    shift
    case "${pending:-}" in
        wheelhouse) wheelhouse=$arg; pending=; continue ;;
        python) python=$arg; pending=; continue ;;
        site) site=$arg; pending=; continue ;;
        budget) budget=$arg; pending= ;;
    esac
    case "$arg" in
        --wheelhouse) pending=wheelhouse; continue ;;
        --python) pending=python; continue ;;
        --site) pending=site; continue ;;
        --skip-tests) tests=0; continue ;;
        --dry-run) device=cpu ;;
        --device=cpu) device=cpu ;;
        --skip-service) service=0 ;;
        --budget-s) pending=budget ;;
    esac
    set -- "$@" "$arg"
done
[ -z "${pending:-}" ] || [ "$pending" = budget ] || fail "--$pending needs a value"
case " $* " in *" --device cpu "*) device=cpu ;; esac

command -v "$python" >/dev/null 2>&1 || fail "no Python '$python': give --python PATH"
check="-m bench.gpu_check --device $device"
[ "$service" = 1 ] || check="$check --skip-service"
[ "$tests" = 1 ] || check="$check --skip-tests"

export HF_HUB_OFFLINE=1
export PYTHONPATH=".:clients/python${PYTHONPATH:+:$PYTHONPATH}"
# Torch and the device before anything is installed: no point unpacking wheels for a
# host whose device does not work.
# shellcheck disable=SC2086  # $check is a word list on purpose
"$python" $check --device-only || exit 2

if [ -n "$wheelhouse" ]; then
    [ -d "$wheelhouse" ] || fail "no wheelhouse directory '$wheelhouse'"
    # --deps-only: the project itself runs from this checkout, which a wheel built from
    # another commit must not shadow on PYTHONPATH.
    PYTHON="$python" sh scripts/install.sh --wheelhouse "$wheelhouse" --target "$site" --deps-only \
        || fail "installing from the wheelhouse '$wheelhouse' into '$site' failed"
    export PYTHONPATH="$site:$PYTHONPATH"
fi
# shellcheck disable=SC2086
"$python" $check || exit 2

with_timeout() {
    limit=$1
    shift
    if command -v timeout >/dev/null 2>&1; then
        timeout --kill-after=10 "$limit" "$@"
    else
        "$@"
    fi
}

tests_status=0
if [ "$tests" = 1 ]; then
    # -m gpu: only the device tests; each skips itself without CUDA. -p no:cacheprovider:
    # the run must not write into the tree. A failure does not stop the benchmark (its
    # figures are still wanted) but is this script's exit status.
    with_timeout "${GPU_TESTS_TIMEOUT_S:-90}" "$python" -m pytest -q -m gpu \
        -p no:cacheprovider tests/service/inference/test_engine_device.py \
        tests/service/inference/test_gpu_engine.py || tests_status=$?
    [ "$tests_status" = 0 ] || echo "bench/gpu.sh: gpu-marked tests failed ($tests_status)" >&2
fi

hard_limit=$(( ${budget%.*} + 30 ))
bench_status=0
with_timeout "$hard_limit" "$python" -m bench.gpu "$@" || bench_status=$?
[ "$bench_status" = 0 ] || exit "$bench_status"
exit "$tests_status"
