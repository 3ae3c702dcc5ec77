"""The engine's life as an API server sees it: connect (or load), serve, drain, die.

In production the engine is the engine core, a process of its own that the supervisor
starts and restarts (``service.supervisor``); this server connects to it
(:class:`service.serving.core_client.CoreClient`) once it is ready. Tests and
``extract --local`` run the same scheduler in this process instead
(:class:`service.engine_core.local.InProcessEngine`, built here by name so that importing
the serving layer never imports the engine's modules).

Loading runs off the event loop so ``/healthz`` answers while a large checkpoint loads,
and ``/readyz`` says 503 until the model is loaded *and* warmed (a startup/readiness
probe pair needs exactly that distinction), and while the engine core restarts. A dead
engine (sticky device error, a batch stuck past the stall limit, an engine core that died
too often) turns both probes 503 so Kubernetes restarts the pod instead of it serving
errors for hours.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import time
from collections.abc import Awaitable, Callable
from enum import StrEnum

from service.backend import Engine, InferenceBackend, ModelInfo
from service.gc_freeze import freeze_startup_objects
from service.intake import fetcher_from_settings
from service.serving.admission import CapacityPool
from service.serving.extraction import Extractor
from service.settings import Settings
from service.telemetry.metrics import ServiceMetrics

log = logging.getLogger(__name__)

BackendLoader = Callable[[Settings], InferenceBackend]
#: Connects to an engine that runs elsewhere (the engine core), once it is ready.
EngineConnector = Callable[[Settings, ServiceMetrics], Awaitable[Engine]]


class Phase(StrEnum):
    LOADING = "loading"
    READY = "ready"
    RESTARTING = "restarting"  # the engine core died; a new one is loading
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"  # the model never loaded
    DEAD = "dead"  # the engine broke while serving, for good


def load_real_engine(settings: Settings) -> InferenceBackend:
    """The real engine in this process (tests of the real model, ``extract --local``).
    Imported by name so HTTP-only code paths (and their tests) never import torch."""
    engine = importlib.import_module("service.inference.engine")
    backend: InferenceBackend = engine.load_engine(settings)
    return backend


class Runtime:
    """Owns this server's engine handle and extractor; reports liveness and readiness."""

    def __init__(
        self,
        settings: Settings,
        metrics: ServiceMetrics,
        backend: InferenceBackend | None = None,
        loader: BackendLoader = load_real_engine,
        *,
        connector: EngineConnector | None = None,
        pool: CapacityPool | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.error: str | None = None
        self.backend = backend
        self.engine: Engine | None = None
        self.extractor: Extractor | None = None
        self.load_seconds: float | None = None
        self._loader = loader
        self._connector = connector
        self._pool = pool
        self._fetcher = fetcher_from_settings(settings, on_failure=metrics.url_fetch_failed)
        self._load_task: asyncio.Task[None] | None = None
        self._phase = Phase.LOADING
        self._set_phase(Phase.LOADING)

    @property
    def phase(self) -> Phase:
        """The stored phase, with READY read as RESTARTING while the engine core restarts."""
        if self._phase == Phase.READY and self.engine is not None and self.engine.restarting():
            return Phase.RESTARTING
        return self._phase

    def _set_phase(self, phase: Phase, error: str | None = None) -> None:
        self._phase = phase
        if error is not None:
            self.error = error
        self.publish_phase()

    def publish_phase(self) -> None:
        """Set the state gauges from the phase (also called when the engine core's state
        changes underneath it)."""
        phase = self.phase
        self.metrics.set_engine_state(phase.value, tuple(p.value for p in Phase))
        self.metrics.ready.set(1 if phase == Phase.READY else 0)

    @property
    def model_info(self) -> ModelInfo | None:
        # Stays available after the drain (STOPPED) so requests finishing last still answer.
        loaded = self._phase not in (Phase.LOADING, Phase.FAILED)
        return self.engine.info if self.engine is not None and loaded else None

    async def start(self) -> None:
        self._load_task = asyncio.create_task(self._load(), name="model-load")

    async def wait_ready(self) -> None:
        if self._load_task is not None:
            await asyncio.shield(self._load_task)

    async def _load(self) -> None:
        started = time.perf_counter()
        try:
            if self._connector is not None:
                engine = await self._connector(self.settings, self.metrics)
            else:
                engine = await self._load_in_process()
            self.engine = engine
            extractor = Extractor(engine, self.settings, self.metrics, self._fetcher, self._pool)
        except Exception as exc:  # any load failure must surface in the probes, not vanish
            log.exception("model load failed")
            self._set_phase(Phase.FAILED, f"{type(exc).__name__}: {exc}")
            return
        self.extractor = extractor
        self.load_seconds = time.perf_counter() - started
        self.metrics.set_model(engine.info)
        if self.settings.gc_freeze:
            freeze_startup_objects()
        self._set_phase(Phase.READY)
        log.info("model ready in %.2fs: %s", self.load_seconds, engine.info.name)

    async def _load_in_process(self) -> Engine:
        backend = self.backend
        if backend is None:
            backend = await asyncio.to_thread(self._loader, self.settings)
            self.backend = backend
        await asyncio.to_thread(backend.warmup)
        local = importlib.import_module("service.engine_core.local")
        engine = local.InProcessEngine(backend, self.settings, self.metrics)
        await engine.start()
        in_process: Engine = engine
        return in_process

    def mark_dead(self, reason: str) -> None:
        if self._phase in (Phase.READY, Phase.DRAINING):
            log.error("engine dead: %s", reason)
            self._set_phase(Phase.DEAD, reason)

    async def drain(self) -> bool:
        """SIGTERM: readiness 503 at once, refuse new work, let admitted work finish
        within ``drain_timeout_s``. True if everything finished in time."""
        if self._phase == Phase.READY:
            self._set_phase(Phase.DRAINING)
        if self.extractor is None:
            return True
        started = time.perf_counter()
        admission = self.extractor.admission
        admission.start_draining()
        finished = await admission.wait_idle(self.settings.drain_timeout_s)
        log.info(
            "drain %s in %.2fs",
            "complete" if finished else "timed out",
            time.perf_counter() - started,
        )
        return finished

    async def stop(self) -> None:
        """Refuse new work, finish what was accepted, release the engine."""
        if self._phase == Phase.READY:
            self._set_phase(Phase.DRAINING)
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        if self.extractor is not None:
            self.extractor.admission.start_draining()
        if self.engine is not None:
            await self.engine.close()
        if self.extractor is not None:
            await self.extractor.stop()
        await self._fetcher.aclose()
        gc.unfreeze()  # what the model held may now be cyclic garbage: let it be collected
        self._set_phase(Phase.STOPPED)

    async def liveness(self) -> tuple[bool, str]:
        if self._phase in (Phase.FAILED, Phase.DEAD):
            return False, f"engine {self._phase.value}: {self.error}"
        if self.engine is None or self._phase == Phase.STOPPED:
            return True, self.phase.value
        dead = await self.engine.liveness()
        if dead is not None:
            self.mark_dead(dead)
            return False, f"engine dead: {dead}"
        return True, self.phase.value

    async def readiness(self) -> tuple[bool, str]:
        live, detail = await self.liveness()
        if not live:
            return False, detail
        phase = self.phase
        return phase == Phase.READY, phase.value
