"""Overload, deadlines, disconnects, device faults and API keys, with a fault-injecting backend.

Every scenario checks the accounting: each request gets exactly one answer, and the
answers belong to the right inputs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest

from service.serving.lifecycle import Phase
from tests.faults import FaultBackend
from tests.service.http.conftest import BLUE, RED, assert_problem, make_settings, serve

pytestmark = pytest.mark.load


def upload(image: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {"image": ("x.jpg", image, "image/jpeg")}


async def test_overload_refuses_fast_and_answers_every_accepted_request() -> None:
    # Capacity = queue 4 + batch 2 = 6 images; 18 concurrent requests is 3x that.
    backend = FaultBackend(latency_s=0.15)
    settings = make_settings(queue_size=4, max_batch_size=2)
    async with serve(settings, backend) as s:

        async def one(index: int) -> tuple[int, httpx.Response, float]:
            started = time.perf_counter()
            response = await s.client.post("/v1/extract", files=upload(RED if index % 2 else BLUE))
            return index, response, time.perf_counter() - started

        results = await asyncio.gather(*(one(i) for i in range(18)))
    ok = [(i, r) for i, r, _ in results if r.status_code == 200]
    refused = [(r, t) for _, r, t in results if r.status_code != 200]
    assert len(ok) + len(refused) == 18  # exactly one answer each
    assert refused, "3x capacity must refuse some"
    for response, _ in refused:
        assert_problem(response, 503, "queue_full")
        assert int(response.headers["retry-after"]) >= 1
    for index, response in ok:  # the right answer for the right input
        assert response.json()["attributes"]["primary_color"] == ("red" if index % 2 else "blue")
    assert backend.images_run == len(ok)  # accepted work ran, refused work never did
    rejection_ms = sorted(t * 1000 for _, t in refused)
    print(f"\noverload: sent 18, ok {len(ok)}, queue_full {len(refused)}, "
          f"rejection latency median {rejection_ms[len(rejection_ms) // 2]:.1f} ms")  # fmt: skip
    assert max(rejection_ms) < 150  # refused before any batch (150 ms each) could finish


async def test_expired_items_never_reach_the_backend() -> None:
    backend = FaultBackend(latency_s=0.3)
    async with serve(make_settings(max_batch_size=1), backend) as s:
        blocker = asyncio.create_task(s.client.post("/v1/extract", files=upload(RED)))
        await asyncio.sleep(0.05)  # the blocker is now in the engine for 300 ms
        late = await s.client.post(
            "/v1/extract", files=upload(BLUE), headers={"X-Request-Timeout-Ms": "100"}
        )
        assert (await blocker).status_code == 200
        metrics = (await s.client.get("/metrics")).text
    assert_problem(late, 504, "deadline_exceeded")
    assert backend.images_run == 1  # only the blocker ever ran
    assert 'ff_deadline_drops_total{stage="queued"} 1.0' in metrics


async def test_a_timeout_header_can_shorten_but_not_lengthen_or_be_garbage() -> None:
    async with serve(make_settings(request_timeout_ms=5_000)) as s:
        extractor = s.app.state.runtime.extractor
        assert extractor.deadline_after_ms(60_000) - time.monotonic() < 5.1
        bad = await s.client.post(
            "/v1/extract", files=upload(RED), headers={"X-Request-Timeout-Ms": "soon"}
        )
    assert_problem(bad, 400, "invalid_request")


async def test_a_disconnected_client_is_not_run() -> None:
    backend = FaultBackend(latency_s=0.3)
    async with serve(make_settings(max_batch_size=1), backend) as s:
        blocker = asyncio.create_task(s.client.post("/v1/extract", files=upload(RED)))
        await asyncio.sleep(0.05)
        # Raw ASGI: send the whole body, then hang up while the engine is busy.
        request = s.client.build_request("POST", "/v1/extract", files=upload(BLUE))
        body = request.read()
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        gone = asyncio.Event()

        async def receive() -> dict[str, object]:
            if messages:
                return messages.pop(0)
            await asyncio.sleep(0.05)
            gone.set()
            return {"type": "http.disconnect"}

        sent: list[MutableMapping[str, Any]] = []

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": "/v1/extract", "raw_path": b"/v1/extract", "query_string": b"",
            "root_path": "", "server": ("testserver", 80), "client": ("127.0.0.1", 1),
            "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()],
        }  # fmt: skip
        await s.app(scope, receive, send)
        assert (await blocker).status_code == 200
        await asyncio.sleep(0.4)  # give a wrongly queued item time to run
        metrics = (await s.client.get("/metrics")).text
    assert gone.is_set()
    assert sent[0]["status"] == 499
    assert backend.images_run == 1  # the departed client's image never ran
    assert "ff_cancellations_total 1.0" in metrics


async def test_oom_above_batch_two_still_answers_all_eight() -> None:
    backend = FaultBackend(latency_s=0.05, oom_above=2)
    async with serve(
        make_settings(max_batch_size=8, batch_dispatch="wait", max_wait_ms=50), backend
    ) as s:
        images = [RED if i % 2 else BLUE for i in range(8)]
        responses = await asyncio.gather(
            *(s.client.post("/v1/extract", files=upload(im)) for im in images)
        )
        metrics = (await s.client.get("/metrics")).text
    for index, response in enumerate(responses):
        assert response.status_code == 200, response.text
        assert response.json()["attributes"]["primary_color"] == ("red" if index % 2 else "blue")
    assert max(backend.attempts) > 2  # a big batch was tried and split
    assert all(size <= 2 for size in backend.batches)  # only small batches succeeded
    assert "ff_oom_splits_total" in metrics
    assert "ff_oom_splits_total 0.0" not in metrics


async def test_single_image_oom_is_engine_oom() -> None:
    backend = FaultBackend(oom_above=0)
    async with serve(make_settings(), backend) as s:
        response = await s.client.post("/v1/extract", files=upload(RED))
    assert_problem(response, 503, "engine_oom")


async def test_sticky_device_error_takes_the_pod_out() -> None:
    backend = FaultBackend(fatal_after_batches=0)
    async with serve(make_settings(), backend) as s:
        assert (await s.client.get("/readyz")).status_code == 200
        failed = await s.client.post("/v1/extract", files=upload(RED))
        await asyncio.sleep(0.05)  # the engine thread reports to the loop
        health = await s.client.get("/healthz")
        ready = await s.client.get("/readyz")
        after = await s.client.post("/v1/extract", files=upload(RED))
        state = (await s.client.get("/metrics")).text
    assert_problem(failed, 503, "engine_error")
    assert health.status_code == 503
    assert ready.status_code == 503
    assert "dead" in health.json()["detail"]
    assert_problem(after, 503, "not_ready")  # no more work for a dead engine
    assert 'ff_engine_state{state="dead"} 1.0' in state


async def test_a_hung_batch_fails_liveness_after_the_stall_limit() -> None:
    hang = threading.Event()
    backend = FaultBackend(hang=hang)
    backend.warmup = lambda: None  # type: ignore[method-assign]  # warm-up must not hang
    async with serve(
        make_settings(engine_stall_timeout_s=1.0, request_timeout_ms=500), backend
    ) as s:
        stuck = asyncio.create_task(s.client.post("/v1/extract", files=upload(RED)))
        await asyncio.sleep(0.3)
        assert (await s.client.get("/healthz")).status_code == 200  # busy is not dead
        await asyncio.sleep(1.0)
        health = await s.client.get("/healthz")
        hang.set()
        response = await stuck
    assert health.status_code == 503
    assert "has run for" in health.json()["detail"]
    assert s.app.state.runtime.phase is Phase.STOPPED
    assert response.status_code in (200, 504)  # answered once, whatever came first


async def test_api_keys_guard_v1_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    settings = make_settings(api_keys="first-key,second-key")
    async with serve(settings) as s:
        missing = await s.client.post("/v1/extract", files=upload(RED))
        wrong = await s.client.post(
            "/v1/extract", files=upload(RED), headers={"Authorization": "Bearer nope"}
        )
        first = await s.client.post(
            "/v1/extract", files=upload(RED), headers={"Authorization": "Bearer first-key"}
        )
        second = await s.client.get("/v1/model", headers={"authorization": "bearer second-key"})
        model_without = await s.client.get("/v1/model")
        open_routes = [await s.client.get(p) for p in ("/healthz", "/readyz", "/metrics")]
    for response in (missing, wrong, model_without):
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert first.status_code == 200
    assert second.status_code == 200
    assert all(r.status_code == 200 for r in open_routes)
    assert "first-key" not in caplog.text
    assert "second-key" not in caplog.text
    assert "first-key" not in repr(settings)


async def test_pre_hashed_keys_are_accepted() -> None:
    import hashlib

    digest = hashlib.sha256(b"rotated").hexdigest()
    async with serve(make_settings(api_key_sha256=digest)) as s:
        ok = await s.client.post(
            "/v1/extract", files=upload(RED), headers={"Authorization": "Bearer rotated"}
        )
        refused = await s.client.post(
            "/v1/extract", files=upload(RED), headers={"Authorization": f"Bearer {digest}"}
        )
    assert ok.status_code == 200
    assert_problem(refused, 401, "unauthorized")


async def test_draining_refuses_new_work_and_finishes_admitted_work() -> None:
    backend = FaultBackend(latency_s=0.3)
    async with serve(make_settings(max_batch_size=4), backend) as s:
        in_flight = [
            asyncio.create_task(s.client.post("/v1/extract", files=upload(RED))) for _ in range(3)
        ]
        await asyncio.sleep(0.05)
        drain = asyncio.create_task(s.app.state.runtime.drain())
        await asyncio.sleep(0.01)
        ready = await s.client.get("/readyz")
        refused = await s.client.post("/v1/extract", files=upload(BLUE))
        assert await drain is True
        done = await asyncio.gather(*in_flight)
        metrics = (await s.client.get("/metrics")).text
    assert ready.status_code == 503
    assert_problem(refused, 503, "draining")
    assert [r.status_code for r in done] == [200, 200, 200]
    assert 'ff_engine_state{state="draining"} 1.0' in metrics
    assert json.loads(done[0].text)["attributes"]["primary_color"] == "red"
