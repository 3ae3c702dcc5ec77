"""The client against a live service: real uvicorn on 127.0.0.1, fake model backend."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

# The public names as a caller imports them: from the package itself.
from fashion_florence_client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConnectionFailedError,
    InvalidInputError,
    RequestRejectedError,
    RetryPolicy,
    ServerError,
    ServiceCallError,
    ServiceUnavailableError,
)
from fashion_florence_client.protocol import ExtractResponse
from fashion_florence_client.retry import parse_retry_after
from service.backend import ItemOutcome, PreparedImage
from tests.fakes import GOOD, FakeBackend
from tests.live import BAD, BLUE, RED, _no_ff_environment, live_service, settings

__all__ = ["_no_ff_environment"]  # the autouse fixture, shared


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
    # The decision is the policy's (both clients' loops ask it), with the client's rng.
    policy, rng = RetryPolicy(max_retry_after_s=5.0), random.Random(0)
    busy = ServiceCallError("queue_full", "x", status=503, retry_after_s=60.0)
    far = ServiceUnavailableError("queue_full", "x", status=503, retry_after_s=60.0)
    assert policy.next_delay(far, 1, rng) is None  # would exceed the client's patience
    assert policy.next_delay(busy, 1, rng) is None  # the base class is not retryable


def _scripted(
    answers: list[int | type[httpx.TransportError]],
) -> Callable[[httpx.Request], httpx.Response]:
    """A MockTransport handler that answers from ``answers`` in turn: a status (503 with
    Retry-After 1, or 200 with a result) or a transport error to raise."""
    result = ExtractResponse.model_validate(
        {"request_id": "r", "model": {"name": "fake", "revision": "0"},
         "attributes": GOOD.model_dump(), "timing_ms": {"queue": 0, "inference": 0, "total": 0}}
    )  # fmt: skip
    script = iter(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        answer = next(script)
        if not isinstance(answer, int):
            raise answer("scripted", request=request)
        if answer == 200:
            return httpx.Response(200, content=result.model_dump_json())
        problem = {"type": "about:blank", "title": "busy", "status": answer,
                   "detail": "busy", "code": "queue_full"}  # fmt: skip
        headers = {"content-type": "application/problem+json", "retry-after": "1"}
        return httpx.Response(answer, json=problem, headers=headers)

    return handle


async def test_sync_and_async_clients_take_the_same_retry_decisions() -> None:
    # One script of failures, one seed: both loops must wait the same and end the same.
    script: list[int | type[httpx.TransportError]] = [503, httpx.ConnectError, 503, 200]
    retry = RetryPolicy(max_attempts=4, backoff_base_s=0.5)
    sync_slept: list[float] = []
    with Client(
        "http://test", retry=retry, sleep=sync_slept.append, rng=random.Random(7),
        transport=httpx.MockTransport(_scripted(script)),
    ) as client:  # fmt: skip
        sync_result = client.extract(RED)
    async_slept: list[float] = []

    async def record(seconds: float) -> None:
        async_slept.append(seconds)

    async with AsyncClient(
        "http://test", retry=retry, sleep=record, rng=random.Random(7),
        transport=httpx.MockTransport(_scripted(script)),
    ) as aclient:  # fmt: skip
        async_result = await aclient.extract(RED)
    async with AsyncClient(
        "http://test", retry=retry, sleep=record, rng=random.Random(7),
        transport=httpx.MockTransport(_scripted([503] * 4)),
    ) as busy:  # fmt: skip
        with pytest.raises(ServiceUnavailableError) as caught:
            await busy.extract(RED)
    assert sync_result == async_result
    assert sync_slept == async_slept[:3]
    assert len(sync_slept) == 3
    # Retry-After (1 s) is a floor for the 503s, not for the connection error between them.
    assert sync_slept[0] >= 1.0
    assert sync_slept[1] < 1.0
    assert sync_slept[2] >= 1.0
    assert caught.value.attempts == 4
    assert caught.value.code == "queue_full"
