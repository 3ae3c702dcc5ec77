"""The app under real uvicorn in a thread on 127.0.0.1, for the contract tests (schemathesis
and the generated client): a fast fake backend, URLs allowed to 127.0.0.1 only."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from service.http.app import create_app
from tests.fakes import FakeBackend
from tests.served import free_port
from tests.service.http.conftest import make_settings


@contextmanager
def run_server(**overrides: Any) -> Iterator[str]:
    """Serve until the block ends; yields the base URL. ``overrides`` are settings."""
    port = free_port()
    # Generated URLs must never leave the machine (not even as a DNS query): only the
    # loopback host is allowed, and every other host is refused before any resolution.
    settings = make_settings(
        **{
            "host": "127.0.0.1",
            "port": port,
            "url_allowed_hosts": ("127.0.0.1",),
            "url_allow_loopback_for_tests": True,
        }
        | overrides
    )
    app = create_app(settings, FakeBackend())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _wait_ready(base: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail("contract-test server did not start")
