"""Per-class admission: batch work may hold only its share of the capacity, so a backfill
cannot take the room interactive requests need; counted across API-server processes in
the shared state, refused with queue_full and Retry-After like any full service."""

from __future__ import annotations

import multiprocessing

import pytest

from fashion_florence_client.protocol import Priority
from service.errors import ServiceError
from service.ipc.shared_state import SharedPool, SharedState
from service.serving.admission import Admission, CapacityPool, LocalPool, class_limits

INT, B = Priority.INTERACTIVE, Priority.BATCH


def test_class_limits_give_batch_work_its_share_and_at_least_one_image() -> None:
    assert class_limits(272, 0.75) == {INT: 272, B: 204}
    assert class_limits(4, 0.05) == {INT: 4, B: 1}
    assert class_limits(10, 1.0) == {INT: 10, B: 10}


def _gate(pool: CapacityPool) -> Admission:
    return Admission(pool, lambda: 3.0, limits=class_limits(pool.capacity, 0.5))


async def _backfill_is_capped(gate: Admission) -> None:
    async with gate.permit(0, B) as backfill:
        backfill.take()
        backfill.take()  # 2 of the 4 images: batch work's whole share
        with pytest.raises(ServiceError) as info:
            backfill.take()
        assert info.value.code == "queue_full"
        assert info.value.headers["Retry-After"] == "3"
        assert "2 batch images" in info.value.detail
        # Interactive requests still get the other two.
        async with gate.permit(1, INT), gate.permit(1, INT):
            with pytest.raises(ServiceError):
                async with gate.permit(1, INT):
                    pass
    async with gate.permit(2, B):  # given back when the request ended
        pass


async def test_a_backfill_leaves_room_for_interactive_requests() -> None:
    await _backfill_is_capped(_gate(LocalPool(4)))


async def test_a_batch_request_is_refused_up_front_when_its_class_is_full() -> None:
    gate = _gate(LocalPool(4))
    async with gate.permit(2, B):
        with pytest.raises(ServiceError):
            async with gate.permit(0, B):
                pass
        async with gate.permit(0, INT):  # an interactive batch request is still let in
            pass


async def test_the_shared_state_counts_each_class_across_servers() -> None:
    state = SharedState.create(multiprocessing.get_context("spawn"), capacity=4, servers=2)
    first, second = SharedPool(state, 0), SharedPool(state, 1)
    await _backfill_is_capped(_gate(first))
    gate_a, gate_b = _gate(first), _gate(second)
    async with gate_a.permit(2, B):
        assert state.admitted(B) == 2
        with pytest.raises(ServiceError):  # the other server sees the class is full
            async with gate_b.permit(1, B):
                pass
        async with gate_b.permit(2, INT):
            assert (state.admitted(INT), state.admitted()) == (2, 4)
            state.forget_server(1)  # a dead server's images, both classes, go back
            assert (state.admitted(INT), state.admitted(B)) == (0, 2)
