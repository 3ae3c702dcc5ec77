"""The model's life inside the process: load in the background, warm up, serve, drain, die.

Loading runs off the event loop so ``/healthz`` answers while a large checkpoint loads,
and ``/readyz`` says 503 until the model is loaded *and* warmed (a startup/readiness
probe pair needs exactly that distinction). A dead engine (sticky device error, a batch
stuck past the stall limit) turns both probes 503 so Kubernetes restarts the pod instead
of it serving errors for hours.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import Final

from service.backend import DeviceFatalError, InferenceBackend, ModelInfo
from service.core.extraction import Extractor
from service.intake import fetcher_from_settings
from service.settings import Settings
from service.telemetry.metrics import ServiceMetrics

log = logging.getLogger(__name__)

BackendLoader = Callable[[Settings], InferenceBackend]
#: The batcher loop ticks at least every second while idle; this much silence with no
#: batch running means the event loop itself is wedged.
HEARTBEAT_STALE_S: Final = 30.0
#: A device round trip slower than this is "busy", not dead: the engine thread may hold
#: the device with a long batch. Only a DeviceFatalError from the device check marks the
#: engine dead.
DEVICE_CHECK_TIMEOUT_S: Final = 2.0


class Phase(StrEnum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"  # the model never loaded
    DEAD = "dead"  # the engine broke while serving


def load_real_engine(settings: Settings) -> InferenceBackend:
    if settings.engine_process:  # torch is then imported in the engine's process only
        separate = importlib.import_module("service.inference.engine_process")
        started: InferenceBackend = separate.start_engine_process(settings)
        return started
    # Imported here so HTTP-only code paths (and their tests) never import torch.
    engine = importlib.import_module("service.inference.engine")
    backend: InferenceBackend = engine.load_engine(settings)
    return backend


def freeze_startup_objects() -> None:
    """Move everything alive after the load (the model, tokenizer, grammar, libraries) out
    of the garbage collector's reach: they live as long as the process, and otherwise every
    full collection walks all of them while a request waits. Measured on 2 CPU cores with
    32 clients (docs/BENCHMARKS.md): p99 388-429 ms without, 153-192 ms with.
    Refcounting still frees frozen objects; ``stop`` unfreezes for the cyclic ones."""
    gc.collect()
    gc.freeze()


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
        self.error: str | None = None
        self.backend = backend
        self.extractor: Extractor | None = None
        self.load_seconds: float | None = None
        self._loader = loader
        self._fetcher = fetcher_from_settings(settings, on_failure=metrics.url_fetch_failed)
        self._load_task: asyncio.Task[None] | None = None
        self._device_checker = ThreadPoolExecutor(1, thread_name_prefix="device-check")
        self._device_check: asyncio.Future[None] | None = None
        self.phase = Phase.LOADING
        self._set_phase(Phase.LOADING)

    def _set_phase(self, phase: Phase, error: str | None = None) -> None:
        self.phase = phase
        if error is not None:
            self.error = error
        self.metrics.set_engine_state(phase.value, tuple(p.value for p in Phase))
        self.metrics.ready.set(1 if phase == Phase.READY else 0)

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
            loop = asyncio.get_running_loop()
            extractor = Extractor(
                backend,
                self.settings,
                self.metrics,
                self._fetcher,
                # Called on the engine thread: hop to the loop before touching state.
                on_fatal=lambda exc: self._report_fatal(loop, exc),
            )
            await extractor.start()
        except Exception as exc:  # any load failure must surface in the probes, not vanish
            log.exception("model load failed")
            self._set_phase(Phase.FAILED, f"{type(exc).__name__}: {exc}")
            return
        self.extractor = extractor
        self.load_seconds = time.perf_counter() - started
        self.metrics.set_model(backend.info)
        if self.settings.gc_freeze:
            freeze_startup_objects()
        self._set_phase(Phase.READY)
        log.info("model ready in %.2fs: %s", self.load_seconds, backend.info.name)

    def _report_fatal(self, loop: asyncio.AbstractEventLoop, exc: BaseException) -> None:
        loop.call_soon_threadsafe(self.mark_dead, repr(exc))

    def mark_dead(self, reason: str) -> None:
        if self.phase in (Phase.READY, Phase.DRAINING):
            log.error("engine dead: %s", reason)
            self._set_phase(Phase.DEAD, reason)

    async def drain(self) -> bool:
        """SIGTERM: readiness 503 at once, refuse new work, let admitted work finish
        within ``drain_timeout_s``. True if everything finished in time."""
        if self.phase == Phase.READY:
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
        """Refuse new work, finish what was accepted, release the model."""
        if self.phase == Phase.READY:
            self._set_phase(Phase.DRAINING)
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        if self.extractor is not None:
            self.extractor.admission.start_draining()
            await self.extractor.stop()
        if self.backend is not None:
            await asyncio.to_thread(self.backend.close)
        await self._fetcher.aclose()
        self._device_checker.shutdown(wait=False, cancel_futures=True)
        gc.unfreeze()  # what the model held may now be cyclic garbage: let it be collected
        self._set_phase(Phase.STOPPED)

    async def liveness(self) -> tuple[bool, str]:
        if self.phase in (Phase.FAILED, Phase.DEAD):
            return False, f"engine {self.phase.value}: {self.error}"
        if self.extractor is None or self.phase == Phase.STOPPED:
            return True, self.phase.value
        stalled = self._stall_reason()
        if stalled is not None:
            self.mark_dead(stalled)
            return False, stalled
        if not await self._touch_device():
            return False, f"engine dead: {self.error}"
        return True, self.phase.value

    def _stall_reason(self) -> str | None:
        assert self.extractor is not None
        batcher = self.extractor.batcher
        now = time.monotonic()
        if not batcher.running and self.phase == Phase.READY:
            return "batcher loop is not running"
        busy_since = batcher.busy_since_monotonic
        if busy_since is not None:
            if now - busy_since > self.settings.engine_stall_timeout_s:
                return f"a batch has run for {now - busy_since:.0f}s"
        elif batcher.running and now - batcher.last_heartbeat_monotonic > HEARTBEAT_STALE_S:
            return f"batcher loop silent for {now - batcher.last_heartbeat_monotonic:.0f}s"
        return None

    async def _touch_device(self) -> bool:
        """A tiny device round trip (CUDA only); one at a time, bounded wait. False only
        when the device answered with an error."""
        if self.backend is None:
            return True
        if self._device_check is None or self._device_check.done():
            loop = asyncio.get_running_loop()
            self._device_check = loop.run_in_executor(
                self._device_checker, self.backend.check_device
            )
        try:
            await asyncio.wait_for(asyncio.shield(self._device_check), DEVICE_CHECK_TIMEOUT_S)
        except TimeoutError:
            return True  # busy, not dead: the stall limit decides about long batches
        except DeviceFatalError as exc:
            self.mark_dead(f"device check failed: {exc}")
            return False
        except Exception as exc:
            # The backend classifies: anything but DeviceFatalError is transient (say, no
            # memory for the probe's one element while a batch is being split), and
            # restarting the pod for it would drop every request in flight.
            log.warning("device check failed, treated as transient: %r", exc)
            return True
        return True

    async def readiness(self) -> tuple[bool, str]:
        live, detail = await self.liveness()
        if not live:
            return False, detail
        return self.phase == Phase.READY, self.phase.value
