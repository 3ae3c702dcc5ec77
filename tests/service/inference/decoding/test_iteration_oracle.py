"""The iteration-level oracle: whatever the arrival schedule, every image's tokens equal
what static batching gives it, and its confidences agree within 1e-5 (fp32, CPU). The
real tiny Florence-2 (demo build), both output profiles, seeded schedules: joins at every
step, a lone image, cancellations and expiries (rows leaving) mid-decode, and a mixed
interactive and batch load through the engine core's scheduler."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from PIL import Image

from fashion_florence_client.protocol import Priority
from model_store.loading import LoadedModel
from model_store.profiles import PAPER_FOUR_FIELD_PROFILE, PROJECT_PROFILE
from service.backend import ItemOutcome
from service.engine_core.iteration import IterationScheduler
from service.inference.decoding.decoders import DecodingMode
from service.inference.engine import FlorenceEngine
from service.inference.iteration import IterationRunner
from tests.conftest import photo_paths

MAX_NEW_TOKENS = 256


@pytest.fixture(scope="module", params=[PROJECT_PROFILE, PAPER_FOUR_FIELD_PROFILE], ids=str)
def engine(request: pytest.FixtureRequest, demo_loaded: LoadedModel) -> FlorenceEngine:
    profile = request.param
    manifest = demo_loaded.manifest.model_copy(update={"profile": profile})
    loaded = LoadedModel(demo_loaded.model, demo_loaded.processor, manifest, "test")
    return FlorenceEngine(loaded, max_new_tokens=MAX_NEW_TOKENS, decoding=DecodingMode.JUMP_FORWARD)


@pytest.fixture(scope="module")
def images(engine: FlorenceEngine) -> list[Any]:
    photos = [Image.open(path).convert("RGB") for path in photo_paths(6)]
    return [engine.preprocess(photo) for photo in photos]


def _agree(got: ItemOutcome, want: ItemOutcome) -> None:
    assert got.text == want.text
    assert got.generated_tokens == want.generated_tokens
    assert (got.confidence is None) == (want.confidence is None)
    if got.confidence is not None and want.confidence is not None:
        a, b = got.confidence.model_dump(), want.confidence.model_dump()
        for name, value in a.items():
            expected = b[name]
            if isinstance(value, list) or value is not None:
                assert value == pytest.approx(expected, abs=1e-5), name


def _run(
    engine: FlorenceEngine, images: list[Any], seed: int, leave_at: dict[int, int]
) -> dict[int, ItemOutcome]:
    """Images arrive by a seeded schedule (0-2 joining before each step); image ``n`` in
    ``leave_at`` is dropped at that step if still running. Returns tag -> outcome."""
    rng = random.Random(seed)
    runner = IterationRunner(engine)
    waiting = list(range(len(images)))
    answered: dict[int, ItemOutcome] = {}
    step = 0
    while waiting or runner.running:
        joining = [waiting.pop(0) for _ in range(min(len(waiting), rng.randint(0, 2)))]
        if not runner.running and not joining:
            joining = [waiting.pop(0)]
        runner.join([images[n] for n in joining], joining)
        runner.leave([n for n, at in leave_at.items() if at == step])
        answered.update(runner.step())
        step += 1
    return answered


def test_any_arrival_schedule_gives_every_image_its_static_answer(
    engine: FlorenceEngine, images: list[Any]
) -> None:
    static = engine.run_batch(images)
    for seed in (1, 2):
        answered = _run(engine, images, seed, {})
        assert sorted(answered) == list(range(len(images)))
        for n, outcome in answered.items():
            _agree(outcome, static[n])


def test_a_lone_image_gets_its_static_answer(engine: FlorenceEngine, images: list[Any]) -> None:
    _agree(_run(engine, images[:1], 0, {})[0], engine.run_batch(images[:1])[0])


def test_rows_leaving_mid_decode_change_no_one_else(
    engine: FlorenceEngine, images: list[Any]
) -> None:
    static = engine.run_batch(images)
    answered = _run(engine, images, 3, {0: 2, 3: 4})  # cancelled or expired mid-decode
    assert 0 not in answered
    assert 3 not in answered
    for n, outcome in answered.items():
        _agree(outcome, static[n])


async def test_a_mixed_interactive_and_batch_load_through_the_scheduler(
    engine: FlorenceEngine, images: list[Any]
) -> None:
    """The engine core's IterationScheduler over the real runner, with its join gate on
    (the other tests here join at every step): a backfill queued first, interactive images
    arriving at seeded times while it decodes. Interactive images overtake the waiting
    backfill, and every image still gets its static answer."""
    static = engine.run_batch(images)
    classes = [Priority.BATCH] * 4 + [Priority.INTERACTIVE] * 2
    scheduler = IterationScheduler(
        IterationRunner(engine), max_rows=2, encoder_budget=1, batch_min_share=0.25,
        join_below_rows=0, join_max_wait_s=0.005,
    )  # fmt: skip
    await scheduler.start()
    rng = random.Random(11)
    try:
        tasks = []
        for image, priority in zip(images, classes, strict=True):
            tasks.append(asyncio.create_task(scheduler.submit_timed(image, priority=priority)))
            if priority is Priority.INTERACTIVE:
                await asyncio.sleep(rng.uniform(0.0, 0.01))  # joins while rows decode
        timed = await asyncio.wait_for(asyncio.gather(*tasks), 120)
    finally:
        await scheduler.stop()
    for n, answer in enumerate(timed):
        _agree(answer.result, static[n])
    # Two rows at most: the last backfill image was still waiting when the interactive
    # images arrived, and they joined before it.
    last_backfill = timed[3].started_at
    assert all(answer.started_at < last_backfill for answer in timed[4:])
