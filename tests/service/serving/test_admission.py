"""Admission: a permit per request, refused in microseconds, released however it ends."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.errors import ServiceError
from service.serving.admission import Admission, LocalPool


def admission(capacity: int = 2, retry_after_s: float = 1.0) -> tuple[Admission, list[str]]:
    rejected: list[str] = []
    return Admission(
        LocalPool(capacity), lambda: retry_after_s, on_reject=rejected.append
    ), rejected


async def test_a_full_service_refuses_instantly_with_retry_after() -> None:
    gate, rejected = admission(capacity=2, retry_after_s=0.2)  # no drain history: 1 s floor
    async with gate.permit(1), gate.permit(1):
        assert gate.held == 2
        started = time.monotonic()
        with pytest.raises(ServiceError) as info:
            async with gate.permit(1):
                pass
        assert time.monotonic() - started < 0.05
    assert info.value.code == "queue_full"
    assert info.value.headers["Retry-After"] == "1"
    assert rejected == ["queue_full"]
    assert gate.held == 0


async def test_retry_after_comes_from_the_drain_estimate() -> None:
    gate, _ = admission(capacity=1, retry_after_s=4.6)
    async with gate.permit(1):
        with pytest.raises(ServiceError) as info:
            async with gate.permit(1):
                pass
    assert info.value.headers["Retry-After"] == "5"


async def test_a_permit_is_given_back_when_its_request_fails() -> None:
    gate, _ = admission(capacity=1)
    with pytest.raises(RuntimeError):
        async with gate.permit(1):
            raise RuntimeError("the handler failed")
    assert gate.held == 0
    async with gate.permit(1):  # the slot is free again
        assert gate.held == 1


async def test_a_batch_permit_holds_nothing_until_its_items_take_images() -> None:
    gate, _ = admission(capacity=2)
    async with gate.permit(0) as permit:
        assert (gate.held, permit.images) == (0, 0)
        permit.take()
        permit.take()
        assert gate.held == 2
        with pytest.raises(ServiceError) as info:
            permit.take()  # a third item of the same batch: per-item queue_full
        assert info.value.code == "queue_full"
        assert permit.images == 2
        permit.give_back()  # one item done
        assert gate.held == 1
    assert gate.held == 0


async def test_a_batch_is_refused_before_parsing_only_when_nothing_fits() -> None:
    gate, _ = admission(capacity=1)
    async with gate.permit(1):
        with pytest.raises(ServiceError) as info:
            async with gate.permit(0):
                pass
    assert info.value.code == "queue_full"
    async with gate.permit(0):  # room for one: the batch may try
        pass


async def test_draining_refuses_new_work_and_waits_for_admitted_work() -> None:
    gate, rejected = admission(capacity=4)
    answered = asyncio.Event()

    async def admitted_request() -> None:
        async with gate.permit(1):
            await answered.wait()

    request = asyncio.create_task(admitted_request())
    await asyncio.sleep(0)
    assert gate.held == 1
    gate.start_draining()
    for images in (0, 1):
        with pytest.raises(ServiceError) as info:
            async with gate.permit(images):
                pass
        assert info.value.code == "draining"
        assert info.value.headers["Retry-After"] == "1"
    assert rejected == ["draining", "draining"]
    assert not await gate.wait_idle(0.01)  # one image still admitted
    asyncio.get_running_loop().call_later(0.02, answered.set)
    assert await gate.wait_idle(1.0)
    await request
    assert gate.held == 0


async def test_a_negative_permit_is_a_bug() -> None:
    gate, _ = admission()
    with pytest.raises(ValueError, match="images"):
        async with gate.permit(-1):
            pass
