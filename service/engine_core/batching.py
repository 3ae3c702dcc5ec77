"""Async micro-batcher: many concurrent requests in, one model batch at a time out.

It runs in the engine core process (and in process for tests and ``extract --local``).

One collector task groups queued requests into batches (by size, or by a deadline from the
first item's arrival) and runs each on a single dedicated worker thread: model calls are
serialized and never block the event loop. Requests wait in one lane per scheduling class
(:mod:`.lanes`): interactive images join a batch first, batch images keep a guaranteed
share of it. No HTTP, model or metrics library is known here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from fashion_florence_client.protocol import Priority
from service.backend import DeadlineExceededError, EngineClosedError
from service.engine_core.lanes import Lanes

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

logger = logging.getLogger(__name__)

__all__ = ["Batched", "BatcherClosedError", "DeadlineExceededError", "MicroBatcher"]

# Retry-After bounds: below 1 s is noise to a client; past a minute the number means nothing.
_MIN_RETRY_AFTER_S = 1.0
_MAX_RETRY_AFTER_S = 60.0
# How many recent batches the drain-rate estimate averages over.
_DRAIN_HISTORY = 32


class BatcherClosedError(EngineClosedError):
    """The batcher is not running (not started, stopping or stopped)."""


class BatchObserver(Protocol):
    """Metrics hooks, so the batcher stays free of any metrics library."""

    def queue_depth(self, depth: int) -> None: ...  # after each put and each formed batch
    def queue_wait(self, seconds: float) -> None: ...  # per item: submit() to batch start
    def batch_run(self, size: int, seconds: float) -> None: ...  # per batch: run_batch time
    def deadline_drop(self, stage: str) -> None: ...  # per expired item, never run
    def cancelled_skip(self) -> None: ...  # per item whose caller left before its batch
    # Per class: images waiting and images running, after each put and each batch's start and end.
    def scheduled(
        self, waiting: Mapping[Priority, int], running: Mapping[Priority, int]
    ) -> None: ...


class NullObserver:
    def queue_depth(self, depth: int) -> None: ...
    def queue_wait(self, seconds: float) -> None: ...
    def batch_run(self, size: int, seconds: float) -> None: ...
    def deadline_drop(self, stage: str) -> None: ...
    def cancelled_skip(self) -> None: ...
    def scheduled(
        self, waiting: Mapping[Priority, int], running: Mapping[Priority, int]
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Batched(Generic[ResultT]):
    """One item's result with the batcher's own timing of it (``time.monotonic()``): the
    numbers its observer reported too, so queue wait is measured in one place."""

    result: ResultT
    enqueued_at: float
    started_at: float  # its batch started (submitted to the worker thread)
    finished_at: float
    batch_size: int

    @property
    def queued_s(self) -> float:
        return max(0.0, self.started_at - self.enqueued_at)


@dataclass(slots=True)
class _Pending(Generic[ItemT, ResultT]):
    item: ItemT
    future: asyncio.Future[Batched[ResultT]]
    enqueued_at: float
    deadline: float | None = None  # time.monotonic(); None = no deadline
    priority: Priority = Priority.INTERACTIVE

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


class MicroBatcher(Generic[ItemT, ResultT]):
    def __init__(
        self,
        run_batch: Callable[[list[ItemT]], list[ResultT]],
        *,
        max_batch_size: int,
        max_wait_ms: float,
        observer: BatchObserver | None = None,
        name: str = "engine",
        idle_poll_s: float = 1.0,
        batch_min_share: float = 0.25,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_wait_ms < 0 or idle_poll_s <= 0:
            raise ValueError("max_wait_ms must be >= 0 and idle_poll_s > 0")
        self._run_batch = run_batch
        self._max_batch_size = max_batch_size
        self._max_wait_s = max_wait_ms / 1000.0
        self._observer: BatchObserver = observer if observer is not None else NullObserver()
        self._name = name
        # The collector never waits longer than this for a first item, so the heartbeat keeps
        # ticking while idle and a liveness probe can tell "idle" from "wedged".
        self.idle_poll_s = idle_poll_s
        self._batch_min_share = batch_min_share
        Lanes[object](batch_min_share)  # validates the share now, not at start()

        # Closing the lanes is the stop signal: the collector drains what they hold first.
        self._queue: Lanes[_Pending[ItemT, ResultT]] | None = None
        self._running: dict[Priority, int] = dict.fromkeys(Priority, 0)
        self._executor: ThreadPoolExecutor | None = None
        self._collector: asyncio.Task[None] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._accepting = False
        self._in_flight = 0
        self._busy_since: float | None = None
        self._heartbeat = time.monotonic()
        # (items, run seconds) of recent batches: the drain rate while the worker is busy,
        # which is the case whenever the queue is full and a Retry-After is needed.
        self._drain: deque[tuple[int, float]] = deque(maxlen=_DRAIN_HISTORY)

    @property
    def queue_depth(self) -> int:
        return len(self._queue) if self._queue is not None else 0

    @property
    def running(self) -> bool:
        return self._accepting and self._collector is not None and not self._collector.done()

    @property
    def last_heartbeat_monotonic(self) -> float:
        """time.monotonic() of the collector's last loop turn; ticks at least every
        ``idle_poll_s`` while idle. It stands still while a batch runs, so a stale value
        means the model call is stuck (or the event loop is), which is what liveness wants."""
        return self._heartbeat

    async def start(self) -> None:
        if self._stop_task is not None:
            raise RuntimeError("a stopped MicroBatcher cannot be restarted; create a new one")
        if self._collector is not None:
            return
        # Unbounded: admission (``service.serving.admission``) is the service's one bound on
        # how much work it holds; a second limit here could only disagree with it.
        self._queue = Lanes(self._batch_min_share)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
        self._heartbeat = time.monotonic()
        self._accepting = True
        self._collector = asyncio.create_task(self._collect_loop(), name=f"{self._name}-batcher")

    async def stop(self, timeout_s: float | None = None) -> None:
        """Refuse new work, finish all accepted work, release the thread. Idempotent.

        Work unfinished when ``timeout_s`` expires fails with BatcherClosedError, never lost.
        """
        self._accepting = False
        if self._collector is None:
            return
        if self._stop_task is None:
            self._stop_task = asyncio.create_task(self._shutdown(timeout_s))
        # Shielded so a caller cancelled mid-stop does not abandon the shutdown half-way.
        await asyncio.shield(self._stop_task)

    async def _shutdown(self, timeout_s: float | None) -> None:
        collector, queue, executor = self._collector, self._queue, self._executor
        if collector is None or queue is None or executor is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                if not collector.done():
                    queue.close()
                await asyncio.shield(collector)
            executor.shutdown(wait=True)  # the thread is idle: this returns at once
        except TimeoutError:
            logger.warning("batcher %s: stop timed out; failing unfinished work", self._name)
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
            # The worker may still be inside run_batch; do not block the loop joining it.
            executor.shutdown(wait=False, cancel_futures=True)

    @property
    def busy_since_monotonic(self) -> float | None:
        """When the running batch started (None while idle): a liveness probe compares it
        with a stall limit, since the heartbeat stands still while a batch runs."""
        return self._busy_since

    async def submit(
        self,
        item: ItemT,
        *,
        deadline: float | None = None,
        priority: Priority = Priority.INTERACTIVE,
    ) -> ResultT:
        """Queue one item and wait for its result (or its batch's exception).

        ``deadline`` (``time.monotonic()``) is checked when the batch forms and again just
        before the model runs: an expired item fails with :class:`DeadlineExceededError`
        and never reaches ``run_batch``.
        """
        return (await self.submit_timed(item, deadline=deadline, priority=priority)).result

    async def submit_timed(
        self,
        item: ItemT,
        *,
        deadline: float | None = None,
        priority: Priority = Priority.INTERACTIVE,
    ) -> Batched[ResultT]:
        """:meth:`submit`, with when the item queued, ran and in how large a batch;
        ``priority`` is its scheduling class."""
        if not self.running or self._queue is None:
            raise BatcherClosedError(f"batcher {self._name} is not running")
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise DeadlineExceededError("waiting for admission")
        future: asyncio.Future[Batched[ResultT]] = asyncio.get_running_loop().create_future()
        self._queue.put(_Pending(item, future, now, deadline, priority), priority)
        self._report_depth()
        # If our caller is cancelled, awaiting cancels `future` too; the collector sees that
        # and skips the item, so abandoned requests cost no model time.
        return await future

    def retry_after_s(self) -> float:
        """Seconds until the current backlog drains at the recently observed rate."""
        items = sum(n for n, _ in self._drain)
        seconds = sum(s for _, s in self._drain)
        if items == 0 or seconds <= 0:
            return _MIN_RETRY_AFTER_S
        backlog = self.queue_depth + self._in_flight
        estimate = math.ceil(backlog / (items / seconds))
        return float(min(_MAX_RETRY_AFTER_S, max(_MIN_RETRY_AFTER_S, estimate)))

    async def _collect_loop(self) -> None:
        queue = self._queue
        assert queue is not None
        try:
            while True:
                self._heartbeat = time.monotonic()
                batch, stop = await self._next_batch(queue)
                # Batches run one after another rather than pipelined: while the model works
                # the queue fills, and the next batch takes up to max_batch_size at once, so
                # batches grow with load instead of being frozen early at a small size.
                if batch:
                    await self._run(batch)
                if stop:
                    return
        finally:
            # Only reached with items left on cancellation (stop timeout): fail them loudly.
            _fail(queue.drain(), BatcherClosedError("batcher stopped"))

    async def _next_batch(
        self, queue: Lanes[_Pending[ItemT, ResultT]]
    ) -> tuple[list[_Pending[ItemT, ResultT]], bool]:
        """Collect one batch; the flag says the lanes were closed and are now empty."""
        while True:
            if not await queue.wait(self.idle_poll_s):
                self._heartbeat = time.monotonic()
                continue
            oldest = queue.oldest(lambda p: p.enqueued_at)
            if oldest is not None and self._max_wait_s > 0:
                # Measured from the oldest item's arrival, not from when the collector got to
                # it: an item that already waited behind a busy worker gets no extra delay.
                await queue.fill(self._max_batch_size, oldest + self._max_wait_s)
            batch = queue.take(self._max_batch_size, self._still_wanted)
            if batch or (queue.closed and not len(queue)):
                return batch, queue.closed and not len(queue)

    def _still_wanted(self, pending: _Pending[ItemT, ResultT]) -> bool:
        if pending.future.done():  # caller went away
            self._notify(self._observer.cancelled_skip)
            return False
        if pending.expired(time.monotonic()):
            self._expire(pending, "queued")
            return False
        return True

    def _report_depth(self) -> None:
        if self._queue is None:
            return
        self._notify(self._observer.queue_depth, len(self._queue))
        waiting = {p: self._queue.waiting(p) for p in Priority}
        self._notify(self._observer.scheduled, waiting, dict(self._running))

    async def _run(self, batch: list[_Pending[ItemT, ResultT]]) -> None:
        assert self._executor is not None
        assert self._queue is not None
        batch = [p for p in batch if not p.future.done()]  # callers may have left meanwhile
        for pending in batch:
            self._running[pending.priority] += 1
        self._report_depth()
        if not batch:
            return
        started = time.monotonic()
        self._busy_since = started
        for pending in batch:
            self._notify(self._observer.queue_wait, started - pending.enqueued_at)
        self._in_flight = len(batch)
        try:
            loop = asyncio.get_running_loop()
            live, outcome = await loop.run_in_executor(self._executor, self._call, batch)
        except asyncio.CancelledError:
            _fail(batch, BatcherClosedError("batcher stopped before the batch finished"))
            raise
        finally:
            self._in_flight = 0
            self._busy_since = None
            self._running = dict.fromkeys(Priority, 0)
            self._report_depth()
            elapsed = time.monotonic() - started
            self._drain.append((len(batch), elapsed))
            self._notify(self._observer.batch_run, len(batch), elapsed)
        ran = {id(pending) for pending in live}
        for pending in batch:
            if id(pending) not in ran:
                self._expire(pending, "waiting for the engine")
        if isinstance(outcome, BaseException):
            # One failing batch fails the items it ran, nothing else; the loop carries on.
            logger.error(
                "batcher %s: run_batch failed for %d items", self._name, len(live), exc_info=outcome
            )
            _fail(live, outcome)
            return
        finished = time.monotonic()
        for pending, result in zip(live, outcome, strict=True):
            if not pending.future.done():
                timed = Batched(result, pending.enqueued_at, started, finished, len(live))
                pending.future.set_result(timed)

    def _call(
        self, batch: list[_Pending[ItemT, ResultT]]
    ) -> tuple[list[_Pending[ItemT, ResultT]], list[ResultT] | Exception]:
        # Runs on the worker thread, right before the model: the last moment to drop items
        # whose deadline passed while an earlier batch ran (their futures are failed back on
        # the loop). Reading `deadline` here is safe: it never changes after submit(). The
        # exception is returned, not raised, so the loop still learns which items ran.
        now = time.monotonic()
        live = [p for p in batch if not p.expired(now)]
        try:
            results = self._run_batch([p.item for p in live]) if live else []
            # Checked here so any contract breach (wrong count, not a list at all) takes
            # the same path as a raising run_batch: fail the batch, keep going.
            if len(results) != len(live):
                raise RuntimeError(
                    f"run_batch returned {len(results)} results for {len(live)} items; "
                    "cannot tell which result belongs to which request"
                )
        except Exception as exc:
            return live, exc
        return live, results

    def _expire(self, pending: _Pending[ItemT, ResultT], stage: str) -> None:
        if not pending.future.done():
            pending.future.set_exception(DeadlineExceededError(stage))
        self._notify(self._observer.deadline_drop, stage)

    def _notify(self, method: Callable[..., None], *args: object) -> None:
        # A broken metrics hook must not take the batcher (and every request) down with it.
        try:
            method(*args)
        except Exception:
            logger.exception("batcher %s: observer %s failed", self._name, method)


def _fail(batch: list[_Pending[ItemT, ResultT]], exc: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)
