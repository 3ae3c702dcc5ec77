"""Iteration-level scheduling: images join and leave the running decode at every step.

Each iteration, on the one engine thread:

1. rows whose caller left or whose deadline passed leave the running set;
2. if there is room (``max_rows``), work waiting and the join gate opens, a micro-batch of
   arrivals (at most ``encoder_budget``, interactive first with batch work's share,
   :mod:`.lanes`) is encoded and joins;
3. one decoder step runs for every running row; rows it finishes are answered at once.

Out of device memory while encoding, the arrivals go back to the head of their lanes and
the encoder budget halves; while stepping, the newest rows go back (to be run again from
the start) and the row limit halves. Both grow back after a run of clean iterations. An
image is failed ``OUT_OF_MEMORY`` only if it does not fit even alone, as with static
batching. It has the :class:`service.engine_core.batching.MicroBatcher`'s interface, so
the engine core uses either. No HTTP, model or metrics library is known here.

The join gate. Every join stalls every running row for the arrivals' encoders, and an
encoder call has a large fixed cost on a CPU (one image costs about a third of sixteen),
so joining each arrival at the next step spends the engine's time on many small encoder
calls and makes every row wait for all of them. So, while more than ``join_below_rows``
rows run:

* with no interactive row running, an interactive arrival joins at once, alone (it should
  not queue behind a backfill's rows, and one small encoder call is cheap beside them);
  other arrivals join when a full micro-batch (``encoder_budget``) waits or the
  longest-waiting one has waited ``join_max_wait_s``;
* while an interactive row runs, only interactive arrivals join, on the same full-or-late
  rule, so the interactive rows' steps are not stretched by a backfill's encoders; batch
  work keeps its share through :class:`.lanes.Lanes` and joins freely once the running set
  thins.

With the running set at or under ``join_below_rows``, whatever waits joins (up to the
budget). ``join_below_rows=max_rows`` joins at every step, as a plain iteration scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final, Protocol

from fashion_florence_client.protocol import Priority
from service.backend import (
    DeadlineExceededError,
    DeviceOutOfMemoryError,
    ItemFailure,
    ItemOutcome,
    PreparedImage,
    StepRunner,
)
from service.engine_core.batching import (
    Batched,
    BatcherClosedError,
    BatchObserver,
    NullObserver,
    _Pending,
)
from service.engine_core.lanes import Lanes

log = logging.getLogger(__name__)

#: Clean iterations after which a budget shrunk by out-of-memory doubles back.
_REGROW_AFTER: Final = 256
_DRAIN_HISTORY: Final = 64
#: The most decoder steps the engine thread runs before handing back to the loop.
_STEPS_PER_HAND_BACK: Final = 16


class IterationObserver(BatchObserver, Protocol):
    def iteration(self, seconds: float, encoded: int, running: int) -> None: ...


class _NullIterationObserver(NullObserver):
    def iteration(self, seconds: float, encoded: int, running: int) -> None: ...


@dataclass(slots=True)
class _Work:
    """What one iteration does on the engine thread, and what came of it."""

    leaving: list[int]
    joining: list[_Pending[PreparedImage, ItemOutcome]]
    tags: list[int]
    joined: bool = False
    stepped: bool = False
    finished: list[tuple[int, ItemOutcome]] = field(default_factory=list)
    error: Exception | None = None


class IterationScheduler:
    def __init__(
        self,
        runner: StepRunner,
        *,
        max_rows: int,
        encoder_budget: int,
        batch_min_share: float,
        join_below_rows: int | None = None,
        join_max_wait_s: float = 0.0,
        observer: IterationObserver | None = None,
        on_error: Callable[[BaseException], None] = lambda _exc: None,
        idle_poll_s: float = 1.0,
    ) -> None:
        if max_rows < 1 or encoder_budget < 1:
            raise ValueError("max_rows and encoder_budget must be >= 1")
        self._runner = runner
        self._max_rows = self._rows_limit = max_rows
        self._budget = self._encoder_budget = encoder_budget
        self._join_below = max_rows if join_below_rows is None else join_below_rows
        self._join_wait_s = join_max_wait_s
        self._observer: IterationObserver = observer or _NullIterationObserver()
        self._on_error = on_error
        self.idle_poll_s = idle_poll_s
        self._lanes: Lanes[_Pending[PreparedImage, ItemOutcome]] = Lanes(batch_min_share)
        self._running: dict[int, _Pending[PreparedImage, ItemOutcome]] = {}
        self._joined_at: dict[int, tuple[float, int]] = {}  # tag -> (iteration start, rows)
        self._tags = itertools.count()
        self._executor: ThreadPoolExecutor | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._accepting = False
        self._heartbeat = time.monotonic()
        self._busy_since: float | None = None
        self._clean = 0
        self._done: deque[tuple[int, float]] = deque(maxlen=_DRAIN_HISTORY)

    # The MicroBatcher's interface, as the engine core uses it
    @property
    def queue_depth(self) -> int:
        return len(self._lanes)

    @property
    def running(self) -> bool:
        return self._accepting and self._loop_task is not None and not self._loop_task.done()

    @property
    def rows_running(self) -> int:
        return len(self._running)

    @property
    def last_heartbeat_monotonic(self) -> float:
        return self._heartbeat

    @property
    def busy_since_monotonic(self) -> float | None:
        return self._busy_since

    async def start(self) -> None:
        if self._loop_task is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="engine")
            self._accepting = True
            self._loop_task = asyncio.create_task(self._loop(), name="iteration-scheduler")

    async def stop(self, timeout_s: float | None = None) -> None:
        """Refuse new work, finish everything accepted (or fail it past ``timeout_s``)."""
        self._accepting = False
        self._lanes.close()
        task = self._loop_task
        if task is None:
            return
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit_timed(
        self,
        item: PreparedImage,
        *,
        deadline: float | None = None,
        priority: Priority = Priority.INTERACTIVE,
    ) -> Batched[ItemOutcome]:
        if not self.running:
            raise BatcherClosedError("the iteration scheduler is not running")
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise DeadlineExceededError("waiting for admission")
        future: asyncio.Future[Batched[ItemOutcome]] = asyncio.get_running_loop().create_future()
        self._lanes.put(_Pending(item, future, now, deadline, priority), priority)
        self._report()
        return await future

    def retry_after_s(self) -> float:
        """Seconds until the backlog drains at the recent rate of answered rows."""
        if len(self._done) < 2:
            return 1.0
        span = self._done[-1][1] - self._done[0][1]
        answered = sum(n for n, _ in list(self._done)[1:])
        if span <= 0 or answered == 0:
            return 1.0
        backlog = len(self._lanes) + len(self._running)
        return float(min(60.0, max(1.0, math.ceil(backlog / (answered / span)))))

    # The loop
    async def _loop(self) -> None:
        try:
            while True:
                self._heartbeat = time.monotonic()
                if not self._running and not len(self._lanes):
                    if self._lanes.closed:
                        return
                    await self._lanes.wait(self.idle_poll_s)
                    continue
                await self._iterate()
        finally:
            closed = BatcherClosedError("the iteration scheduler stopped")
            for pending in [*self._lanes.drain(), *self._running.values()]:
                if not pending.future.done():
                    pending.future.set_exception(closed)
            self._running.clear()

    async def _iterate(self) -> None:
        assert self._executor is not None
        now = time.monotonic()
        work = _Work(self._leaving(now), [], [])
        size = self._join_size(now, list(self._running.values()))
        if size > 0:
            work.joining = self._lanes.take(size, self._wanted)
            work.tags = [next(self._tags) for _ in work.joining]
        self._busy_since = started = time.monotonic()
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._work, work)
        finally:
            self._busy_since = None
        self._settle(work, started)
        self._notify(
            self._observer.iteration, time.monotonic() - started, len(work.tags) if work.joined else 0,
            len(self._running),
        )  # fmt: skip
        self._report()

    def _join_size(self, now: float, running: list[_Pending[PreparedImage, ItemOutcome]]) -> int:
        """How many waiting arrivals to encode now, with ``running`` rows: the join gate
        (above); 0 = none. Also called on the engine thread: it only reads the lanes."""
        size = min(self._rows_limit - len(running), self._budget)
        if size <= 0 or not len(self._lanes):
            return 0
        if len(running) <= self._join_below:
            return size
        interactive = self._lanes.waiting(Priority.INTERACTIVE)
        if not any(pending.priority is Priority.INTERACTIVE for pending in running):
            if interactive:
                return min(size, interactive)
            return size if self._due(now) else 0
        return min(size, interactive) if interactive and self._due(now) else 0

    def _due(self, now: float) -> bool:
        """A full micro-batch waits, or the longest-waiting arrival has waited long enough."""
        if len(self._lanes) >= self._budget:
            return True
        oldest = self._lanes.oldest(lambda pending: pending.enqueued_at)
        return oldest is not None and now - oldest >= self._join_wait_s

    def _leaving(self, now: float) -> list[int]:
        """Running rows whose caller left or whose deadline passed: failed here, dropped
        on the engine thread before the step."""
        leaving = []
        for tag, pending in list(self._running.items()):
            if pending.future.done():
                self._notify(self._observer.cancelled_skip)
            elif pending.expired(now):
                pending.future.set_exception(DeadlineExceededError("while decoding"))
                self._notify(self._observer.deadline_drop, "decoding")
            else:
                continue
            del self._running[tag]
            self._joined_at.pop(tag, None)
            leaving.append(tag)
        return leaving

    def _wanted(self, pending: _Pending[PreparedImage, ItemOutcome]) -> bool:
        if pending.future.done():
            self._notify(self._observer.cancelled_skip)
            return False
        if pending.expired(time.monotonic()):
            pending.future.set_exception(DeadlineExceededError("queued"))
            self._notify(self._observer.deadline_drop, "queued")
            return False
        return True

    def _work(self, work: _Work) -> None:
        """On the engine thread: leave, join, step. Exceptions are kept for the loop."""
        try:
            self._runner.leave(work.leaving)
            if work.joining:
                try:
                    self._runner.join([p.item for p in work.joining], work.tags)
                    work.joined = True
                except DeviceOutOfMemoryError:
                    pass  # handled on the loop: nothing joined
            steps = 0
            while self._runner.running and self._step_again(work, steps):
                try:
                    work.finished = self._runner.step()
                except DeviceOutOfMemoryError:
                    break  # every row as it was; the loop shrinks the set if none stepped
                work.stepped = True
                steps += 1
        except Exception as exc:
            work.error = exc

    def _step_again(self, work: _Work, steps: int) -> bool:
        """On the engine thread: whether to run another step before handing back to the
        loop. Each hand-back costs two thread switches (and, on a busy CPU, waits for the
        GIL), so steps that finish no row and change nothing the loop acts on run back to
        back, up to ``_STEPS_PER_HAND_BACK``: the hand-back comes when a row finishes, a
        caller leaves or a deadline passes, or the join gate would open."""
        if steps == 0:
            return True
        if work.finished or steps >= _STEPS_PER_HAND_BACK:
            return False
        now = time.monotonic()
        rows = [*self._running.values(), *(work.joining if work.joined else [])]
        if any(pending.future.done() or pending.expired(now) for pending in rows):
            return False
        return self._join_size(now, rows) == 0

    def _settle(self, work: _Work, started: float) -> None:
        if work.error is not None:
            self._fail_all(work, work.error)
            return
        if work.joined:
            rows = len(self._running) + len(work.tags)
            for tag, pending in zip(work.tags, work.joining, strict=True):
                self._running[tag] = pending
                self._joined_at[tag] = (started, rows)
                self._notify(self._observer.queue_wait, started - pending.enqueued_at)
        elif work.joining:
            self._encoder_oom(work)
        finished_at = time.monotonic()
        for tag, outcome in work.finished:
            found = self._running.get(tag)
            if found is not None:
                del self._running[tag]
            joined, rows = self._joined_at.pop(tag, (started, 1))
            if found is not None and not found.future.done():
                timed = Batched(outcome, found.enqueued_at, joined, finished_at, rows)
                found.future.set_result(timed)
        if work.finished:
            self._done.append((len(work.finished), finished_at))
        if self._running and not work.stepped:
            self._step_oom()
        else:
            self._regrow()

    def _encoder_oom(self, work: _Work) -> None:
        if len(work.joining) == 1 and not self._running:
            # It does not fit even alone on an idle device: the one failure OOM may cause.
            detail = "the image did not fit in device memory even alone"
            outcome = ItemOutcome("", 0, failure=ItemFailure.OUT_OF_MEMORY, error_detail=detail)
            now = time.monotonic()
            pending = work.joining[0]
            if not pending.future.done():
                pending.future.set_result(Batched(outcome, pending.enqueued_at, now, now, 1))
            return
        self._budget = max(1, len(work.joining) // 2)
        self._clean = 0
        log.warning(
            "out of memory encoding %d images: budget now %d", len(work.joining), self._budget
        )
        for pending in reversed(work.joining):
            self._lanes.put_front(pending, pending.priority)

    def _step_oom(self) -> None:
        """The step did not fit: the newest rows go back to wait, to run again later."""
        self._rows_limit = max(1, len(self._running) // 2)
        self._clean = 0
        newest = sorted(self._running, reverse=True)[: len(self._running) - self._rows_limit]
        log.warning(
            "out of memory stepping %d rows: limit now %d", len(self._running), self._rows_limit
        )
        self._runner.leave(newest)  # the engine thread is idle between iterations
        for tag in newest:
            pending = self._running.pop(tag)
            self._joined_at.pop(tag, None)
            self._lanes.put_front(pending, pending.priority)

    def _regrow(self) -> None:
        self._clean += 1
        if self._clean >= _REGROW_AFTER:
            self._clean = 0
            self._budget = min(self._encoder_budget, 2 * self._budget)
            self._rows_limit = min(self._max_rows, 2 * self._rows_limit)

    def _fail_all(self, work: _Work, error: Exception) -> None:
        log.error("iteration failed; failing %d rows", len(self._running), exc_info=error)
        self._on_error(error)
        for pending in [*work.joining, *self._running.values()]:
            if not pending.future.done():
                pending.future.set_exception(error)
        self._runner.reset()
        self._running.clear()
        self._joined_at.clear()

    def _report(self) -> None:
        self._notify(self._observer.queue_depth, len(self._lanes))
        running = dict.fromkeys(Priority, 0)
        for pending in self._running.values():
            running[pending.priority] += 1
        waiting = {p: self._lanes.waiting(p) for p in Priority}
        self._notify(self._observer.scheduled, waiting, running)

    def _notify(self, method: Callable[..., None], *args: object) -> None:
        try:
            method(*args)
        except Exception:
            log.exception("iteration scheduler: observer %s failed", method)
