"""Intake hardening through the HTTP API: codes, settings wiring, metrics, multipart limits."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from PIL import Image

from service.backend import PreparedImage
from tests.fakes import FakeBackend
from tests.service.http.conftest import RED, assert_problem, make_settings, serve
from tests.service.intake.netfakes import LocalServer, local_server


def upload(data: bytes, name: str = "image") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(name, ("a.bin", data, "application/octet-stream"))]


class SizeRecordingBackend(FakeBackend):
    """A FakeBackend that remembers the size of every decoded image it preprocesses."""

    def __init__(self, image_size: int) -> None:
        super().__init__(image_size=image_size)
        self.sizes: list[tuple[int, int]] = []

    def preprocess(self, image: Image.Image) -> PreparedImage:
        self.sizes.append(image.size)
        return super().preprocess(image)


@pytest.fixture
def image_server() -> Iterator[LocalServer]:
    with local_server(RED) as state:
        yield state


async def test_unsupported_image_format_differs_from_unsupported_media_type() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "TIFF")
    async with serve() as s:
        tiff = await s.client.post("/v1/extract", files=upload(buffer.getvalue()))
        wrong_request = await s.client.post(
            "/v1/extract", content=RED, headers={"content-type": "image/jpeg"}
        )
    assert_problem(tiff, 415, "unsupported_image_format")
    assert_problem(wrong_request, 415, "unsupported_media_type")


async def test_url_to_loopback_is_refused_by_default_and_counted(
    image_server: LocalServer,
) -> None:
    async with serve() as s:
        response = await s.client.post("/v1/extract", json={"url": image_server.url("/ok.jpg")})
        metrics = (await s.client.get("/metrics")).text
    body = assert_problem(response, 502, "url_fetch_failed")
    assert "127.0.0.1" not in body["detail"]
    assert image_server.paths == []  # never contacted
    assert 'ff_url_fetch_failures_total{reason="blocked_address"} 1.0' in metrics


async def test_test_only_setting_lets_loopback_through(image_server: LocalServer) -> None:
    async with serve(make_settings(url_allow_loopback_for_tests=True)) as s:
        response = await s.client.post("/v1/extract", json={"url": image_server.url("/ok.jpg")})
    assert response.status_code == 200, response.text


async def test_allowlist_refuses_other_hosts_by_the_url_alone(image_server: LocalServer) -> None:
    settings = make_settings(url_allow_loopback_for_tests=True, url_allowed_hosts="*.example.com")
    async with serve(settings) as s:
        response = await s.client.post("/v1/extract", json={"url": image_server.url("/ok.jpg")})
    assert_problem(response, 400, "url_not_allowed")
    assert image_server.paths == []


async def test_large_jpeg_reaches_the_model_decoded_at_reduced_scale() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (1600, 1200), (200, 30, 30)).save(buffer, "JPEG")
    backend = SizeRecordingBackend(image_size=200)
    async with serve(backend=backend) as s:
        response = await s.client.post("/v1/extract", files=upload(buffer.getvalue()))
    assert response.status_code == 200, response.text
    assert backend.sizes == [(400, 300)]  # 1/4 scale: the smallest still >= 200 px


async def test_decode_budget_setting_is_applied() -> None:
    buffer = io.BytesIO()  # a PNG (no draft) of 9 MP: tens of milliseconds to decode
    Image.linear_gradient("L").resize((3000, 3000)).save(buffer, "PNG", compress_level=1)
    async with serve(make_settings(decode_budget_ms=1.0)) as s:
        response = await s.client.post("/v1/extract", files=upload(buffer.getvalue()))
    body = assert_problem(response, 413, "image_too_large")
    assert "to decode" in body["detail"]


async def test_side_limit_setting_is_applied() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 20)).save(buffer, "PNG")
    async with serve(make_settings(max_image_side_px=256)) as s:
        response = await s.client.post("/v1/extract", files=upload(buffer.getvalue()))
    assert_problem(response, 413, "image_too_large")


async def test_too_many_form_fields_is_400() -> None:
    fields = {f"f{i}": "x" for i in range(9)}
    async with serve() as s:
        response = await s.client.post("/v1/extract", data=fields, files=upload(RED))
    assert_problem(response, 400, "invalid_request")


async def test_oversized_text_field_is_400() -> None:
    async with serve() as s:
        response = await s.client.post(
            "/v1/extract", data={"note": "x" * (64 * 1024 + 1)}, files=upload(RED)
        )
    assert_problem(response, 400, "invalid_request")
