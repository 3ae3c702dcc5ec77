#!/bin/sh
# System tools the test suite needs that PyPI does not ship: Debian's `prometheus` package
# (the Prometheus server and promtool, for tests/deploy) and `chromium` + `chromium-driver`
# (the playground page's browser tests, tests/service/http/test_ui_browser.py). Fast when
# already installed. Run as root (CI is); .ci/run calls it before `make test`.
set -eu

packages=""
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    packages="$packages prometheus"
fi
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    packages="$packages chromium chromium-driver"
fi
if [ -z "$packages" ]; then
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
# shellcheck disable=SC2086  # a list of package names
apt-get install -y -qq --no-install-recommends $packages >/dev/null
if command -v prometheus >/dev/null 2>&1; then prometheus --version | head -n 1; fi
chromium --version
