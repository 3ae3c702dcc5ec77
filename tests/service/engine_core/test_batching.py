"""MicroBatcher on a real event loop with fake run_batch functions (no model).

Timings are generous upper bounds so the suite stays reliable on a loaded CI machine, while
each test still finishes in well under a second.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from service.engine_core.batching import (
    BatcherClosedError,
    MicroBatcher,
    NullObserver,
)

T = TypeVar("T")
Factory = Callable[..., Awaitable[MicroBatcher[Any, Any]]]


class FakeEngine:
    """A run_batch that records its batches and threads, optionally blocking on a gate."""

    def __init__(
        self,
        fn: Callable[[int], Any] = lambda x: x * 10,
        *,
        blocked: bool = False,
        delay_s: float = 0.0,
    ) -> None:
        self.fn = fn
        self.delay_s = delay_s
        self.batches: list[list[int]] = []
        self.threads: list[threading.Thread] = []
        self.started = threading.Event()  # set when a batch enters run_batch
        self.gate = threading.Event()
        if not blocked:
            self.gate.set()
        self._active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[Any]:
        with self._lock:
            self._active += 1
            self.max_active = max(self.max_active, self._active)
            self.batches.append(list(items))
            self.threads.append(threading.current_thread())
        self.started.set()
        try:
            # Bounded, so a failing test cannot leave the worker thread stuck forever.
            self.gate.wait(timeout=5)
            if self.delay_s:
                time.sleep(self.delay_s)
            return [self.fn(x) for x in items]
        finally:
            with self._lock:
                self._active -= 1

    async def wait_started(self) -> None:
        assert await asyncio.to_thread(self.started.wait, 2), "run_batch never started"


class RecordingObserver:
    def __init__(self) -> None:
        self.depths: list[int] = []
        self.waits: list[float] = []
        self.runs: list[tuple[int, float]] = []
        self.classes: list[tuple[dict[Any, int], dict[Any, int]]] = []

    def queue_depth(self, depth: int) -> None:
        self.depths.append(depth)

    def queue_wait(self, seconds: float) -> None:
        self.waits.append(seconds)

    def batch_run(self, size: int, seconds: float) -> None:
        self.runs.append((size, seconds))

    def scheduled(self, waiting: Any, running: Any) -> None:
        self.classes.append((dict(waiting), dict(running)))


async def occupy(batcher: Any, engine: FakeEngine, queued: int) -> list[asyncio.Task[Any]]:
    """One item inside the (blocked) engine and ``queued`` more waiting behind it."""
    tasks = [asyncio.create_task(batcher.submit(0))]
    await engine.wait_started()
    tasks += [asyncio.create_task(batcher.submit(i)) for i in range(1, queued + 1)]
    await settle()
    return tasks


@pytest.fixture
async def make_batcher() -> AsyncIterator[Factory]:
    created: list[MicroBatcher[Any, Any]] = []

    async def factory(run_batch: Callable[[list[Any]], list[Any]], **kwargs: Any) -> Any:
        options: dict[str, Any] = {"max_batch_size": 8, "max_wait_ms": 5}
        options.update(kwargs)
        batcher: MicroBatcher[Any, Any] = MicroBatcher(run_batch, **options)
        created.append(batcher)
        await batcher.start()
        return batcher

    yield factory
    for batcher in created:
        await batcher.stop(timeout_s=1.0)


async def within(awaitable: Awaitable[T], seconds: float = 2.0) -> T:
    """Bound a wait on the batcher, so a broken batcher fails the test instead of hanging it."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def gather(*awaitables: Awaitable[Any], return_exceptions: bool = False) -> list[Any]:
    return await within(asyncio.gather(*awaitables, return_exceptions=return_exceptions))


async def settle() -> None:
    """Let freshly created submit tasks run up to their await (i.e. be enqueued)."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_size_trigger_forms_one_full_batch(make_batcher: Factory) -> None:
    engine = FakeEngine()
    batcher = await make_batcher(engine, max_batch_size=4, max_wait_ms=10_000)
    t0 = time.monotonic()
    async with asyncio.timeout(1):
        results = await gather(*(batcher.submit(i) for i in range(4)))
    assert time.monotonic() - t0 < 0.5
    assert results == [0, 10, 20, 30]
    assert engine.batches == [[0, 1, 2, 3]]


async def test_time_trigger_flushes_partial_batch_after_max_wait(make_batcher: Factory) -> None:
    engine = FakeEngine()
    batcher = await make_batcher(engine, max_batch_size=64, max_wait_ms=50)
    t0 = time.monotonic()
    results = await gather(*(batcher.submit(i) for i in range(3)))
    elapsed = time.monotonic() - t0
    assert results == [0, 10, 20]
    assert engine.batches == [[0, 1, 2]]
    assert 0.045 <= elapsed < 1.0


async def test_max_wait_zero_takes_only_what_is_queued(make_batcher: Factory) -> None:
    engine = FakeEngine()
    batcher = await make_batcher(engine, max_batch_size=64, max_wait_ms=0)
    t0 = time.monotonic()
    assert await within(batcher.submit(7)) == 70
    assert time.monotonic() - t0 < 0.2
    assert engine.batches == [[7]]


async def test_results_are_routed_to_their_callers(make_batcher: Factory) -> None:
    engine = FakeEngine(delay_s=0.002)
    batcher = await make_batcher(engine, max_batch_size=8, max_wait_ms=5)
    results = await gather(*(batcher.submit(i) for i in range(50)))
    assert results == [i * 10 for i in range(50)]
    assert sorted(x for batch in engine.batches for x in batch) == list(range(50))
    assert all(1 <= len(batch) <= 8 for batch in engine.batches)
    assert len(engine.batches) < 50  # it actually batched


async def test_per_item_error_results_do_not_affect_neighbours(make_batcher: Factory) -> None:
    # Per-item failures are values the engine returns; the batcher only routes them.
    def fn(x: int) -> Any:
        return ValueError(f"bad item {x}") if x == 2 else x * 10

    batcher = await make_batcher(FakeEngine(fn), max_batch_size=4, max_wait_ms=10_000)
    results = await gather(*(batcher.submit(i) for i in range(4)))
    assert [results[0], results[1], results[3]] == [0, 10, 30]
    assert isinstance(results[2], ValueError)
    assert str(results[2]) == "bad item 2"


async def test_raising_run_batch_fails_only_that_batch(make_batcher: Factory) -> None:
    calls: list[list[int]] = []

    def run_batch(items: list[int]) -> list[int]:
        calls.append(items)
        if 13 in items:
            raise OSError("device lost")
        return [x + 1 for x in items]

    batcher = await make_batcher(run_batch, max_batch_size=3, max_wait_ms=10_000)
    outcomes = await gather(*map(batcher.submit, (1, 13, 2)), return_exceptions=True)
    assert all(isinstance(o, OSError) and str(o) == "device lost" for o in outcomes)
    # The loop survived: later work is served normally.
    assert await gather(*(batcher.submit(x) for x in (4, 5, 6))) == [5, 6, 7]
    assert calls == [[1, 13, 2], [4, 5, 6]]
    assert batcher.running


async def test_wrong_result_count_fails_the_batch_and_loop_continues(
    make_batcher: Factory,
) -> None:
    calls = 0

    def run_batch(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        return [] if calls == 1 else [x * 2 for x in items]

    batcher = await make_batcher(run_batch, max_batch_size=2, max_wait_ms=10_000)
    outcomes = await gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    for outcome in outcomes:
        assert isinstance(outcome, RuntimeError)
        assert "returned 0 results for 2 items" in str(outcome)
    assert await gather(batcher.submit(3), batcher.submit(4)) == [6, 8]


async def test_retry_after_follows_observed_drain_rate(make_batcher: Factory) -> None:
    # Each single-item batch takes ~50 ms, i.e. ~20 items/s; a full queue of 100 plus the
    # one in flight should drain in ~5 s.
    engine = FakeEngine(delay_s=0.05)
    batcher = await make_batcher(engine, max_batch_size=1, max_wait_ms=0)
    assert batcher.retry_after_s() == 1.0  # no drain history yet
    for i in range(3):
        await within(batcher.submit(i))
    engine.gate.clear()
    engine.started.clear()
    try:
        tasks = await occupy(batcher, engine, queued=100)  # one in flight, 100 behind it
        assert batcher.queue_depth == 100
        retry_after_s = batcher.retry_after_s()
    finally:
        engine.gate.set()
        for task in tasks:
            task.cancel()  # no need to wait 5 s for the backlog
    assert 3.0 <= retry_after_s <= 6.0
    assert retry_after_s == int(retry_after_s)


async def test_cancelled_callers_are_skipped(make_batcher: Factory) -> None:
    engine = FakeEngine(blocked=True)
    batcher = await make_batcher(engine, max_batch_size=4, max_wait_ms=0)
    try:
        first = asyncio.create_task(batcher.submit(0))
        await engine.wait_started()
        gone = asyncio.create_task(batcher.submit(1))
        kept = asyncio.create_task(batcher.submit(2))
        await settle()
        gone.cancel()
        await settle()
    finally:
        engine.gate.set()
    async with asyncio.timeout(1):
        assert await first == 0
        assert await kept == 20
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert engine.batches == [[0], [2]]


async def test_run_batch_runs_on_one_dedicated_thread(make_batcher: Factory) -> None:
    engine = FakeEngine(delay_s=0.001)
    batcher = await make_batcher(engine, max_batch_size=2, max_wait_ms=0, name="model")
    for _ in range(3):
        await gather(*(batcher.submit(i) for i in range(5)))
    assert len(engine.threads) >= 6
    idents = {t.ident for t in engine.threads}
    assert len(idents) == 1
    assert idents != {threading.get_ident()}  # not the event loop's thread
    assert engine.threads[0].name.startswith("model")
    assert engine.max_active == 1  # never two model calls at once


async def test_stop_drains_accepted_work_then_refuses(make_batcher: Factory) -> None:
    engine = FakeEngine(blocked=True)
    batcher = await make_batcher(engine, max_batch_size=2, max_wait_ms=0)
    try:
        tasks = await occupy(batcher, engine, queued=4)
        assert batcher.queue_depth == 4  # the stop sentinel lands behind all of them
        stopping = asyncio.create_task(batcher.stop())
        await settle()
        assert not batcher.running
        with pytest.raises(BatcherClosedError):
            await batcher.submit(99)
        assert not stopping.done()  # still waiting for accepted work
    finally:
        engine.gate.set()
    async with asyncio.timeout(1):
        await stopping
    assert [t.result() for t in tasks] == [i * 10 for i in range(5)]
    await batcher.stop()  # idempotent
    with pytest.raises(BatcherClosedError):
        await batcher.submit(100)
    with pytest.raises(RuntimeError, match="cannot be restarted"):
        await batcher.start()


async def test_stop_timeout_fails_unfinished_work_loudly(make_batcher: Factory) -> None:
    engine = FakeEngine(blocked=True)
    batcher = await make_batcher(engine, max_batch_size=1, max_wait_ms=0)
    try:
        tasks = await occupy(batcher, engine, queued=2)
        t0 = time.monotonic()
        await batcher.stop(timeout_s=0.05)
        assert time.monotonic() - t0 < 0.5
    finally:
        engine.gate.set()
    outcomes = await gather(*tasks, return_exceptions=True)
    assert all(isinstance(o, BatcherClosedError) for o in outcomes)


async def test_submit_before_start_is_refused() -> None:
    batcher: MicroBatcher[int, int] = MicroBatcher(FakeEngine(), max_batch_size=1, max_wait_ms=0)
    assert not batcher.running
    with pytest.raises(BatcherClosedError):
        await batcher.submit(1)
    await batcher.stop()  # stopping a never-started batcher is a no-op


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_wait_ms": -1}, "max_wait_ms"),
    ],
)
def test_invalid_configuration_is_rejected(kwargs: dict[str, Any], message: str) -> None:
    options: dict[str, Any] = {"max_batch_size": 1, "max_wait_ms": 0}
    options.update(kwargs)
    with pytest.raises(ValueError, match=message):
        MicroBatcher(FakeEngine(), **options)


async def test_observer_receives_sane_values(make_batcher: Factory) -> None:
    observer = RecordingObserver()
    engine = FakeEngine(delay_s=0.01)
    batcher = await make_batcher(engine, max_batch_size=16, max_wait_ms=20, observer=observer)
    await gather(*(batcher.submit(i) for i in range(3)))
    assert len(observer.waits) == 3
    assert all(0.015 <= w < 1.0 for w in observer.waits)  # waited for the 20 ms window
    assert len(observer.runs) == 1
    size, seconds = observer.runs[0]
    assert size == 3
    assert 0.009 <= seconds < 1.0
    assert max(observer.depths) == 3  # reported after each put
    assert observer.depths[-1] == 0  # reported after the batch was formed


async def test_broken_observer_does_not_break_batching(make_batcher: Factory) -> None:
    class Broken(NullObserver):
        def batch_run(self, size: int, seconds: float) -> None:
            raise ZeroDivisionError("metrics bug")

    batcher = await make_batcher(FakeEngine(), observer=Broken(), max_wait_ms=0)
    assert await within(batcher.submit(1)) == 10
    assert await within(batcher.submit(2)) == 20


async def test_heartbeat_advances_while_idle(make_batcher: Factory) -> None:
    batcher = await make_batcher(FakeEngine(), idle_poll_s=0.02)
    seen = {batcher.last_heartbeat_monotonic}
    for _ in range(5):
        await asyncio.sleep(0.03)
        seen.add(batcher.last_heartbeat_monotonic)
    assert len(seen) >= 4
    assert time.monotonic() - batcher.last_heartbeat_monotonic < 0.5


async def test_timed_results_carry_the_wait_the_observer_saw(make_batcher: Factory) -> None:
    observer = RecordingObserver()
    batcher = await make_batcher(
        FakeEngine(delay_s=0.01), max_batch_size=4, max_wait_ms=20, observer=observer
    )
    timed = await gather(*(batcher.submit_timed(i) for i in range(3)))
    assert [t.result for t in timed] == [0, 10, 20]
    assert sorted(t.queued_s for t in timed) == pytest.approx(sorted(observer.waits))
    assert {t.batch_size for t in timed} == {3}
    assert all(t.enqueued_at <= t.started_at < t.finished_at for t in timed)
    ((size, seconds),) = observer.runs
    assert size == 3
    assert seconds == pytest.approx(timed[0].finished_at - timed[0].started_at, abs=0.005)
