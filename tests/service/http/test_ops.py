"""Probes, ``/v1/model``, ``/metrics``, problem 404s and the lifespan (load, fail, drain)."""

from __future__ import annotations

import asyncio
import gc
import threading
import uuid
from collections.abc import Callable, Sequence

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from service.backend import InferenceBackend, ItemOutcome, PreparedImage
from service.http.app import create_app
from service.serving.lifecycle import Phase
from service.settings import Settings
from tests.fakes import FakeBackend
from tests.service.http.conftest import (
    BAD,
    BAD_RED_ABOVE,
    RED,
    assert_problem,
    make_settings,
    serve,
)

FAMILIES = (
    "ff_requests",  # exposed as ff_requests_total
    "ff_request_duration_seconds",
    "ff_queue_depth",
    "ff_queue_wait_seconds",
    "ff_batch_size",
    "ff_inference_duration_seconds",
    "ff_generated_tokens",
    "ff_errors",  # exposed as ff_errors_total
    "ff_model_info",
)

Labels = tuple[tuple[str, str], ...]


def image_files(*images: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, Labels], float]:
    """Every sample of ``/metrics`` by (sample name, sorted labels)."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def phase_of(app: FastAPI) -> Phase:
    phase: Phase = app.state.runtime.phase
    return phase


def value(samples: dict[tuple[str, Labels], float], sample: str, /, **labels: str) -> float:
    return samples.get((sample, tuple(sorted(labels.items()))), 0.0)


# --- probes and model description ---------------------------------------------------------


async def test_startup_objects_are_frozen_while_serving_and_released_at_stop() -> None:
    gc.unfreeze()
    async with serve() as s:
        assert phase_of(s.app) is Phase.READY
        assert gc.get_freeze_count() > 0  # the loaded model is out of the collector's walk
    assert gc.get_freeze_count() == 0  # stopped: all of it is collectable again


async def test_probes_and_model_while_loading_then_ready() -> None:
    gate = threading.Event()
    backend = FakeBackend(load_gate=gate, bad_red_above=BAD_RED_ABOVE)
    try:
        async with serve(backend=backend, wait=False) as s:
            live = await s.client.get("/healthz")
            assert live.status_code == 200
            assert live.json() == {"status": "ok", "detail": "loading"}

            ready = await s.client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"status": "unavailable", "detail": "loading"}

            assert_problem(await s.client.get("/v1/model"), 503, "not_ready")
            early = await s.client.post("/v1/extract", files=image_files(RED))
            assert_problem(early, 503, "not_ready")
            assert int(early.headers["retry-after"]) >= 1
            assert backend.warmed is False

            gate.set()
            await asyncio.wait_for(s.app.state.runtime.wait_ready(), 5)

            ready = await s.client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json() == {"status": "ok", "detail": "ready"}
            assert (await s.client.get("/healthz")).status_code == 200
            assert backend.warmed is True

            model = await s.client.get("/v1/model")
            assert model.status_code == 200
            assert model.json() == {
                "name": "fake",
                "revision": "0",
                "device": "cpu",
                "dtype": "float32",
                "image_size": 8,
                "manifest": {"name": "fake"},
            }
            assert (await s.client.post("/v1/extract", files=image_files(RED))).status_code == 200
    finally:
        gate.set()  # never leave the warmup thread waiting


async def test_failed_load_reports_in_probes() -> None:
    def broken_loader(settings: Settings) -> InferenceBackend:
        raise RuntimeError("weights are missing from /nowhere")

    async with serve(loader=broken_loader) as s:
        assert phase_of(s.app) is Phase.FAILED
        for path in ("/healthz", "/readyz"):
            response = await s.client.get(path)
            assert response.status_code == 503, path
            body = response.json()
            assert body["status"] == "unavailable"
            assert "RuntimeError" in body["detail"]
            assert "weights are missing from /nowhere" in body["detail"]
        assert_problem(await s.client.get("/v1/model"), 503, "not_ready")
        assert_problem(await s.client.post("/v1/extract", files=image_files(RED)), 503, "not_ready")
        samples = await scrape(s.client)
        assert value(samples, "ff_ready") == 0.0
    assert phase_of(s.app) is Phase.STOPPED  # shutting down after a failed load is clean


async def test_loader_runs_when_no_backend_is_given() -> None:
    built: list[FakeBackend] = []

    def loader(settings: Settings) -> InferenceBackend:
        built.append(FakeBackend(bad_red_above=BAD_RED_ABOVE))
        return built[-1]

    async with serve(loader=loader) as s:
        assert (await s.client.get("/readyz")).status_code == 200
        assert (await s.client.post("/v1/extract", files=image_files(RED))).status_code == 200
    assert len(built) == 1
    assert built[0].warmed
    assert built[0].closed


# --- metrics ------------------------------------------------------------------------------


async def test_metrics_families_and_counters_move() -> None:
    # The same images are sent twice and counted as engine work: no result cache.
    async with serve(make_settings(cache_enabled=False)) as s:
        response = await s.client.get("/metrics")
        names = {family.name for family in text_string_to_metric_families(response.text)}
        missing = set(FAMILIES) - names
        assert not missing, missing
        assert "ff_requests_total" in response.text
        assert "ff_errors_total" in response.text

        before = await scrape(s.client)
        assert (
            value(before, "ff_model_info", name="fake", revision="0", device="cpu", dtype="float32")
            == 1
        )
        assert value(before, "ff_ready") == 1

        ok = await s.client.post("/v1/extract", files=image_files(RED))
        assert ok.status_code == 200
        bad = await s.client.post("/v1/extract", files=image_files(BAD))
        assert bad.status_code == 502
        batch = await s.client.post("/v1/extract/batch", files=image_files(RED, BAD))
        assert batch.status_code == 200
        after = await scrape(s.client)

    def delta(sample: str, /, **labels: str) -> float:
        return value(after, sample, **labels) - value(before, sample, **labels)

    assert delta("ff_requests_total", route="/v1/extract", status="200") == 1
    assert delta("ff_requests_total", route="/v1/extract", status="502") == 1
    assert delta("ff_requests_total", route="/v1/extract/batch", status="200") == 1
    assert delta("ff_request_duration_seconds_count", route="/v1/extract") == 2
    assert delta("ff_request_duration_seconds_sum", route="/v1/extract") > 0
    # One problem (the 502) and one failed batch item, each counted once.
    assert delta("ff_errors_total", code="invalid_model_output") == 2
    assert delta("ff_images_total") == 4
    assert delta("ff_queue_wait_seconds_count") == 4
    assert 1 <= delta("ff_batch_size_count") <= 4
    assert delta("ff_batch_size_sum") == 4
    assert delta("ff_inference_duration_seconds_count") == delta("ff_batch_size_count")
    # FakeBackend: 30 tokens for a good answer, 3 for a bad one.
    assert delta("ff_generated_tokens_count") == 4
    assert delta("ff_generated_tokens_sum") == 30 + 3 + 30 + 3
    assert value(after, "ff_queue_depth") == 0
    # The /metrics scrapes themselves are counted under their route.
    assert delta("ff_requests_total", route="/metrics", status="200") >= 1


async def test_unknown_path_is_a_404_problem_without_a_raw_path_label() -> None:
    token = uuid.uuid4().hex
    path = f"/no/such/{token}"
    async with serve() as s:
        response = await s.client.get(path)
        body = assert_problem(response, 404, "not_found")
        assert body["instance"] == path
        assert "x-request-id" in response.headers
        samples = await scrape(s.client)
    label_values = {v for (_, labels) in samples for (_, v) in labels}
    assert path not in label_values
    assert not any(token in v for v in label_values)
    assert value(samples, "ff_errors_total", code="not_found") == 1
    assert sum(v for (n, _), v in samples.items() if n == "ff_requests_total") >= 1


async def test_wrong_method_is_a_405_problem() -> None:
    async with serve() as s:
        response = await s.client.get("/v1/extract")
    assert_problem(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


# --- shutdown -----------------------------------------------------------------------------


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"condition not met within {timeout_s}s")


class RecordingBackend(FakeBackend):
    """Notes how many batches had finished when ``close`` was called."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.finished = 0
        self.finished_at_close: int | None = None

    def run_batch(self, images: Sequence[PreparedImage]) -> list[ItemOutcome]:
        outcomes = super().run_batch(images)
        self.finished += 1
        return outcomes

    def close(self) -> None:
        self.finished_at_close = self.finished
        super().close()


async def test_shutdown_finishes_in_flight_requests_then_closes_backend() -> None:
    backend = RecordingBackend(batch_delay_s=0.2, bad_red_above=BAD_RED_ABOVE)
    settings = make_settings(max_batch_size=1, max_wait_ms=0.0)
    app = create_app(settings, backend)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        async with app.router.lifespan_context(app):
            runtime = app.state.runtime
            await runtime.wait_ready()
            running = asyncio.create_task(client.post("/v1/extract", files=image_files(RED)))
            queued = asyncio.create_task(client.post("/v1/extract", files=image_files(RED)))
            # One batch in the engine, one request waiting behind it.
            await eventually(
                lambda: bool(backend.batches) and runtime.engine.batcher.queue_depth == 1
            )
            assert backend.finished == 0
            assert not backend.closed
        # The lifespan is over: both accepted requests were answered, then the model closed.
        assert running.done()
        assert queued.done()
        assert backend.closed
        assert backend.finished_at_close == 2
        assert runtime.phase is Phase.STOPPED
        for task in (running, queued):
            response = task.result()
            assert response.status_code == 200, response.text
            assert response.json()["attributes"]["primary_color"] == "red"
        late = await client.post("/v1/extract", files=image_files(RED))
        ready = await client.get("/readyz")
    assert_problem(late, 503, "not_ready")
    assert ready.status_code == 503
    assert ready.json()["detail"] == "stopped"
    assert backend.batches == [1, 1]
