"""run_with_budget: decode work on a pool, timed from when a thread picks it up."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from fashion_florence_client.problems import ErrorCode
from service.errors import ServiceError
from service.intake import run_with_budget


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(1, thread_name_prefix="test-decode")
    yield executor
    executor.shutdown(wait=True)


def sleeper(seconds: float) -> Callable[[bytes], bytes]:
    def work(data: bytes) -> bytes:
        time.sleep(seconds)
        return data[::-1]

    return work


async def test_returns_the_result_from_a_worker_thread(pool: ThreadPoolExecutor) -> None:
    caller = threading.get_ident()
    seen: list[int] = []

    def work(data: bytes) -> bytes:
        seen.append(threading.get_ident())
        return data.upper()

    assert await run_with_budget(pool, work, b"abc", budget_s=1.0) == b"ABC"
    assert len(seen) == 1
    assert seen[0] != caller  # never on the event loop's thread


async def test_over_budget_answers_without_waiting_for_the_thread(
    pool: ThreadPoolExecutor,
) -> None:
    started = time.monotonic()
    with pytest.raises(ServiceError) as info:
        await run_with_budget(pool, sleeper(0.5), b"x", budget_s=0.05)
    assert info.value.code is ErrorCode.IMAGE_TOO_LARGE
    assert "50 ms" in info.value.detail
    assert time.monotonic() - started < 0.3


async def test_time_queued_for_a_thread_does_not_count(pool: ThreadPoolExecutor) -> None:
    busy = asyncio.ensure_future(run_with_budget(pool, sleeper(0.3), b"a", budget_s=2.0))
    await asyncio.sleep(0.02)  # the single thread is now taken
    quick = await run_with_budget(pool, sleeper(0.01), b"bc", budget_s=0.15)
    assert quick == b"cb"  # waited ~0.3 s in the queue, ran in 0.01 s: within budget
    assert await busy == b"a"


async def test_errors_from_the_job_propagate(pool: ThreadPoolExecutor) -> None:
    def bad(data: bytes) -> bytes:
        raise ServiceError(ErrorCode.INVALID_IMAGE, "broken")

    with pytest.raises(ServiceError) as info:
        await run_with_budget(pool, bad, b"", budget_s=1.0)
    assert info.value.code is ErrorCode.INVALID_IMAGE


async def test_a_job_cancelled_while_queued_never_runs(pool: ThreadPoolExecutor) -> None:
    ran: list[bytes] = []

    def record(data: bytes) -> bytes:
        ran.append(data)
        return data

    busy = asyncio.ensure_future(run_with_budget(pool, sleeper(0.2), b"a", budget_s=2.0))
    await asyncio.sleep(0.02)
    queued = asyncio.ensure_future(run_with_budget(pool, record, b"b", budget_s=2.0))
    await asyncio.sleep(0.02)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    await busy
    await asyncio.sleep(0.05)
    assert ran == []
