"""``confidence`` in /v1/extract and batch results, and the ``min_tag_confidence`` filter."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from PIL import Image

from fashion_florence_client.schema import AttributeConfidence
from service.backend import ItemOutcome, PreparedImage
from service.http.app import create_app
from service.settings import Settings
from tests.fakes import GOOD, FakeBackend

TAGGED = GOOD.model_copy(
    update={"style_tags": ["classic", "casual"], "occasion_tags": ["everyday", "work", "party"]}
)
SCORES = AttributeConfidence(
    category=0.9, primary_color=0.8, material=0.7,
    style_tags=[0.95, 0.3], occasion_tags=[0.6, 0.2, 0.51],
)  # fmt: skip


class ConfidentBackend(FakeBackend):
    """Answers TAGGED with SCORES, like the engine in constrained mode."""

    def _answer(self, image: PreparedImage) -> ItemOutcome:
        return ItemOutcome(TAGGED.to_target_text(), 40, attributes=TAGGED, confidence=SCORES)


@pytest.fixture(autouse=True)
def _no_ff_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FF_"):
            monkeypatch.delenv(name)


@asynccontextmanager
async def client_for(backend: FakeBackend) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(max_wait_ms=1.0, preprocess_threads=1), backend)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as client,
    ):
        await app.state.runtime.wait_ready()
        yield client


def jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (30, 30, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


async def test_extract_returns_confidence_and_filters_tags() -> None:
    async with client_for(ConfidentBackend()) as client:
        files = {"image": ("a.jpg", jpeg(), "image/jpeg")}
        full = (await client.post("/v1/extract", files=files)).json()
        assert full["attributes"] == TAGGED.model_dump()
        assert full["confidence"] == SCORES.model_dump()

        response = await client.post("/v1/extract?min_tag_confidence=0.5", files=files)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["attributes"]["style_tags"] == ["classic"]
        assert body["attributes"]["occasion_tags"] == ["everyday", "party"]
        assert body["confidence"]["style_tags"] == [0.95]
        assert body["confidence"]["occasion_tags"] == [0.6, 0.51]
        assert body["attributes"]["category"] == "top"  # single values are never dropped


async def test_batch_results_carry_filtered_confidence() -> None:
    async with client_for(ConfidentBackend()) as client:
        files = [("image", (f"{i}.jpg", jpeg(), "image/jpeg")) for i in range(2)]
        response = await client.post("/v1/extract/batch?min_tag_confidence=0.9", files=files)
        assert response.status_code == 200, response.text
        for result in response.json()["results"]:
            assert result["attributes"]["style_tags"] == ["classic"]
            assert result["attributes"]["occasion_tags"] == []
            assert result["confidence"]["occasion_tags"] == []


@pytest.mark.parametrize("value", ["1.5", "-0.1", "high"])
async def test_out_of_range_threshold_is_a_bad_request(value: str) -> None:
    async with client_for(ConfidentBackend()) as client:
        files = {"image": ("a.jpg", jpeg(), "image/jpeg")}
        response = await client.post(f"/v1/extract?min_tag_confidence={value}", files=files)
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_request"


async def test_without_confidence_nothing_is_filtered() -> None:
    async with client_for(FakeBackend()) as client:  # plain decoding: no confidence
        files = {"image": ("a.jpg", jpeg(), "image/jpeg")}
        body = (await client.post("/v1/extract?min_tag_confidence=0.99", files=files)).json()
        assert body["confidence"] is None
        assert body["attributes"] == GOOD.model_copy(update={"primary_color": "blue"}).model_dump()


async def test_openapi_documents_the_parameter_and_field() -> None:
    async with client_for(ConfidentBackend()) as client:
        spec = (await client.get("/openapi.json")).json()
    parameters = spec["paths"]["/v1/extract"]["post"]["parameters"]
    assert any(p["name"] == "min_tag_confidence" for p in parameters)
    assert "confidence" in spec["components"]["schemas"]["ExtractResponse"]["properties"]
