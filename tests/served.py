"""``fashion-florence serve`` as a real subprocess on 127.0.0.1, for the tests that need the
whole server (uvicorn, lifespan, the real model): start it, wait for ``/readyz``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn_serve(env: Mapping[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """The server on a free loopback port, with this environment plus ``env``; stderr kept
    for the failure message. Returns the process and its base URL."""
    port = free_port()
    full = {**os.environ, "FF_HOST": "127.0.0.1", "FF_PORT": str(port), **env}
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return process, f"http://127.0.0.1:{port}"


def wait_ready(
    process: subprocess.Popen[bytes],
    client: httpx.Client,
    timeout_s: float,
    seen: list[int] | None = None,
) -> None:
    """Poll ``/readyz`` until 200; fails the test if the server exits (with its stderr) or
    is not ready in time. ``seen`` collects every status answered on the way."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        try:
            status = client.get("/readyz").status_code
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        if seen is not None:
            seen.append(status)
        if status == 200:
            return
        time.sleep(0.05)
    pytest.fail(f"the server was not ready within {timeout_s} s")
