"""BodyLimitMiddleware at the ASGI level: declared, chunked and lying request bodies."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.middleware import BodyLimitMiddleware, ObserveMiddleware
from service.telemetry.logs import AccessLog
from service.telemetry.metrics import ServiceMetrics

LIMIT = 1000


def scope(headers: Sequence[tuple[bytes, bytes]] = ()) -> Scope:
    return {"type": "http", "method": "POST", "path": "/v1/extract", "headers": list(headers)}


def chunks(*sizes: int) -> tuple[Receive, list[int]]:
    """A receive() that yields bodies of ``sizes``; the list records what was handed out."""
    handed: list[int] = []
    pending = list(sizes)

    async def receive() -> Message:
        if not pending:
            return {"type": "http.disconnect"}
        size = pending.pop(0)
        handed.append(size)
        return {"type": "http.request", "body": b"x" * size, "more_body": bool(pending)}

    return receive, handed


def reading_app(
    record: list[int], handle: Callable[[Exception], Message | None] | None = None
) -> ASGIApp:
    """Reads the whole body (like a form parser), then answers 200 with its size."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        total = 0
        try:
            while True:
                message = await receive()
                total += len(message.get("body", b""))
                if not message.get("more_body"):
                    break
        except Exception as exc:  # an app with a broad handler of its own
            if handle is None:
                raise
            answer = handle(exc)
            if answer is not None:
                await send(answer)
                await send({"type": "http.response.body", "body": b"app error"})
            return
        record.append(total)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(total).encode()})

    return app


async def run(
    headers: Sequence[tuple[bytes, bytes]],
    receive: Receive,
    handle: Callable[[Exception], Message | None] | None = None,
) -> tuple[list[Message], list[int], ServiceMetrics]:
    sent: list[Message] = []
    record: list[int] = []
    metrics = ServiceMetrics()

    async def send(message: Message) -> None:
        sent.append(message)

    # Inside the observing middleware, as create_app stacks them: its 413 is counted there.
    middleware = ObserveMiddleware(
        BodyLimitMiddleware(reading_app(record, handle), LIMIT), metrics, AccessLog()
    )
    await middleware(scope(headers), receive, send)
    return sent, record, metrics


def assert_413(sent: list[Message], metrics: ServiceMetrics) -> None:
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["code"] == "payload_too_large"
    assert len(sent) == 2  # one answer, nothing of the app's
    value = metrics.registry.get_sample_value("ff_errors_total", {"code": "payload_too_large"})
    assert value == 1.0


async def test_body_within_the_limit_passes_untouched() -> None:
    receive, _ = chunks(400, 600)
    sent, record, _ = await run([(b"content-length", b"1000")], receive)
    assert sent[0]["status"] == 200
    assert record == [LIMIT]  # exactly at the limit is fine


async def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    receive, handed = chunks(2000)
    sent, record, metrics = await run([(b"content-length", b"1001")], receive)
    assert_413(sent, metrics)
    assert handed == []
    assert record == []


@pytest.mark.parametrize("declared", [b"9" * 19, b"9" * 5000])
async def test_absurd_declared_length_is_a_413_not_a_crash(declared: bytes) -> None:
    receive, handed = chunks(10)
    sent, _, metrics = await run([(b"content-length", declared)], receive)
    assert_413(sent, metrics)
    assert handed == []


async def test_chunked_body_is_counted_and_cut_while_streaming() -> None:
    receive, handed = chunks(*([300] * 20))
    sent, record, metrics = await run([(b"transfer-encoding", b"chunked")], receive)
    assert_413(sent, metrics)
    assert handed == [300] * 4  # stopped at the chunk that crossed the limit
    assert record == []


@pytest.mark.parametrize("declared", [b"10", b"0", b"abc", b"-5", b" 10"])
async def test_a_content_length_that_lies_low_does_not_help(declared: bytes) -> None:
    receive, handed = chunks(600, 600, 600)
    sent, record, metrics = await run([(b"content-length", declared)], receive)
    assert_413(sent, metrics)
    assert handed == [600, 600]
    assert record == []


async def test_an_app_that_swallows_the_refusal_still_answers_413() -> None:
    def answer_400(exc: Exception) -> Message:
        return {"type": "http.response.start", "status": 400, "headers": []}

    receive, _ = chunks(800, 800)
    sent, _, metrics = await run([], receive, handle=answer_400)
    assert_413(sent, metrics)


async def test_an_app_that_wraps_the_refusal_still_answers_413() -> None:
    def wrap(exc: Exception) -> Message | None:
        raise ExceptionGroup("task group", [exc])

    receive, _ = chunks(800, 800)
    sent, _, metrics = await run([], receive, handle=wrap)
    assert_413(sent, metrics)


async def test_other_app_errors_propagate() -> None:
    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("bug")

    middleware = BodyLimitMiddleware(broken, LIMIT)
    receive, _ = chunks(10)

    async def send(message: Message) -> None:
        raise AssertionError("nothing should be sent")

    with pytest.raises(RuntimeError, match="bug"):
        await middleware(scope(), receive, send)
