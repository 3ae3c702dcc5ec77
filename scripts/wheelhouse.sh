#!/bin/sh
# Download every runtime wheel the service needs, except torch, into one folder, for an
# offline install onto a host that has its own torch (scripts/install.sh --wheelhouse).
# Run it where a package index is reachable; copy the folder to the host.
#
#   sh scripts/wheelhouse.sh [--python 3.12] [--platform TAG]... [--extras LIST] OUT
#
# The wheels are the pinned runtime closure (scripts/constraints.txt, which leaves out
# torch and the nvidia-* and triton packages only a CUDA torch pulls), downloaded one by one
# without dependencies, so no torch build is ever fetched; then wheels of this repository's
# two distributions. --python and --platform choose the target host's interpreter and
# platform (defaults: this interpreter's version; manylinux_2_28, _2_17 and 2014 on x86_64,
# as a glibc >= 2.28 host runs all three and pip does not infer the older tags from the
# newest). --platform may be repeated and replaces the default list. What the host already
# has is not reinstalled from here: the install step takes only what is missing.
# --extras ray (comma-separated; empty = none) adds the closure of those optional extras of
# pyproject.toml (e.g. Ray for a Ray cluster's image), resolved with the same pins; the
# install step then needs the same --extras.
#
# Environment: PYTHON (the interpreter that runs pip, default python3), PIP_* (pip's own).
set -eu

repo="$(cd "$(dirname "$0")/.." && pwd)"
python=${PYTHON:-python3}
version=
platforms=
extras=
while [ "$#" -gt 1 ]; do
    case $1 in
        --python) version=${2:?--python needs a version}; shift 2 ;;
        --platform) platforms="$platforms --platform ${2:?--platform needs a platform tag}"; shift 2 ;;
        --extras) extras=${2-}; shift 2 ;;
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
if [ -n "$extras" ]; then
    # The extras' own requirements, from pyproject.toml, with their dependencies this time
    # (none of them is torch), under the runtime pins so shared packages keep one version.
    "$python" - "$repo/pyproject.toml" "$extras" > "$requirements" <<'EOF'
import sys
import tomllib

with open(sys.argv[1], "rb") as file:
    optional = tomllib.load(file)["project"]["optional-dependencies"]
for extra in sys.argv[2].split(","):
    if extra.strip() not in optional:
        raise SystemExit(f"wheelhouse: pyproject.toml has no extra {extra.strip()!r}")
    print("\n".join(optional[extra.strip()]))
EOF
    # shellcheck disable=SC2086
    "$python" -m pip download --quiet --only-binary=:all: \
        --python-version "$version" $platforms --implementation cp \
        --constraint "$repo/scripts/constraints.txt" --dest "$out" --requirement "$requirements"
    rm -f "$requirements"
fi
# Pure Python, so one wheel each serves any interpreter and platform.
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$out" "$repo" "$repo/clients/python"
