"""Run decode work on a thread pool with a time budget, never on the event loop.

The budget starts when a worker thread picks the job up, not when it is queued: waiting
for a free thread is the service being busy (the batcher's admission control answers
that), not the image being expensive. A Python thread cannot be stopped, so a job over
budget finishes in the background while the caller already has its answer; the pixel
limits checked before decoding bound how long that can be. A job that has already finished
when the caller looks is used, however long it took: the budget exists to free the caller,
not to throw finished work away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Final, TypeVar

from fashion_florence_client.problems import ErrorCode
from service.errors import ServiceError

__all__ = ["run_with_budget"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_DONE: Final = asyncio.FIRST_COMPLETED


def _retrieve(future: asyncio.Future[Any]) -> None:
    # The caller may have stopped waiting (over budget); read the outcome so asyncio does
    # not log "exception was never retrieved" for a job nobody awaits any more.
    if not future.cancelled():
        future.exception()


async def run_with_budget(
    executor: Executor, fn: Callable[[bytes], T], data: bytes, *, budget_s: float
) -> T:
    """``fn(data)`` on ``executor``; ``IMAGE_TOO_LARGE`` if it runs longer than ``budget_s``."""
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    def job() -> T:
        loop.call_soon_threadsafe(started.set)
        return fn(data)

    future = loop.run_in_executor(executor, job)
    future.add_done_callback(_retrieve)
    waiter = asyncio.ensure_future(started.wait())
    either: list[asyncio.Future[Any]] = [waiter, future]
    try:
        # Either the job starts, or it ends without starting (pool shut down, cancelled).
        await asyncio.wait(either, return_when=_DONE)
    except asyncio.CancelledError:
        future.cancel()  # the caller left: a job still queued never runs
        raise
    finally:
        waiter.cancel()
    scope = asyncio.timeout(budget_s)
    try:
        async with scope:
            return await asyncio.shield(future)
    except TimeoutError:
        if not scope.expired():
            raise  # fn itself raised TimeoutError: not ours to translate
        log.warning("decode over budget (%.0f ms) for %d bytes", budget_s * 1000, len(data))
        raise ServiceError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"The image took longer than {budget_s * 1000:.0f} ms to decode.",
        ) from None
