"""Helpers for the HTTP tests: an app with a FakeBackend, its lifespan entered by hand."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from fashion_florence_client.problems import PROBLEM_CONTENT_TYPE
from service.http.app import create_app
from service.serving.lifecycle import BackendLoader
from service.settings import Settings
from tests.fakes import FakeBackend

PROBLEM_KEYS = {"type", "title", "status", "detail", "code"}


@pytest.fixture(autouse=True)
def _no_ff_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings() reads FF_* variables; the developer's shell must not change these tests."""
    for name in list(os.environ):
        if name.upper().startswith("FF_"):
            monkeypatch.delenv(name)


def solid_jpeg(color: tuple[int, int, int], size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


# FakeBackend reads the mean red level (0..1): > 0.5 answers "red", else "blue", and above
# BAD_RED_ABOVE it answers invalid_model_output. Pure red (1.0) is the bad image.
BAD_RED_ABOVE = 0.9
RED = solid_jpeg((200, 30, 30))
BLUE = solid_jpeg((30, 30, 200))
BAD = solid_jpeg((255, 0, 0))


@dataclass
class Served:
    app: FastAPI
    client: httpx.AsyncClient
    backend: FakeBackend | None


def make_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"max_wait_ms": 1.0, "preprocess_threads": 2}
    return Settings(**(base | overrides))


@asynccontextmanager
async def serve(
    settings: Settings | None = None,
    backend: FakeBackend | None = None,
    *,
    loader: BackendLoader | None = None,
    wait: bool = True,
) -> AsyncIterator[Served]:
    """The app with its lifespan entered manually and an ASGI client bound to it."""
    settings = settings or make_settings()
    if loader is None:
        backend = backend or FakeBackend(bad_red_above=BAD_RED_ABOVE)
        app = create_app(settings, backend)
    else:
        app = create_app(settings, backend, loader=loader)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        if wait:
            await app.state.runtime.wait_ready()
        yield Served(app, client, backend)


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem with the given status and stable code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE)
    body: dict[str, Any] = response.json()
    assert body.keys() >= PROBLEM_KEYS, body
    assert body["status"] == status
    assert body["code"] == code, body
    assert body["type"].endswith(code)
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body
