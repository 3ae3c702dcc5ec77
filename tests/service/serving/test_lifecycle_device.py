"""The liveness device check: only a fatal device error marks the engine dead."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.backend import DeviceFatalError
from service.serving.lifecycle import Phase, Runtime
from service.settings import Settings
from service.telemetry.metrics import ServiceMetrics
from tests.fakes import FakeBackend


class ProbedBackend(FakeBackend):
    """A backend whose device check raises ``error`` while it is set."""

    def __init__(self) -> None:
        super().__init__()
        self.error: Exception | None = None
        self.checks = 0

    def check_device(self) -> None:
        self.checks += 1
        if self.error is not None:
            raise self.error


@asynccontextmanager
async def running(backend: ProbedBackend) -> AsyncIterator[Runtime]:
    runtime = Runtime(Settings(preprocess_threads=1), ServiceMetrics(), backend=backend)
    await runtime.start()
    await runtime.wait_ready()
    try:
        yield runtime
    finally:
        await runtime.stop()


async def test_a_transient_device_check_error_leaves_the_engine_alive() -> None:
    backend = ProbedBackend()
    async with running(backend) as runtime:
        # What torch raises when the probe's one element finds the device full mid-split.
        backend.error = RuntimeError("CUDA out of memory. Tried to allocate 2.00 MiB")
        assert await runtime.liveness() == (True, "ready")
        assert await runtime.readiness() == (True, "ready")
        assert runtime.phase is Phase.READY
        backend.error = None
        assert await runtime.liveness() == (True, "ready")
        assert backend.checks >= 3


async def test_a_fatal_device_check_error_marks_the_engine_dead() -> None:
    backend = ProbedBackend()
    async with running(backend) as runtime:
        backend.error = DeviceFatalError("CUDA error: an illegal memory access was encountered")
        live, detail = await runtime.liveness()
        assert not live
        assert runtime.phase is Phase.DEAD
        assert "illegal memory access" in detail
        backend.error = None
        assert (await runtime.liveness())[0] is False  # dead stays dead
