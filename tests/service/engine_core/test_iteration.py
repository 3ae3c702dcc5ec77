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
        self.joined_at_step: list[int] = []
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
        self.joined_at_step.append(self.steps)
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


# The join gate: while more than join_below_rows rows run, arrivals wait for a fuller join


async def test_the_gate_holds_arrivals_until_a_full_micro_batch_waits() -> None:
    runner = FakeRunner()
    scheduler = await _scheduler(
        runner, max_rows=16, encoder_budget=3, join_below_rows=0, join_max_wait_s=60.0
    )
    try:
        long = asyncio.create_task(_text(scheduler, 300))
        await asyncio.sleep(0.02)
        early = [asyncio.create_task(_text(scheduler, 2)) for _ in range(2)]
        await asyncio.sleep(0.05)  # many steps: a plain iteration scheduler joins them now
        assert runner.joins == [[300]]
        late = asyncio.create_task(_text(scheduler, 2))  # the third makes a full budget
        assert await asyncio.wait_for(asyncio.gather(*early, late), 5) == ["2"] * 3
        long.cancel()
    finally:
        await scheduler.stop()
    assert runner.joins[1] == [2, 2, 2]


async def test_the_gate_lets_a_late_arrival_join_after_the_longest_wait() -> None:
    runner = FakeRunner()
    scheduler = await _scheduler(
        runner, max_rows=16, encoder_budget=8, join_below_rows=0, join_max_wait_s=0.03
    )
    try:
        long = asyncio.create_task(_text(scheduler, 1_000))
        await asyncio.sleep(0.01)
        waited = time.monotonic()
        assert await asyncio.wait_for(_text(scheduler, 2), 5) == "2"
        assert time.monotonic() - waited >= 0.03
        long.cancel()
    finally:
        await scheduler.stop()
    assert runner.joins[1] == [2]


async def test_an_interactive_image_joins_a_backfill_alone_and_batch_work_waits_for_it() -> None:
    runner = FakeRunner()
    scheduler = await _scheduler(
        runner, max_rows=16, encoder_budget=4, join_below_rows=2, join_max_wait_s=0.0
    )
    try:
        backfill = [
            asyncio.create_task(_text(scheduler, 200, priority=Priority.BATCH)) for _ in range(4)
        ]
        await asyncio.sleep(0.02)  # four batch rows run
        shop = asyncio.create_task(_text(scheduler, 20, priority=Priority.INTERACTIVE))
        await asyncio.sleep(0.005)
        more = [asyncio.create_task(_text(scheduler, 1, priority=Priority.BATCH)) for _ in range(4)]
        assert await asyncio.wait_for(shop, 5) == "20"
        assert await asyncio.wait_for(asyncio.gather(*more), 5) == ["1"] * 4
        for task in backfill:
            task.cancel()
    finally:
        await scheduler.stop()
    # The shop's image joined alone, at once; the batch images queued behind it joined
    # neither with it nor in the 20 steps it ran (more than join_below_rows rows ran).
    assert runner.joins == [[200] * 4, [20], [1] * 4]
    shop_joined, batch_joined = runner.joined_at_step[1:]
    assert batch_joined >= shop_joined + 20
