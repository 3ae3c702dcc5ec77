"""The result cache: same bytes + same model revision hit, bounds hold, it can be turned off."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from service.backend import ModelInfo
from service.engine_core.cache import CacheKey, ResultCache
from service.http.app import create_app
from service.intake.digest import content_digest
from service.settings import Settings
from service.telemetry.metrics import CacheMetrics
from tests.fakes import FakeBackend
from tests.live import BAD, BLUE, RED, _no_ff_environment, settings

__all__ = ["_no_ff_environment"]


class RevisedBackend(FakeBackend):
    """A fake whose model revision the test can change (a new model deployed)."""

    revision = "r1"

    @property
    def info(self) -> ModelInfo:
        return ModelInfo("fake", self.revision, "cpu", "float32", self.image_size, {})


@asynccontextmanager
async def app_client(config: Settings, backend: FakeBackend) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(config, backend)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        await app.state.runtime.wait_ready()
        yield client


def counter(exposition: str, name: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


async def test_identical_bytes_hit_and_skip_the_engine() -> None:
    backend = RevisedBackend()
    async with app_client(settings(), backend) as client:
        first = await client.post("/v1/extract", files={"image": ("a.jpg", RED)})
        second = await client.post("/v1/extract", files={"image": ("b.jpg", RED)})
        other = await client.post("/v1/extract", files={"image": ("c.jpg", BLUE)})
        metrics = (await client.get("/metrics")).text
    assert first.status_code == second.status_code == other.status_code == 200
    assert second.json()["attributes"] == first.json()["attributes"]
    assert second.json()["timing_ms"]["inference"] == 0.0  # answered from memory
    assert sum(backend.batches) == 2  # RED once, BLUE once
    assert counter(metrics, "ff_cache_hits_total") == 1
    assert counter(metrics, "ff_cache_misses_total") == 2
    assert counter(metrics, "ff_cache_entries") == 2


async def test_a_new_model_revision_misses() -> None:
    backend = RevisedBackend()
    async with app_client(settings(), backend) as client:
        await client.post("/v1/extract", files={"image": ("a.jpg", RED)})
        backend.revision = "r2"
        again = await client.post("/v1/extract", files={"image": ("a.jpg", RED)})
        metrics = (await client.get("/metrics")).text
    assert again.status_code == 200
    assert sum(backend.batches) == 2  # the engine ran again for the new revision
    assert counter(metrics, "ff_cache_hits_total") == 0


async def test_batch_items_hit_too_and_errors_are_not_cached() -> None:
    backend = RevisedBackend(bad_red_above=0.9)
    async with app_client(settings(), backend) as client:
        await client.post("/v1/extract", files={"image": ("a.jpg", RED)})
        for _ in range(2):
            assert (
                await client.post("/v1/extract", files={"image": ("x", BAD)})
            ).status_code == 502
        files = [("image", ("a.jpg", RED)), ("image", ("b.jpg", RED))]
        batch = await client.post("/v1/extract/batch", files=files)
    assert [r["attributes"]["primary_color"] for r in batch.json()["results"]] == ["red", "red"]
    assert sum(backend.batches) == 3  # RED once, the bad image twice (never cached)


async def test_disabled_by_setting() -> None:
    backend = RevisedBackend()
    async with app_client(settings(cache_enabled=False), backend) as client:
        for _ in range(2):
            await client.post("/v1/extract", files={"image": ("a.jpg", RED)})
        metrics = (await client.get("/metrics")).text
    assert sum(backend.batches) == 2
    assert counter(metrics, "ff_cache_misses_total") == 0


def _metrics() -> CacheMetrics:
    r = CollectorRegistry()
    return CacheMetrics(
        Counter("h", "", registry=r), Counter("m", "", registry=r), Counter("e", "", registry=r),
        Gauge("n", "", registry=r), Gauge("b", "", registry=r),
    )  # fmt: skip


def key(n: int) -> CacheKey:
    return CacheKey(f"{n:064x}", "r1")


def test_entry_bound_evicts_least_recently_used() -> None:
    cache: ResultCache[str] = ResultCache(max_entries=2, max_bytes=1 << 20, metrics=_metrics())
    cache.put(key(1), "a", 10)
    cache.put(key(2), "b", 10)
    assert cache.get(key(1)) == "a"  # 1 is now the most recent
    cache.put(key(3), "c", 10)
    assert len(cache) == 2
    assert key(2) not in cache
    assert cache.get(key(1)) == "a"
    assert cache.get(key(3)) == "c"


def test_byte_bound_holds_and_an_oversized_entry_is_not_stored() -> None:
    cache: ResultCache[str] = ResultCache(max_entries=1000, max_bytes=4096)
    for n in range(50):
        cache.put(key(n), "v", 500)
        assert cache.size_bytes <= 4096
    assert 0 < len(cache) < 50
    assert key(49) in cache
    cache.put(key(99), "huge", 10_000)
    assert key(99) not in cache
    assert key(49) in cache  # nothing evicted for an entry that could never fit


async def test_digest_is_the_same_on_and_off_the_loop() -> None:
    small, large = b"x" * 10, b"y" * (2 << 20)
    assert await content_digest(small) == hashlib.sha256(small).hexdigest()
    assert await content_digest(large) == hashlib.sha256(large).hexdigest()
