#!/bin/sh
# Download every runtime wheel the service needs, except torch, into one folder, for an
# offline install onto a host that has its own torch (scripts/install.sh --wheelhouse).
# Run it where a package index is reachable; copy the folder to the host.
#
#   sh scripts/wheelhouse.sh [--python 3.12] [--platform TAG]... OUT
#
# The wheels are the pinned runtime closure (scripts/constraints.txt, which leaves out
# torch and the nvidia-* and triton packages only a CUDA torch pulls), downloaded one by one
# without dependencies, so no torch build is ever fetched; then wheels of this repository's
# two distributions. --python and --platform choose the target host's interpreter and
# platform (defaults: this interpreter's version; manylinux_2_28, _2_17 and 2014 on x86_64,
# as a glibc >= 2.28 host runs all three and pip does not infer the older tags from the
# newest). --platform may be repeated and replaces the default list. What the host already
# has is not reinstalled from here: the install step takes only what is missing.
#
# Environment: PYTHON (the interpreter that runs pip, default python3), PIP_* (pip's own).
set -eu

repo="$(cd "$(dirname "$0")/.." && pwd)"
python=${PYTHON:-python3}
version=
platforms=
while [ "$#" -gt 1 ]; do
    case $1 in
        --python) version=${2:?--python needs a version}; shift 2 ;;
        --platform) platforms="$platforms --platform ${2:?--platform needs a platform tag}"; shift 2 ;;
        *) echo "$0: unknown option $1" >&2; exit 2 ;;
    esac
done
if [ "$#" -ne 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: $0 [--python X.Y] [--platform TAG] OUT" >&2
    exit 2
fi
out=$1
if [ -z "$version" ]; then
    version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
fi
if [ -z "$platforms" ]; then
    for tag in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
        platforms="$platforms --platform $tag"
    done
fi
mkdir -p "$out"

requirements="$out/.requirements.txt"
grep -E '^[A-Za-z0-9]' "$repo/scripts/constraints.txt" > "$requirements"
# $platforms is split into words on purpose (tags have no spaces).
# shellcheck disable=SC2086
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version "$version" $platforms --implementation cp \
    --dest "$out" --requirement "$requirements"
rm -f "$requirements"
# Pure Python, so one wheel each serves any interpreter and platform.
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$out" "$repo" "$repo/clients/python"
