"""The scheduler around one backend, in the process that holds the backend.

:class:`InProcessEngine` is the engine core's heart: the micro-batcher queues images and
runs each batch on its one engine thread (halving a batch on device out-of-memory), the
result cache answers repeated images, and the liveness checks tell a wedged or dead
device. The engine core process (:mod:`service.engine_core.main`) puts it behind IPC;
tests and ``extract --local`` use it directly, as the :class:`service.backend.Engine` of
an in-process service. It knows nothing of HTTP or of IPC.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from PIL import Image

from fashion_florence_client.protocol import Priority
from service.backend import (
    DeviceFatalError,
    DeviceOutOfMemoryError,
    InferenceBackend,
    ItemFailure,
    ItemOutcome,
    ModelInfo,
    PreparedImage,
    StepRunner,
    TimedOutcome,
)
from service.engine_core.batching import MicroBatcher
from service.engine_core.cache import CacheKey, ResultCache
from service.engine_core.iteration import IterationScheduler
from service.settings import Settings
from service.telemetry.metrics import ServiceMetrics

log = logging.getLogger(__name__)

#: The batcher loop ticks at least every second while idle; this much silence with no
#: batch running means the event loop itself is wedged.
HEARTBEAT_STALE_S: Final = 30.0
#: A device round trip slower than this is "busy", not dead: the engine thread may hold
#: the device with a long batch. Only a DeviceFatalError from the device check marks the
#: engine dead.
DEVICE_CHECK_TIMEOUT_S: Final = 2.0


def run_splitting(
    backend: InferenceBackend,
    images: Sequence[PreparedImage],
    on_split: Callable[[], object] = lambda: None,
) -> list[ItemOutcome]:
    """Run a batch; on device OOM, retry its halves, down to single images (an image that
    does not fit even alone is an ``OUT_OF_MEMORY`` outcome). ``on_split`` is told of each
    split. Shared by the engine core's batcher and the batch jobs (``service.jobs``)."""
    try:
        return backend.run_batch(images)
    except DeviceOutOfMemoryError:
        pass
    # Recover outside the except block: a live traceback would pin the failed batch's
    # tensors through its frames and the retry would run out of memory again.
    on_split()
    if len(images) == 1:
        detail = "the image did not fit in device memory even alone"
        return [ItemOutcome("", 0, failure=ItemFailure.OUT_OF_MEMORY, error_detail=detail)]
    middle = len(images) // 2
    return run_splitting(backend, images[:middle], on_split) + run_splitting(
        backend, images[middle:], on_split
    )


class InProcessEngine:
    """Implements :class:`service.backend.Engine` over a backend in this process."""

    def __init__(self, backend: InferenceBackend, settings: Settings, metrics: ServiceMetrics):
        self.backend = backend
        self._settings = settings
        self._metrics = metrics
        self._dead: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.cache: ResultCache[ItemOutcome] | None = None
        if settings.cache_enabled:
            self.cache = ResultCache(
                settings.cache_max_entries, settings.cache_max_bytes, metrics.cache
            )
        self._device_checker = ThreadPoolExecutor(1, thread_name_prefix="device-check")
        self._device_check: asyncio.Future[None] | None = None
        self.batcher: MicroBatcher[PreparedImage, ItemOutcome] | IterationScheduler
        runner = _step_runner(backend) if settings.scheduler == "iteration" else None
        if runner is not None:
            self.batcher = IterationScheduler(
                runner,
                max_rows=settings.max_running_rows,
                encoder_budget=settings.encoder_budget,
                batch_min_share=settings.batch_min_share,
                join_below_rows=settings.join_below_rows,
                join_max_wait_s=settings.join_max_wait_ms / 1000,
                observer=metrics,
                on_error=self._on_step_error,
            )
            return
        self.batcher = MicroBatcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            # The batcher runs one batch at a time and forms the next only once the engine
            # is free, so a zero wait is exactly "dispatch at once when idle".
            max_wait_ms=settings.max_wait_ms if settings.batch_dispatch == "wait" else 0.0,
            observer=metrics,
            batch_min_share=settings.batch_min_share,
        )

    @property
    def info(self) -> ModelInfo:
        return self.backend.info

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.batcher.start()

    def prepare(self, image: Image.Image) -> PreparedImage:
        return self.backend.preprocess(image)

    async def lookup(self, key: str) -> ItemOutcome | None:
        if self.cache is None:
            return None
        return self.cache.get(CacheKey(key, self.info.revision))

    async def infer(
        self,
        prepared: PreparedImage,
        *,
        deadline: float,
        key: str | None,
        priority: Priority = Priority.INTERACTIVE,
    ) -> TimedOutcome:
        timed = await self.batcher.submit_timed(prepared, deadline=deadline, priority=priority)
        outcome = timed.result
        if self.cache is not None and key is not None and outcome.ok:
            self.cache.put(CacheKey(key, self.info.revision), outcome, _estimated_bytes(outcome))
        return TimedOutcome(
            outcome, timed.enqueued_at, timed.started_at, timed.finished_at, timed.batch_size
        )

    def retry_after_s(self) -> float:
        return self.batcher.retry_after_s()

    def restarting(self) -> bool:
        return False  # nothing restarts an engine in this process: dead is dead

    def _run_batch(self, images: list[PreparedImage]) -> list[ItemOutcome]:
        # Runs on the batcher's single engine thread.
        try:
            return run_splitting(self.backend, images, on_split=self._metrics.oom_splits.inc)
        except DeviceFatalError as exc:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._mark_dead, repr(exc))
            raise

    def _on_step_error(self, exc: BaseException) -> None:
        if isinstance(exc, DeviceFatalError):
            self._mark_dead(repr(exc))

    def _mark_dead(self, reason: str) -> None:
        if self._dead is None:
            log.error("engine dead: %s", reason)
            self._dead = reason

    async def liveness(self) -> str | None:
        if self._dead is None:
            stalled = self._stall_reason()
            if stalled is not None:
                self._mark_dead(stalled)
            else:
                await self._touch_device()
        return self._dead

    def _stall_reason(self) -> str | None:
        batcher = self.batcher
        now = time.monotonic()
        busy_since = batcher.busy_since_monotonic
        if busy_since is not None:
            if now - busy_since > self._settings.engine_stall_timeout_s:
                return f"a batch has run for {now - busy_since:.0f}s"
        elif batcher.running and now - batcher.last_heartbeat_monotonic > HEARTBEAT_STALE_S:
            return f"batcher loop silent for {now - batcher.last_heartbeat_monotonic:.0f}s"
        return None

    async def _touch_device(self) -> None:
        """A tiny device round trip (CUDA only); one at a time, bounded wait. Marks the
        engine dead only when the device answered with DeviceFatalError."""
        if self._device_check is None or self._device_check.done():
            loop = asyncio.get_running_loop()
            self._device_check = loop.run_in_executor(
                self._device_checker, self.backend.check_device
            )
        try:
            await asyncio.wait_for(asyncio.shield(self._device_check), DEVICE_CHECK_TIMEOUT_S)
        except TimeoutError:
            return  # busy, not dead: the stall limit decides about long batches
        except DeviceFatalError as exc:
            self._mark_dead(f"device check failed: {exc}")
        except Exception as exc:
            # The backend classifies: anything but DeviceFatalError is transient (say, no
            # memory for the probe's one element while a batch is being split), and
            # restarting the pod for it would drop every request in flight.
            log.warning("device check failed, treated as transient: %r", exc)

    async def close(self) -> None:
        """Finish everything accepted, then release the backend."""
        await self.batcher.stop()
        self._device_checker.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.backend.close)


def _step_runner(backend: InferenceBackend) -> StepRunner | None:
    """The backend's running set for the iteration scheduler, or None (it has none, say a
    fake or a model without jump-forward decoding: the static scheduler serves then)."""
    make = getattr(backend, "step_runner", None)
    runner: StepRunner | None = make() if make is not None else None
    if runner is None:
        log.warning("FF_SCHEDULER=iteration: the backend cannot step; using static batching")
    return runner


def _estimated_bytes(outcome: ItemOutcome) -> int:
    """What a cached answer costs in memory, roughly: its JSON is a fair proxy."""
    size = len(outcome.text)
    if outcome.attributes is not None:
        size += len(outcome.attributes.model_dump_json())
    if outcome.confidence is not None:
        size += len(outcome.confidence.model_dump_json())
    return 2 * size  # Python objects take about twice their JSON
