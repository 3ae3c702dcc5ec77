"""The service's one capacity, shared by API-server processes: real processes contending."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import numpy as np

from service.backend import ItemOutcome, TimedOutcome
from service.ipc import messages as m
from service.ipc.channel import decode, encode
from service.ipc.shared_state import SharedPool, SharedState

CAPACITY = 5


def _hammer(state: SharedState, server: int, peak: Any, rounds: int) -> None:
    """Take and give back images as fast as possible, recording the highest total held."""
    pool = SharedPool(state, server)
    for n in range(rounds):
        images = 1 + n % 3
        if pool.try_acquire(images):
            with peak.get_lock():
                peak.value = max(peak.value, state.admitted())
            pool.release(images)


def test_the_capacity_holds_across_processes_under_contention() -> None:
    context = multiprocessing.get_context("spawn")
    state = SharedState.create(context, CAPACITY, servers=4)
    peak = context.Value("q", 0)
    workers = [
        context.Process(target=_hammer, args=(state, server, peak, 3000)) for server in range(4)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    assert 1 <= peak.value <= CAPACITY
    assert state.admitted() == 0  # everything taken was given back


def test_a_dead_servers_images_go_back_to_the_pool() -> None:
    state = SharedState.create(multiprocessing.get_context("spawn"), CAPACITY, servers=2)
    one, two = SharedPool(state, 0), SharedPool(state, 1)
    assert one.try_acquire(4)
    assert not two.try_acquire(2)  # all or nothing: 4 + 2 > 5
    assert two.try_acquire(1)
    assert not two.fits(1)
    state.forget_server(0)  # the supervisor, when API server 0 died
    assert state.admitted() == 1
    assert two.try_acquire(4)


def test_the_core_status_and_generation_are_seen_by_readers() -> None:
    state = SharedState.create(multiprocessing.get_context("spawn"), CAPACITY, servers=1)
    state.core_starting(1, 123, 0)
    assert (state.status.name, state.generation, state.core_pid) == ("STARTING", 1, 123)
    state.core_starting(2, 456, 1)
    assert state.status.name == "RESTARTING"
    assert state.restart_began() <= time.monotonic()
    state.publish_core(2.5, time.monotonic(), 0.0)
    assert state.retry_after_s == 2.5
    assert state.core_busy_since is None


def test_pixels_travel_out_of_band_and_come_back_equal() -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    frames = encode(m.Submit(7, 2, 123.5, "abc", pixels))
    assert len(frames) == 2  # the pickle, then the pixels' own frame
    assert len(frames[0]) < 1024  # the pixels are not inside the pickle
    back = decode([bytes(f) for f in frames])
    assert isinstance(back, m.Submit)
    assert (back.request, back.generation, back.deadline, back.key) == (7, 2, 123.5, "abc")
    assert np.array_equal(back.pixels, pixels)
    done = decode(encode(m.Done(7, TimedOutcome(ItemOutcome("{}", 3), 1.0, 2.0, 3.0, 4))))
    assert done.timed.outcome.text == "{}"
    assert done.timed.batch_size == 4
