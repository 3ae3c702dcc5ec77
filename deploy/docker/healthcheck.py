"""Container HEALTHCHECK: liveness on /healthz (exit 0 when it answers 200, else 1).

Standard library only, so the image needs no curl. Reads FF_PORT like the service does.
Liveness is 200 while the model loads; /readyz is for routing, not for restarts.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('FF_PORT', '8000')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
