"""The iteration-level scheduler on a real event loop with a fake running set (no model):
rows join between steps and leave when done, cancelled or expired; out-of-memory shrinks
a budget and retries without failing anyone; interactive arrivals are encoded first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from fashion_florence_client.protocol import Priority
from service.backend import DeadlineExceededError, DeviceOutOfMemoryError, ItemOutcome
from service.engine_core.iteration import IterationScheduler


class FakeRunner:
    """Image ``n`` needs ``n`` steps; its outcome's text is ``str(n)``. Optional limits
    make join or step raise DeviceOutOfMemoryError, as a device would."""

    def __init__(self, *, max_join: int = 1_000, max_rows: int = 1_000) -> None:
        self.rows: dict[int, list[int]] = {}  # tag -> [image, steps left]
        self.max_join, self.max_rows = max_join, max_rows
        self.joins: list[list[int]] = []
        self.left: list[int] = []
        self.steps = 0
        self.reset_calls = 0

    @property
    def running(self) -> int:
        return len(self.rows)

    def join(self, images: Sequence[int], tags: Sequence[int]) -> None:
        if len(images) > self.max_join:
            raise DeviceOutOfMemoryError("encoder")
        self.joins.append(list(images))
        for image, tag in zip(images, tags, strict=True):
            self.rows[tag] = [image, image]

    def leave(self, tags: Sequence[int]) -> None:
        for tag in tags:
            if self.rows.pop(tag, None) is not None:
                self.left.append(tag)

    def step(self) -> list[tuple[int, ItemOutcome]]:
        if len(self.rows) > self.max_rows:
            raise DeviceOutOfMemoryError("step")
        self.steps += 1
        time.sleep(0.001)
        done = []
        for tag, row in list(self.rows.items()):
            row[1] -= 1
            if row[1] <= 0:
                del self.rows[tag]
                done.append((tag, ItemOutcome(str(row[0]), row[0])))
        return done

    def reset(self) -> None:
        self.reset_calls += 1
        self.rows.clear()


async def _scheduler(runner: FakeRunner, **options: object) -> IterationScheduler:
    settings = {"max_rows": 8, "encoder_budget": 4, "batch_min_share": 0.25} | options
    scheduler = IterationScheduler(runner, **settings)  # type: ignore[arg-type]
    await scheduler.start()
    return scheduler


async def _text(scheduler: IterationScheduler, image: int, **options: object) -> str:
    timed = await scheduler.submit_timed(image, **options)  # type: ignore[arg-type]
    return timed.result.text


async def test_rows_join_while_others_decode_and_leave_when_done() -> None:
    runner = FakeRunner()
    scheduler = await _scheduler(runner)
    try:
        long = asyncio.create_task(_text(scheduler, 40))
        await asyncio.sleep(0.01)
        short = [asyncio.create_task(_text(scheduler, 2)) for _ in range(3)]
        assert await asyncio.wait_for(asyncio.gather(*short), 5) == ["2", "2", "2"]
        assert not long.done()  # the short ones joined the running decode and left first
        assert await asyncio.wait_for(long, 5) == "40"
    finally:
        await scheduler.stop()
    assert runner.joins[0] == [40]
    assert [2, 2, 2] in runner.joins


async def test_a_cancelled_row_leaves_at_the_next_step() -> None:
    runner = FakeRunner()
    scheduler = await _scheduler(runner)
    try:
        gone = asyncio.create_task(_text(scheduler, 10_000))
        stays = asyncio.create_task(_text(scheduler, 30))
        await asyncio.sleep(0.02)
        gone.cancel()
        assert await asyncio.wait_for(stays, 5) == "30"
    finally:
        await scheduler.stop()
    assert len(runner.left) == 1
    assert runner.steps < 1_000


async def test_a_row_whose_deadline_passes_mid_decode_is_answered_and_dropped() -> None:
    runner = FakeRunner()
    scheduler = await _scheduler(runner)
    try:
        deadline = time.monotonic() + 0.05
        with pytest.raises(DeadlineExceededError) as info:
            await asyncio.wait_for(_text(scheduler, 10_000, deadline=deadline), 5)
        assert info.value.stage == "while decoding"
    finally:
        await scheduler.stop()
    assert len(runner.left) == 1


async def test_out_of_memory_while_encoding_shrinks_the_budget_and_fails_no_one() -> None:
    runner = FakeRunner(max_join=2)
    scheduler = await _scheduler(runner, encoder_budget=8)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(_text(scheduler, 3) for _ in range(8))), 5
        )
    finally:
        await scheduler.stop()
    assert results == ["3"] * 8
    assert all(len(images) <= 2 for images in runner.joins)


async def test_out_of_memory_while_stepping_sends_the_newest_rows_back() -> None:
    runner = FakeRunner(max_rows=3)
    scheduler = await _scheduler(runner, encoder_budget=8)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(_text(scheduler, 4) for _ in range(8))), 5
        )
    finally:
        await scheduler.stop()
    assert results == ["4"] * 8
    assert runner.left  # evicted rows were run again later, from the start


async def test_waiting_interactive_images_are_encoded_first() -> None:
    runner = FakeRunner()
    scheduler = await _scheduler(runner, max_rows=1, encoder_budget=1)
    try:
        first = asyncio.create_task(_text(scheduler, 5, priority=Priority.BATCH))
        await asyncio.sleep(0.002)
        backfill = [
            asyncio.create_task(_text(scheduler, 1, priority=Priority.BATCH)) for _ in range(3)
        ]
        shop = asyncio.create_task(_text(scheduler, 7, priority=Priority.INTERACTIVE))
        await asyncio.wait_for(asyncio.gather(first, shop, *backfill), 5)
    finally:
        await scheduler.stop()
    # One row at a time: the shop's image (7) ran right after the first, ahead of the
    # backfill queued before it (batch work earns one slot in four while both wait).
    assert [images[0] for images in runner.joins] == [5, 7, 1, 1, 1]
