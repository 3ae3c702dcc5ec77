#!/bin/sh
# System tools the test suite needs that PyPI does not ship: Debian's `prometheus` package
# (the Prometheus server and promtool, for tests/deploy). Fast when already installed.
# Run as root (CI is); .ci/run calls it before `make test`.
set -eu

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# The package would start its own Prometheus service; the tests start theirs on loopback.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
prometheus --version | head -n 1
