"""The engine core's waiting images, in one FIFO lane per scheduling class.

Interactive images are taken first; batch images are never starved: while both lanes
hold work, ``batch_min_share`` of the images taken (one in four at the default 0.25,
counted across takes) come from the batch lane. Both schedulers take their work here: the static one a
whole batch at a time, the iteration-level one each iteration's encoder micro-batch.
No model, metrics or HTTP is known here.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from fashion_florence_client.protocol import Priority

T = TypeVar("T")

__all__ = ["Lanes"]


class Lanes(Generic[T]):
    """Waiting items per class; one consumer (the scheduler's loop) on the event loop."""

    def __init__(self, batch_min_share: float) -> None:
        if not 0.0 < batch_min_share <= 1.0:
            raise ValueError("batch_min_share must be in (0, 1]")
        self.batch_min_share = batch_min_share
        self._lanes: dict[Priority, deque[T]] = {p: deque() for p in Priority}
        self._arrived = asyncio.Event()
        self.closed = False
        self._credit = 0.0  # batch work's earned share of slots (see take)

    def __len__(self) -> int:
        return sum(len(lane) for lane in self._lanes.values())

    def waiting(self, priority: Priority) -> int:
        return len(self._lanes[priority])

    def put(self, item: T, priority: Priority) -> None:
        self._lanes[priority].append(item)
        self._arrived.set()

    def put_front(self, item: T, priority: Priority) -> None:
        """Back at the head of its lane (taken, but could not run yet)."""
        self._lanes[priority].appendleft(item)
        self._arrived.set()

    def close(self) -> None:
        """No more items will come; a waiting consumer wakes up."""
        self.closed = True
        self._arrived.set()

    async def wait(self, timeout_s: float) -> bool:
        """Until something waits or the lanes close; False if ``timeout_s`` passed first."""
        if len(self) or self.closed:
            return True
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def fill(self, size: int, until: float) -> None:
        """Wait until ``size`` items wait, the lanes close, or ``time.monotonic()`` reaches
        ``until``, whichever comes first."""
        while len(self) < size and not self.closed:
            remaining = until - time.monotonic()
            if remaining <= 0 or not await self.wait_more(remaining):
                return

    async def wait_more(self, timeout_s: float) -> bool:
        self._arrived.clear()
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def oldest(self, enqueued_at: Callable[[T], float]) -> float | None:
        """When the longest-waiting item arrived (``enqueued_at`` of the lanes' heads)."""
        heads = [enqueued_at(lane[0]) for lane in self._lanes.values() if lane]
        return min(heads) if heads else None

    def take(self, size: int, keep: Callable[[T], bool]) -> list[T]:
        """Up to ``size`` items, interactive first, with batch work's guaranteed share.
        ``keep`` judges each item as it leaves its lane (False: dropped, say cancelled or
        expired; the caller has dealt with it)."""
        taken: list[T] = []
        interactive, batch = self._lanes[Priority.INTERACTIVE], self._lanes[Priority.BATCH]
        while len(taken) < size and (interactive or batch):
            lane = interactive
            if interactive and batch:
                # Batch work earns a share of every slot taken while both classes wait,
                # and takes a slot whenever it has earned a whole one: one in four at
                # 0.25, across takes, so even a micro-batch of one alternates fairly.
                self._credit += self.batch_min_share
                if self._credit >= 1.0:
                    self._credit -= 1.0
                    lane = batch
            elif batch:
                lane = batch
            item = lane.popleft()
            if keep(item):
                taken.append(item)
        return taken

    def drain(self) -> list[T]:
        """Everything still waiting (the scheduler stops), and the lanes emptied."""
        items = [item for lane in self._lanes.values() for item in lane]
        for lane in self._lanes.values():
            lane.clear()
        return items
