"""service.client against a live service: real uvicorn on 127.0.0.1, fake model backend."""

from __future__ import annotations

import io
import os
import random
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image

from fashion_florence_client.protocol import ExtractResponse
from service.backend import ItemOutcome, PreparedImage
from service.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConnectionFailedError,
    InvalidInputError,
    RequestRejectedError,
    RetryPolicy,
    ServerError,
    ServiceCallError,
    parse_retry_after,
)
from service.http.app import create_app
from service.settings import Settings
from tests.fakes import FakeBackend


def jpeg(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


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


class GatedBackend(FakeBackend):
    """Each batch waits for ``gate``: a test decides when capacity frees up."""

    def __init__(self) -> None:
        super().__init__(bad_red_above=0.9)
        self.gate = threading.Event()

    def run_batch(self, images: Sequence[PreparedImage]) -> list[ItemOutcome]:
        self.gate.wait(timeout=10)
        return super().run_batch(images)


def test_extract_bytes_path_and_many_in_order(tmp_path: Path) -> None:
    photo = tmp_path / "blue.jpg"
    photo.write_bytes(BLUE)
    with live_service() as (url, _), Client(url) as client:
        result = client.extract(RED)
        assert isinstance(result, ExtractResponse)
        assert result.attributes.primary_color == "red"
        assert result.model.name == "fake"
        assert client.extract(photo).attributes.primary_color == "blue"
        assert client.extract(str(photo)).attributes.primary_color == "blue"
        many = client.extract_many([RED, BLUE, BAD, RED], concurrency=3)
    assert [type(r).__name__ for r in many] == [
        "ExtractResponse", "ExtractResponse", "ServerError", "ExtractResponse",
    ]  # fmt: skip
    assert isinstance(many[1], ExtractResponse)
    assert many[1].attributes.primary_color == "blue"
    assert isinstance(many[2], ServerError)
    assert many[2].code == "invalid_model_output"
    assert many[2].status == 502


async def test_async_client_many_keeps_input_order() -> None:
    with live_service() as (url, _):
        async with AsyncClient(url) as client:
            results = await client.extract_many([BLUE, RED] * 5, concurrency=4)
    colors = [r.attributes.primary_color for r in results if isinstance(r, ExtractResponse)]
    assert colors == ["blue", "red"] * 5


def test_queue_full_is_retried_after_retry_after() -> None:
    # Capacity 2 (queue 1 + batch 1): two held requests fill it, a third gets queue_full.
    backend = GatedBackend()
    with live_service(settings(queue_size=1, max_batch_size=1), backend) as (url, app):
        blockers: list[threading.Thread] = []
        results: list[Any] = []
        with Client(url) as blocking:
            for color in (RED, BLUE):
                thread = threading.Thread(
                    target=lambda c=color: results.append(blocking.extract(c))
                )
                thread.start()
                blockers.append(thread)
            admission = app.state.runtime.extractor.admission
            deadline = time.monotonic() + 5
            while admission.held < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            slept: list[float] = []

            def fake_sleep(seconds: float) -> None:
                # The fake clock: record the wait, then free the capacity it waited for.
                slept.append(seconds)
                backend.gate.set()
                for thread in blockers:
                    thread.join(timeout=5)

            retry = RetryPolicy(max_attempts=4, backoff_base_s=0.1)
            with Client(url, sleep=fake_sleep, retry=retry, rng=random.Random(1)) as client:
                result = client.extract(RED)
    assert result.attributes.primary_color == "red"
    assert len(results) == 2
    # The server said Retry-After >= 1 s; the client waited at least that (plus jitter).
    assert len(slept) == 1
    assert 1.0 <= slept[0] <= 1.0 + 0.1


def test_4xx_is_never_retried_and_carries_the_problem_code(tmp_path: Path) -> None:
    slept: list[float] = []
    with live_service() as (url, _), Client(url, sleep=slept.append) as client:
        with pytest.raises(RequestRejectedError) as caught:
            client.extract(b"not an image at all")
        with pytest.raises(RequestRejectedError) as not_allowed:
            client.extract("http://user:pw@example.com/x.jpg")  # credentials in a URL
        with pytest.raises(InvalidInputError):
            client.extract(tmp_path / "missing.jpg")
    assert caught.value.code == "unsupported_image_format"
    assert caught.value.status == 415
    assert caught.value.attempts == 1
    assert caught.value.request_id
    assert (not_allowed.value.code, not_allowed.value.status) == ("url_not_allowed", 400)
    assert slept == []


def test_api_key_is_sent_and_a_missing_one_is_typed() -> None:
    with live_service(settings(api_keys="k-123")) as (url, _):
        with Client(url) as anonymous, pytest.raises(AuthenticationError) as caught:
            anonymous.extract(RED)
        with Client(url, api_key="k-123") as client:
            assert client.extract(RED).attributes.primary_color == "red"
            assert "k-123" not in repr(client)
    assert caught.value.code == "unauthorized"
    assert caught.value.status == 401


def test_connection_errors_are_retried_with_growing_backoff_then_typed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: refused
        slept: list[float] = []
        retry = RetryPolicy(max_attempts=4, backoff_base_s=1.0, backoff_max_s=3.0)
        with (
            Client(url, sleep=slept.append, retry=retry) as client,
            pytest.raises(ConnectionFailedError) as caught,
        ):
            client.extract(RED)
    assert caught.value.code == "connection_failed"
    assert caught.value.attempts == 4
    assert len(slept) == 3
    assert all(0 <= s <= cap for s, cap in zip(slept, (1.0, 2.0, 3.0), strict=True))
    assert isinstance(caught.value, ServiceCallError)


def test_retry_after_parsing_and_a_too_long_wait_is_not_taken() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
    client = Client("http://127.0.0.1:1", retry=RetryPolicy(max_retry_after_s=5.0))
    busy = ServiceCallError("queue_full", "x", status=503, retry_after_s=60.0)
    from service.client import ServiceUnavailableError

    far = ServiceUnavailableError("queue_full", "x", status=503, retry_after_s=60.0)
    assert client._next_delay(far, 1) is None  # would exceed the client's patience
    assert client._next_delay(busy, 1) is None  # the base class is not retryable
    client.close()
