"""The real thing: `fashion-florence serve` (uvicorn) on 127.0.0.1 with the real tiny Florence-2.

One server process per module; every request goes over loopback only.
"""

from __future__ import annotations

import random
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TRAINED_CLASSES, TRAINED_MODEL_NAME, garment_image, jpeg_bytes
from tests.loopback import serve_files
from tests.served import spawn_serve, wait_ready

pytestmark = pytest.mark.slow
START_TIMEOUT_S = 90.0


class Server:
    def __init__(self, process: subprocess.Popen[bytes], base_url: str) -> None:
        self.process = process
        self.base_url = base_url
        self.readyz_seen: list[int] = []


@pytest.fixture(scope="module")
def server(trained_model_dir: Path) -> Iterator[Server]:
    process, base_url = spawn_serve(
        {
            "FF_MODEL_PATH": str(trained_model_dir),
            "FF_MAX_BATCH_SIZE": "8",
            "FF_MAX_WAIT_MS": "5",
            "FF_LOG_LEVEL": "warning",
            # The image host in these tests is a local server; loopback is blocked otherwise.
            "FF_URL_ALLOW_LOOPBACK_FOR_TESTS": "true",
            # test_metrics_move_with_traffic counts one image sent 3 times as engine work.
            "FF_CACHE_ENABLED": "false",
        }
    )
    server = Server(process, base_url)
    try:
        with httpx.Client(base_url=server.base_url, timeout=2.0) as client:
            wait_ready(process, client, START_TIMEOUT_S, seen=server.readyz_seen)
        yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def test_readyz_is_503_until_the_model_is_loaded_and_warm(server: Server) -> None:
    # The listener opens before the model has loaded (loading runs in the background).
    assert server.readyz_seen[0] == 503
    assert server.readyz_seen[-1] == 200
    with httpx.Client(base_url=server.base_url) as client:
        assert client.get("/healthz").status_code == 200


def test_upload_of_a_known_garment_returns_its_attributes(server: Server) -> None:
    color, expected = next(iter(TRAINED_CLASSES.items()))
    image = jpeg_bytes(garment_image(color, random.Random(123)))
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        response = client.post(
            "/v1/extract",
            files={"image": ("g.jpg", image, "image/jpeg")},
            headers={"X-Request-ID": "abc-1"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["attributes"] == expected
    assert body["request_id"] == "abc-1" == response.headers["x-request-id"]
    assert body["model"]["name"] == TRAINED_MODEL_NAME
    assert set(body["timing_ms"]) == {"queue", "inference", "total"}
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] > 0


def test_real_photo_gets_an_answer_never_a_500(server: Server, real_photo: bytes) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        response = client.post("/v1/extract", files={"image": ("p.jpg", real_photo, "image/jpeg")})
    # The fixture model only knows three synthetic garments: on a real photo it may emit
    # valid JSON or not, and both must come back in the documented shape.
    if response.status_code == 200:
        assert set(response.json()["attributes"]) == {
            "category", "primary_color", "material", "style_tags", "occasion_tags",
        }  # fmt: skip
    else:
        assert response.status_code == 502
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "invalid_model_output"


@pytest.fixture
def image_host() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 serving one garment JPEG at /g.jpg."""
    with serve_files(
        {"/g.jpg": jpeg_bytes(garment_image((30, 30, 200), random.Random(5)))}
    ) as base:
        yield base


def test_url_and_batch_over_loopback(server: Server, image_host: str) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        single = client.post("/v1/extract", json={"url": f"{image_host}/g.jpg"})
        batch = client.post(
            "/v1/extract/batch", json={"urls": [f"{image_host}/g.jpg", f"{image_host}/missing.jpg"]}
        )
    assert single.status_code == 200, single.text
    assert single.json()["attributes"]["primary_color"] == "blue"
    results = batch.json()["results"]
    assert results[0]["attributes"]["primary_color"] == "blue"
    assert results[1]["error"]["code"] == "url_fetch_failed"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_move_with_traffic(server: Server) -> None:
    image = jpeg_bytes(garment_image((20, 20, 20), random.Random(9)))
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        before = _samples(client.get("/metrics").text)
        for _ in range(3):
            assert (
                client.post(
                    "/v1/extract", files={"image": ("g.jpg", image, "image/jpeg")}
                ).status_code
                == 200
            )
        after = _samples(client.get("/metrics").text)
    key = ("ff_requests_total", (("route", "/v1/extract"), ("status", "200")))
    assert after[key] - before.get(key, 0.0) == 3
    assert after[("ff_images_total", ())] - before[("ff_images_total", ())] >= 3
    assert after[("ff_batch_size_count", ())] > before[("ff_batch_size_count", ())]
    assert after[("ff_generated_tokens_sum", ())] > before[("ff_generated_tokens_sum", ())]
    info = [k for k in after if k[0] == "ff_model_info"]
    assert info
    assert dict(info[0][1])["device"] == "cpu"


def test_sigterm_stops_the_server_cleanly(server: Server) -> None:
    # Runs last in this module: shuts the shared server down.
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
