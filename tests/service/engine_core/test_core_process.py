"""The engine core as a real process behind real ZeroMQ, driven by the API server's client:
a hung-up request and an expired one never reach the model, and what comes back is the
core's timing of each image. The model is a fake with a slow batch, so the order of
events is under the test's control."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import time
from collections.abc import AsyncIterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from service.backend import DeadlineExceededError, ItemOutcome
from service.ipc.channel import CoreAddress
from service.ipc.shared_state import CoreStatus, SharedState
from service.serving.core_client import CoreClient, CoreLink
from service.settings import Settings
from tests.fakes import FakeBackend

BATCH_DELAY_S = 0.8


class RecordingBackend(FakeBackend):
    """Writes the size of each batch it runs to a file the test reads."""

    def __init__(self, record: Path) -> None:
        # The core hands it uint8 pixels, not the fake's own 0..1 floats: never "bad".
        super().__init__(image_size=8, batch_delay_s=BATCH_DELAY_S, bad_red_above=1e9)
        self.record = record

    def run_batch(self, images: Sequence[Any]) -> list[ItemOutcome]:
        with self.record.open("a") as out:
            out.write(json.dumps(len(images)) + "\n")
        return super().run_batch(images)


def run_fake_core(
    settings: Settings, address: CoreAddress, state: SharedState, ready: Connection, record: str
) -> None:
    from service.engine_core.main import serve_core

    asyncio.run(serve_core(RecordingBackend(Path(record)), settings, address, state, ready))


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[CoreClient, Path]]:
    context = multiprocessing.get_context("spawn")
    state = SharedState.create(context, capacity=8, servers=1)
    address, record = CoreAddress(tmp_path), tmp_path / "batches.jsonl"
    ours, theirs = context.Pipe(duplex=False)
    settings = Settings(cache_enabled=False)
    state.core_starting(1, 0, 0)
    core = context.Process(
        target=run_fake_core, args=(settings, address, state, theirs, str(record))
    )
    core.start()
    try:
        assert await asyncio.to_thread(ours.poll, 60), "the core did not start"
        assert ours.recv()[0] == "ready"
        state.set_status(CoreStatus.READY)
        engine = await CoreClient.connect(CoreLink(address, state), settings)
        yield engine, record
        await engine.close()
    finally:
        if core.pid is not None and core.is_alive():
            os.kill(core.pid, 15)
        core.join(10)
        if core.is_alive():
            core.kill()


def batches(record: Path) -> list[int]:
    return [json.loads(line) for line in record.read_text().splitlines()]


async def test_hung_up_and_expired_images_never_reach_the_model(
    client: tuple[CoreClient, Path],
) -> None:
    engine, record = client
    pixels = engine.prepare(Image.new("RGB", (32, 32), (30, 30, 200)))
    far = time.monotonic() + 30
    first = asyncio.create_task(engine.infer(pixels, deadline=far, key=None))
    await asyncio.sleep(0.2)  # the first image's batch is running now
    hung_up = asyncio.create_task(engine.infer(pixels, deadline=far, key=None))
    expiring = asyncio.create_task(engine.infer(pixels, deadline=time.monotonic() + 0.2, key=None))
    await asyncio.sleep(0.1)
    hung_up.cancel()  # what the serving layer does when the client goes away
    timed = await first
    with pytest.raises(DeadlineExceededError):
        await expiring
    assert hung_up.cancelled()
    assert timed.outcome.ok
    assert timed.batch_size == 1
    assert timed.finished_at - timed.started_at >= BATCH_DELAY_S * 0.9
    later = await engine.infer(pixels, deadline=time.monotonic() + 30, key=None)
    assert later.outcome.ok
    assert batches(record) == [1, 1]  # neither the hung-up nor the expired image ran


async def test_the_core_describes_its_model_and_resize(
    client: tuple[CoreClient, Path],
) -> None:
    engine, _ = client
    assert engine.info.name == "fake"
    prepared = engine.prepare(Image.new("L", (40, 20), 128))  # any mode, any size
    assert prepared.shape == (8, 8, 3)
    assert str(prepared.dtype) == "uint8"
    assert await engine.lookup("0" * 64) is None  # the cache is off: a miss, not an error
