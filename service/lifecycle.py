"""The model's life inside the process: load in the background, warm up, serve, drain.

Loading runs off the event loop so ``/healthz`` answers while a large checkpoint loads,
and ``/readyz`` says 503 until the model is loaded *and* warmed (a startup/readiness
probe pair needs exactly that distinction).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Final

from service.backend import InferenceBackend, ModelInfo
from service.extraction import Extractor
from service.intake import fetcher_from_settings
from service.metrics import ServiceMetrics
from service.settings import Settings

log = logging.getLogger(__name__)

BackendLoader = Callable[[Settings], InferenceBackend]
#: The batcher loop ticks at least every second while idle; this much silence means the
#: loop or the engine thread is wedged and the pod should be restarted.
HEARTBEAT_STALE_S: Final = 60.0


class Phase(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    DRAINING = "draining"
    STOPPED = "stopped"


def load_real_engine(settings: Settings) -> InferenceBackend:
    # Imported here so HTTP-only code paths (and their tests) never import torch.
    engine = importlib.import_module("service.engine")
    backend: InferenceBackend = engine.load_engine(settings)
    return backend


class Runtime:
    """Owns the backend and the extractor; reports liveness and readiness."""

    def __init__(
        self,
        settings: Settings,
        metrics: ServiceMetrics,
        backend: InferenceBackend | None = None,
        loader: BackendLoader = load_real_engine,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.phase = Phase.LOADING
        self.error: str | None = None
        self.backend = backend
        self.extractor: Extractor | None = None
        self.load_seconds: float | None = None
        self._loader = loader
        self._fetcher = fetcher_from_settings(settings)
        self._load_task: asyncio.Task[None] | None = None

    @property
    def model_info(self) -> ModelInfo | None:
        # Stays available after the drain (STOPPED) so requests finishing last still answer.
        loaded = self.phase not in (Phase.LOADING, Phase.FAILED)
        return self.backend.info if self.backend is not None and loaded else None

    async def start(self) -> None:
        self._load_task = asyncio.create_task(self._load(), name="model-load")

    async def wait_ready(self) -> None:
        if self._load_task is not None:
            await asyncio.shield(self._load_task)

    async def _load(self) -> None:
        started = time.perf_counter()
        try:
            backend: InferenceBackend
            if self.backend is None:
                backend = await asyncio.to_thread(self._loader, self.settings)
            else:
                backend = self.backend
            self.backend = backend
            await asyncio.to_thread(backend.warmup)
            extractor = Extractor(backend, self.settings, self.metrics, self._fetcher)
            await extractor.start()
        except Exception as exc:  # any load failure must surface in the probes, not vanish
            log.exception("model load failed")
            self.phase, self.error = Phase.FAILED, f"{type(exc).__name__}: {exc}"
            return
        self.extractor = extractor
        self.load_seconds = time.perf_counter() - started
        self.metrics.set_model(backend.info)
        self.metrics.ready.set(1)
        self.phase = Phase.READY
        log.info("model ready in %.2fs: %s", self.load_seconds, backend.info.name)

    async def stop(self) -> None:
        """Refuse new work, finish what was accepted, release the model."""
        if self.phase == Phase.READY:
            self.phase = Phase.DRAINING
        self.metrics.ready.set(0)
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        if self.extractor is not None:
            await self.extractor.stop()
        if self.backend is not None:
            await asyncio.to_thread(self.backend.close)
        await self._fetcher.aclose()
        self.phase = Phase.STOPPED

    def liveness(self) -> tuple[bool, str]:
        if self.phase == Phase.FAILED:
            return False, f"model load failed: {self.error}"
        if self.extractor is not None and self.phase == Phase.READY:
            silence = time.monotonic() - self.extractor.batcher.last_heartbeat_monotonic
            if not self.extractor.batcher.running:
                return False, "batcher loop is not running"
            if silence > HEARTBEAT_STALE_S:
                return False, f"batcher loop silent for {silence:.0f}s"
        return True, self.phase.value

    def readiness(self) -> tuple[bool, str]:
        live, detail = self.liveness()
        if not live:
            return False, detail
        return self.phase == Phase.READY, self.phase.value
