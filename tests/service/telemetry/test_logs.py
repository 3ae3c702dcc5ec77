"""Structured access logs (one line per request, no secrets) and optional tracing."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.http.app import create_app
from service.telemetry.logs import ACCESS_LOGGER, JsonFormatter, PlainFormatter, configure_logging
from service.telemetry.tracing import Tracer
from tests.fakes import FakeBackend
from tests.live import BAD, BLUE, RED, _no_ff_environment, settings
from tests.service.engine_core.test_cache import app_client

__all__ = ["_no_ff_environment"]

API_KEY = "sk-live-0123456789"
FIELDS = {"request_id", "method", "route", "status", "latency_ms", "queue_ms", "batch_size",
          "images", "cache_hits", "error_code"}  # fmt: skip


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    """The access logger's output, formatted by the JSON formatter the service uses."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(ACCESS_LOGGER)
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_one_json_line_per_request_with_the_fields_and_no_secrets(
    access_lines: io.StringIO,
) -> None:
    config = settings(api_keys=API_KEY, max_batch_size=4)
    auth = {"Authorization": f"Bearer {API_KEY}", "X-Request-ID": "req-42"}
    async with app_client(config, FakeBackend()) as client:
        ok = await client.post(
            "/v1/extract?min_tag_confidence=0.5&token=qs-secret",
            files={"image": ("a.jpg", RED)}, headers=auth,
        )  # fmt: skip
        url = await client.post(
            "/v1/extract", json={"url": "https://example.invalid/p.jpg?sig=url-secret"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )  # fmt: skip
        denied = await client.post("/v1/extract", files={"image": ("b.jpg", BLUE)})
        await client.get("/healthz")  # DEBUG: not in an INFO log
    assert (ok.status_code, url.status_code, denied.status_code) == (200, 502, 401)
    text = access_lines.getvalue()
    first, second, third = parsed(access_lines)
    assert set(first) >= FIELDS | {"ts", "level", "message"}
    assert first["request_id"] == "req-42"
    assert (first["route"], first["status"], first["method"]) == ("/v1/extract", 200, "POST")
    assert first["latency_ms"] > 0
    assert first["queue_ms"] >= 0
    assert first["batch_size"] == 1
    assert (first["images"], first["error_code"]) == (1, None)
    assert (second["status"], second["error_code"]) == (502, "url_fetch_failed")
    assert (third["status"], third["error_code"]) == (401, "unauthorized")
    for secret in (API_KEY, "qs-secret", "url-secret", "example.invalid"):
        assert secret not in text
    assert RED.decode("latin-1")[:16] not in text


async def test_cache_hits_are_logged(access_lines: io.StringIO) -> None:
    async with app_client(settings(), FakeBackend()) as client:
        for _ in range(2):
            await client.post("/v1/extract", files={"image": ("a.jpg", RED)})
    miss, hit = parsed(access_lines)
    assert (miss["cache_hits"], hit["cache_hits"]) == (0, 1)
    assert hit["queue_ms"] is None  # it never queued


def test_plain_format_and_redaction_of_other_modules_urls() -> None:
    record = logging.LogRecord("service.intake.fetch", logging.WARNING, "", 0,
                               "refused url=%r", ("https://h/x.jpg?token=abc",), None)  # fmt: skip
    record.route = "/v1/extract"
    plain = PlainFormatter().format(record)
    assert "route=/v1/extract" in plain
    assert "token=abc" not in plain
    assert "token=abc" not in JsonFormatter().format(record)


def test_configure_logging_installs_one_handler_in_the_chosen_format() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging("plain", "warning")
        configure_logging("json", "info")
        assert len(root.handlers) == 1
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
        assert root.level == logging.INFO
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_tracing_is_off_by_default_and_a_no_op_without_the_packages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert settings().tracing_enabled is False
    assert not Tracer(enabled=False).active
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)  # as if not installed
    tracer = Tracer(enabled=True)
    assert not tracer.active
    with tracer.span("decode") as span:
        assert span is None
    tracer.record("queue", 1.0, 2.0, batch_size=3)  # must not raise


async def test_requests_work_with_tracing_enabled() -> None:
    pytest.importorskip("opentelemetry.trace")  # the API alone: spans are no-ops
    async with app_client(settings(tracing_enabled=True), FakeBackend()) as client:
        response = await client.post("/v1/extract", files={"image": ("a.jpg", RED)})
    assert response.status_code == 200


def test_spans_are_recorded_when_an_sdk_is_installed() -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    export = pytest.importorskip("opentelemetry.sdk.trace.export")
    exporting = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    exporter = exporting.InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    tracer = Tracer(enabled=True)
    tracer._tracer = provider.get_tracer("test")
    with tracer.span("decode"):
        pass
    tracer.record("inference", 1.0, 1.5, batch_size=2)
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == ["ff.decode", "ff.inference"]


async def test_a_failed_item_still_logs_its_queue_wait_and_batch(access_lines: io.StringIO) -> None:
    async with app_client(settings(), FakeBackend(bad_red_above=0.9)) as client:
        response = await client.post("/v1/extract", files={"image": ("bad.jpg", BAD)})
    (line,) = parsed(access_lines)
    assert response.status_code == 502
    assert (line["error_code"], line["batch_size"]) == ("invalid_model_output", 1)
    assert line["queue_ms"] is not None


async def test_an_unhandled_error_is_one_500_counted_and_logged_once(
    access_lines: io.StringIO,
) -> None:
    """Starlette answers a bug's 500 outside every middleware; the record still says so."""
    app = create_app(settings(), FakeBackend())

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    # The ASGI transport would re-raise what Starlette re-raises after answering.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        response = await client.get("/boom")
    registry = app.state.metrics.registry
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    assert registry.get_sample_value("ff_errors_total", {"code": "internal_error"}) == 1.0
    assert registry.get_sample_value("ff_requests_total", {"route": "/boom", "status": "500"}) == 1
    (line,) = parsed(access_lines)
    assert (line["route"], line["status"], line["error_code"]) == ("/boom", 500, "internal_error")
    assert line["latency_ms"] > 0
