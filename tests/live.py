"""Helpers shared by tests that run the service for real: a live uvicorn on 127.0.0.1
with a fake model backend, test settings, and small JPEGs the fake backend tells apart.

``_no_ff_environment`` is an autouse fixture: a test module that imports it (and lists it
in ``__all__``, so the import is not dropped as unused) runs every test without the
caller's FF_* variables, so the settings a test builds are the ones it gets.
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image

from service.http.app import create_app
from service.settings import Settings
from tests.fakes import FakeBackend


def jpeg(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


# The fake backend answers "red" and "blue" by mean red level; BAD is red enough for
# FakeBackend(bad_red_above=0.9) to answer invalid_model_output.
RED, BLUE, BAD = jpeg((200, 30, 30)), jpeg((30, 30, 200)), jpeg((255, 0, 0))


@pytest.fixture(autouse=True)
def _no_ff_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FF_"):
            monkeypatch.delenv(name)


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"max_wait_ms": 1.0, "preprocess_threads": 2, "log_level": "warning"}
    return Settings(**(base | overrides))


@contextmanager
def live_service(
    config: Settings | None = None, backend: FakeBackend | None = None
) -> Iterator[tuple[str, FastAPI]]:
    """uvicorn serving create_app(...) on a loopback port, in a thread; yields its URL."""
    app = create_app(config or settings(), backend or FakeBackend(bad_red_above=0.9))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "live service did not become ready"
            time.sleep(0.02)
        yield base_url, app
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
