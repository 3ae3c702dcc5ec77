"""The benchmark's servers, each started for real on 127.0.0.1, asked, and stopped.

Bounded: a handful of requests per server, and every spawn has a readiness timeout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from bench.baselines import (
    CONSTANT,
    InstantBackend,
    measure,
    spawn_bare,
    spawn_instant,
    spawn_paper_demo,
)
from bench.load import payloads
from bench.servers import ServerHandle, peak_rss_bytes, scrape_mean_batch, spawn_service
from fashion_florence_client.schema import FashionAttributes
from service.backend import InferenceBackend

pytestmark = pytest.mark.load


def _extract(handle: ServerHandle, image: bytes) -> httpx.Response:
    files = {"image": ("photo.jpg", image, "image/jpeg")}
    return httpx.post(f"{handle.base_url}/v1/extract", files=files, timeout=60, trust_env=False)


def _attributes(response: httpx.Response) -> FashionAttributes:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return FashionAttributes.model_validate(body["attributes"])


@pytest.mark.parametrize("decode", [False, True], ids=["bare", "bare-decode"])
def test_bare_server_answers_a_constant(decode: bool, real_photo: bytes) -> None:
    with spawn_bare(decode=decode) as handle:
        assert handle.cold_start_s > 0
        assert _attributes(_extract(handle, real_photo)) == CONSTANT
        # Only the --decode variant looks at the bytes.
        assert _extract(handle, b"not an image").status_code == (422 if decode else 200)
        figures = measure(handle.base_url, payloads(4), concurrency=4, requests=12, time_limit_s=30)
        assert peak_rss_bytes(handle.pid) > 0
    assert handle.process.poll() is not None  # stopped on leaving the block
    assert (figures["ok"], figures["errors"]) == (12, 0)
    assert figures["img_s"] > 0
    assert figures["p50_ms"] <= figures["p99_ms"]


def test_instant_backend_is_an_inference_backend() -> None:
    backend: InferenceBackend = InstantBackend(image_size=64)  # mypy checks the Protocol
    blank = Image.new("RGB", (8, 8))
    outcomes = backend.run_batch([backend.preprocess(blank), backend.preprocess(blank)])
    assert [o.attributes for o in outcomes] == [CONSTANT, CONSTANT]


def test_instant_server_is_our_app_with_our_intake(real_photo: bytes) -> None:
    with spawn_instant() as handle:
        response = _extract(handle, real_photo)
        assert _attributes(response) == CONSTANT
        assert response.json()["model"]["name"] == "instant"  # our response body
        refused = _extract(handle, b"not an image")  # our intake sniffs the format
        assert (refused.status_code, refused.json()["code"]) == (415, "unsupported_image_format")
        figures = measure(handle.base_url, payloads(4), concurrency=4, requests=12, time_limit_s=30)
        assert scrape_mean_batch(handle.base_url) >= 1.0  # the batcher ran
    assert handle.stop() == 0  # already stopped by the block: our server exited cleanly
    assert (figures["ok"], figures["errors"]) == (12, 0)


@pytest.mark.slow
def test_paper_demo_runs_one_generate_at_a_time(trained_model_dir: Path) -> None:
    with spawn_paper_demo(trained_model_dir) as handle:
        figures = measure(
            handle.base_url, payloads(6), concurrency=6, requests=6, time_limit_s=60, warmup=0
        )
        stats = httpx.get(f"{handle.base_url}/stats", timeout=10, trust_env=False).json()
        _attributes(_extract(handle, payloads(1)[0]))  # the same schema as our service
        bad = _extract(handle, b"not an image")
        assert (bad.status_code, bad.json()["code"]) == (422, "invalid_image")
    assert handle.process.poll() is not None
    assert (figures["ok"], figures["errors"]) == (6, 0)
    assert stats["calls"] == 6
    assert stats["max_in_flight"] >= 2  # requests did overlap in the server...
    assert stats["max_active"] == 1  # ...and still reached the model one at a time


@pytest.mark.slow
def test_spawn_service_serves_the_model_and_reports_batches(trained_model_dir: Path) -> None:
    with spawn_service(trained_model_dir, {"FF_MAX_BATCH_SIZE": "4"}) as handle:
        figures = measure(handle.base_url, payloads(4), concurrency=4, requests=8, time_limit_s=60)
        mean_batch = scrape_mean_batch(handle.base_url)
        assert peak_rss_bytes(handle.pid) > 50 * 1024 * 1024  # torch and a model are loaded
    assert handle.stop() == 0
    assert (figures["ok"], figures["errors"]) == (8, 0)
    assert 1.0 <= mean_batch <= 4.0
