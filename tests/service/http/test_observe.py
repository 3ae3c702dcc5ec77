"""One record per request: metrics and the access log read the same measurement."""

from __future__ import annotations

import io
import json
import logging

import httpx

from service.http.app import create_app
from service.telemetry.logs import ACCESS_LOGGER, JsonFormatter
from tests.fakes import FakeBackend
from tests.service.http.conftest import make_settings


async def test_an_unhandled_error_is_one_500_counted_and_logged_once() -> None:
    app = create_app(make_settings(), FakeBackend())

    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_api_route("/boom", boom)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger(ACCESS_LOGGER)
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    # The ASGI transport would re-raise what Starlette re-raises after answering.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as client,
        ):
            response = await client.get("/boom")
            samples = app.state.metrics.registry
            errors = samples.get_sample_value("ff_errors_total", {"code": "internal_error"})
            requests = samples.get_sample_value(
                "ff_requests_total", {"route": "/boom", "status": "500"}
            )
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    assert (errors, requests) == (1.0, 1.0)
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert (line["route"], line["status"], line["error_code"]) == ("/boom", 500, "internal_error")
    assert line["latency_ms"] > 0
