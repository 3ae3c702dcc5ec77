"""Scheduling classes over HTTP: the X-Priority header, each endpoint's default class, the
batch class's admission share, the per-class /metrics. A live uvicorn on loopback with a
fake model, and one test through `fashion-florence serve` with the real demo model."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import jpeg_bytes, photo_paths
from tests.fakes import FakeBackend
from tests.live import BLUE, RED, _no_ff_environment, live_service, settings
from tests.served import spawn_serve, stop_serve, wait_ready

__all__ = ["_no_ff_environment"]


def class_gauges(client: httpx.Client) -> dict[tuple[str, str], float]:
    """(family, class) -> value of ff_images_waiting and ff_images_running."""
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name in ("ff_images_waiting", "ff_images_running"):
            for sample in family.samples:
                found[(family.name, sample.labels["class"])] = sample.value
    return found


def seen_while(client: httpx.Client, running: Callable[[], bool]) -> set[tuple[str, str]]:
    """The (family, class) gauges seen above zero while ``running()`` holds."""
    seen: set[tuple[str, str]] = set()
    while running():
        seen |= {key for key, value in class_gauges(client).items() if value > 0}
        time.sleep(0.005)
    return seen


def test_an_unknown_priority_is_an_invalid_request() -> None:
    with live_service() as (base_url, _app), httpx.Client(base_url=base_url) as client:
        response = client.post(
            "/v1/extract", files={"image": ("a.jpg", RED)}, headers={"X-Priority": "urgent"}
        )
        assert response.status_code == 400
        assert response.json()["code"] == "invalid_request"
        assert "X-Priority must be interactive or batch" in response.json()["detail"]
        for value in ("batch", "Interactive"):
            ok = client.post(
                "/v1/extract", files={"image": ("a.jpg", RED)}, headers={"X-Priority": value}
            )
            assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    ("path", "header", "expected"),
    [
        ("/v1/extract", None, "interactive"),
        ("/v1/extract", "batch", "batch"),
        ("/v1/extract/batch", None, "batch"),
        ("/v1/extract/batch", "interactive", "interactive"),
    ],
)
def test_each_endpoint_runs_in_its_class_unless_the_header_says(
    path: str, header: str | None, expected: str
) -> None:
    backend = FakeBackend(batch_delay_s=0.3)
    headers = {} if header is None else {"X-Priority": header}
    with (
        live_service(settings(max_batch_size=1), backend) as (base_url, _app),
        httpx.Client(base_url=base_url, timeout=10) as client,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        sent = pool.submit(client.post, path, files={"image": ("a.jpg", RED)}, headers=headers)
        seen = seen_while(client, lambda: not sent.done())
        assert sent.result().status_code == 200
    assert ("ff_images_running", expected) in seen
    other = "batch" if expected == "interactive" else "interactive"
    assert ("ff_images_running", other) not in seen


def test_a_backfill_cannot_take_the_room_interactive_requests_need() -> None:
    # Capacity 4 (queue 3 + batch 1); batch work may hold 2 of it.
    config = settings(max_batch_size=1, queue_size=3, batch_admission_share=0.5)
    with (
        live_service(config, FakeBackend(batch_delay_s=0.2)) as (base_url, _app),
        httpx.Client(base_url=base_url, timeout=20) as client,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        files = [("image", (f"{n}.jpg", RED)) for n in range(4)]
        backfill = pool.submit(client.post, "/v1/extract/batch", files=files)
        time.sleep(0.1)  # the backfill holds its two images
        shop = [client.post("/v1/extract", files={"image": ("b.jpg", BLUE)})]
        results = backfill.result().json()["results"]
    assert shop[0].status_code == 200, shop[0].text
    codes = sorted(item.get("error", {}).get("code", "ok") for item in results)
    assert codes == ["ok", "ok", "queue_full", "queue_full"]


@pytest.fixture(scope="module", params=["static"])
def demo_server(request: pytest.FixtureRequest) -> Iterator[str]:
    """`fashion-florence serve` with the shipped demo model: supervisor, engine core, API
    servers, every image over ZeroMQ; the default scheduler (batches of 4; the iteration
    scheduler meets the real model in tests/service/inference/decoding/test_iteration_oracle.py)."""
    process, base_url = spawn_serve(
        {
            "FF_MAX_BATCH_SIZE": "4",
            "FF_ENCODER_BUDGET": "4",
            "FF_SCHEDULER": request.param,
            "FF_CACHE_ENABLED": "false",
            "FF_LOG_LEVEL": "warning",
        }
    )
    try:
        with httpx.Client(base_url=base_url, timeout=2.0) as client:
            wait_ready(process, client, 90.0)
        yield base_url
    finally:
        stop_serve(process)


@pytest.mark.slow
def test_with_the_demo_model_the_class_travels_to_the_engine_core(demo_server: str) -> None:
    from PIL import Image

    photos = [jpeg_bytes(Image.open(path).convert("RGB")) for path in photo_paths(24)]
    with (
        httpx.Client(base_url=demo_server, timeout=60) as client,
        concurrent.futures.ThreadPoolExecutor(2) as pool,
    ):
        files = [("image", (f"{n}.jpg", photo)) for n, photo in enumerate(photos)]
        backfill = pool.submit(client.post, "/v1/extract/batch", files=files)
        seen = seen_while(client, lambda: not backfill.done())
        shop = client.post("/v1/extract", files={"image": ("s.jpg", photos[0])})
        answered = backfill.result()
    assert answered.status_code == 200
    assert shop.status_code == 200
    assert all("attributes" in item for item in answered.json()["results"])
    # Queued behind the first 4, the backfill's images waited and ran as batch work.
    assert {("ff_images_waiting", "batch"), ("ff_images_running", "batch")} <= seen
    assert ("ff_images_running", "interactive") not in seen
