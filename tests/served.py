"""``fashion-florence serve`` as a real subprocess on 127.0.0.1, for the tests that need the
whole server (uvicorn, lifespan, the real model): start it, wait for ``/readyz``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import IO

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Each server's stderr, kept in a file (a pipe nobody reads would fill with access-log
#: lines and block the server), read back by :func:`stderr_of`.
_STDERR: dict[int, IO[bytes]] = {}


def spawn_serve(env: Mapping[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """The server on a free loopback port, with this environment plus ``env``; stderr kept
    for the failure message (:func:`stderr_of`). Returns the process and its base URL."""
    port = free_port()
    full = {**os.environ, "FF_HOST": "127.0.0.1", "FF_PORT": str(port), **env}
    log = tempfile.TemporaryFile()  # noqa: SIM115 (kept open for stderr_of)
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    _STDERR[process.pid] = log
    return process, f"http://127.0.0.1:{port}"


def stderr_of(process: subprocess.Popen[bytes]) -> str:
    """What a server from :func:`spawn_serve` wrote to stderr so far."""
    log = _STDERR.get(process.pid)
    if log is None:
        return ""
    log.seek(0)
    return log.read().decode(errors="replace")


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
        assert process.poll() is None, stderr_of(process)
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


def stop_serve(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, as Kubernetes stops it: the supervisor drains its processes and removes its
    run directory (a SIGKILL would leave that behind); SIGKILL only if it does not end."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
