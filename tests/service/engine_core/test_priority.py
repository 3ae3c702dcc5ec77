"""Scheduling classes in the static micro-batcher and its lanes: interactive images are
taken first, batch images keep their guaranteed share (never starved), per-class counts
are reported. Real event loop, a fake run_batch (no model)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fashion_florence_client.protocol import Priority
from service.engine_core.batching import MicroBatcher
from service.engine_core.lanes import Lanes
from tests.service.engine_core.test_batching import FakeEngine, RecordingObserver

INT, B = Priority.INTERACTIVE, Priority.BATCH


def test_lanes_take_interactive_first_with_the_batch_share() -> None:
    lanes: Lanes[str] = Lanes(batch_min_share=0.25)
    for n in range(10):
        lanes.put(f"b{n}", B)
    for n in range(10):
        lanes.put(f"i{n}", INT)
    taken = lanes.take(8, lambda _item: True)
    # ceil(0.25 * 8) = 2 batch images, the other six interactive, each lane in order.
    assert sorted(taken) == ["b0", "b1", "i0", "i1", "i2", "i3", "i4", "i5"]
    assert (lanes.waiting(INT), lanes.waiting(B)) == (4, 8)


def test_lanes_fill_with_batch_work_when_interactive_runs_short() -> None:
    lanes: Lanes[str] = Lanes(batch_min_share=0.25)
    for n in range(10):
        lanes.put(f"b{n}", B)
    lanes.put("i0", INT)
    assert sorted(lanes.take(8, lambda _item: True)) == [*(f"b{n}" for n in range(7)), "i0"]


def test_lanes_drop_what_keep_refuses_and_take_the_next() -> None:
    lanes: Lanes[int] = Lanes(batch_min_share=0.5)
    for n in range(6):
        lanes.put(n, INT)
    assert lanes.take(3, lambda item: item % 2 == 0) == [0, 2, 4]
    assert len(lanes) == 1  # 5: never looked at, still waiting


def test_lanes_refuse_a_share_outside_its_range() -> None:
    with pytest.raises(ValueError, match="batch_min_share"):
        Lanes[int](0.0)
    with pytest.raises(ValueError, match="batch_min_share"):
        Lanes[int](1.5)


async def _batcher(engine: FakeEngine, **options: Any) -> MicroBatcher[int, int]:
    batcher: MicroBatcher[int, int] = MicroBatcher(engine, max_wait_ms=0, **options)
    await batcher.start()
    return batcher


async def test_an_interactive_image_overtakes_a_queued_backfill() -> None:
    engine = FakeEngine(blocked=True)
    batcher = await _batcher(engine, max_batch_size=4, batch_min_share=0.25)
    try:
        first = asyncio.create_task(batcher.submit(0, priority=B))
        await engine.wait_started()  # the engine holds [0]; everything below waits
        backfill = [asyncio.create_task(batcher.submit(n, priority=B)) for n in range(1, 13)]
        await asyncio.sleep(0.01)
        shop = asyncio.create_task(batcher.submit(100, priority=INT))
        await asyncio.sleep(0.01)
        engine.gate.set()
        assert await asyncio.wait_for(shop, 5) == 1000
        await asyncio.wait_for(asyncio.gather(first, *backfill), 5)
    finally:
        await batcher.stop()
    # The shop's image runs in the very next batch, beside the backfill's share of it.
    assert engine.batches[0] == [0]
    assert 100 in engine.batches[1]
    assert sorted(engine.batches[1]) == [1, 2, 3, 100]


async def test_batch_work_keeps_its_share_under_an_interactive_flood() -> None:
    engine = FakeEngine(blocked=True)
    batcher = await _batcher(engine, max_batch_size=8, batch_min_share=0.25)
    try:
        first = asyncio.create_task(batcher.submit(-1, priority=INT))
        await engine.wait_started()
        backfill = [asyncio.create_task(batcher.submit(n, priority=B)) for n in range(6)]
        flood = [asyncio.create_task(batcher.submit(1000 + n, priority=INT)) for n in range(40)]
        await asyncio.sleep(0.01)
        engine.gate.set()
        await asyncio.wait_for(asyncio.gather(first, *backfill, *flood), 5)
    finally:
        await batcher.stop()
    # Six backfill images, two per batch while interactive ones wait: all in three batches,
    # though 40 interactive images were queued behind them.
    batch_per_run = [sum(1 for n in run if 0 <= n < 6) for run in engine.batches[1:]]
    assert batch_per_run[:3] == [2, 2, 2]


async def test_per_class_waiting_and_running_counts_are_reported() -> None:
    engine = FakeEngine(blocked=True)
    observer = RecordingObserver()
    batcher = await _batcher(engine, max_batch_size=2, observer=observer)
    try:
        tasks = [asyncio.create_task(batcher.submit(0, priority=B))]
        await engine.wait_started()
        tasks += [asyncio.create_task(batcher.submit(n, priority=INT)) for n in (1, 2, 3)]
        await asyncio.sleep(0.01)
        assert observer.classes[-1] == ({INT: 3, B: 0}, {INT: 0, B: 1})
        engine.gate.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
    finally:
        await batcher.stop()
    assert observer.classes[-1] == ({INT: 0, B: 0}, {INT: 0, B: 0})
    assert ({INT: 1, B: 0}, {INT: 2, B: 0}) in observer.classes  # the second batch, running
