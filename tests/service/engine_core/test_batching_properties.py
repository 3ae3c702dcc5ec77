"""Property test of the micro-batcher over random arrivals, cancellations, deadlines and
failing batches: every request is resolved exactly once, batches never exceed the maximum,
expired or abandoned items never run, and nothing is lost."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.engine_core.batching import DeadlineExceededError, MicroBatcher


@dataclass(frozen=True)
class Plan:
    delay_ms: int  # arrival after the previous request
    cancel_after_ms: int | None  # the caller gives up
    deadline_ms: int | None  # relative to arrival


plans = st.lists(
    st.builds(
        Plan,
        delay_ms=st.integers(0, 3),
        cancel_after_ms=st.one_of(st.none(), st.integers(0, 10)),
        deadline_ms=st.one_of(st.none(), st.integers(0, 15)),
    ),
    min_size=1,
    max_size=30,
)


async def scenario(plan: list[Plan], max_batch: int, fail_every: int, work_ms: int) -> None:
    runs: list[list[int]] = []
    deadlines: dict[int, float] = {}

    def run_batch(items: list[int]) -> list[int]:
        now = time.monotonic()
        for item in items:  # the batcher's last check happens right before this call
            assert item not in deadlines or now < deadlines[item] + 0.002
        runs.append(list(items))
        time.sleep(work_ms / 1000)
        if fail_every and len(runs) % fail_every == 0:
            raise RuntimeError("injected batch failure")
        return [item * 10 for item in items]

    batcher: MicroBatcher[int, int] = MicroBatcher(
        run_batch, max_batch_size=max_batch, max_wait_ms=2, idle_poll_s=0.05
    )
    await batcher.start()
    outcomes: dict[int, object] = {}

    async def caller(index: int, step: Plan) -> None:
        deadline = None
        if step.deadline_ms is not None:
            deadline = time.monotonic() + step.deadline_ms / 1000
            deadlines[index] = deadline
        try:
            outcomes[index] = await batcher.submit(index, deadline=deadline)
        except asyncio.CancelledError:
            outcomes[index] = "cancelled"
            raise
        except (DeadlineExceededError, RuntimeError) as exc:
            outcomes[index] = exc

    tasks: list[asyncio.Task[None]] = []
    for index, step in enumerate(plan):
        await asyncio.sleep(step.delay_ms / 1000)
        task = asyncio.create_task(caller(index, step))
        tasks.append(task)
        if step.cancel_after_ms is not None:
            asyncio.get_running_loop().call_later(step.cancel_after_ms / 1000, task.cancel)
    await asyncio.wait(tasks, timeout=10)
    await batcher.stop(timeout_s=10)

    assert all(task.done() for task in tasks), "a request was never resolved"
    assert set(outcomes) == set(range(len(plan))), "a request was lost"
    ran = [item for batch in runs for item in batch]
    assert len(ran) == len(set(ran)), "an item ran twice"
    assert all(1 <= len(batch) <= max_batch for batch in runs)
    for index, outcome in outcomes.items():
        if isinstance(outcome, int):
            assert outcome == index * 10  # the caller got its own result
            assert index in ran
        elif isinstance(outcome, DeadlineExceededError):
            assert index not in ran  # expired items never reach the model
        elif outcome == "cancelled":
            pass  # may or may not have run, depending on when the caller left
        else:
            assert isinstance(outcome, RuntimeError)
            assert index in ran, (runs, outcomes)  # only a failed batch's own items see its error


@settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    plan=plans,
    max_batch=st.integers(1, 6),
    fail_every=st.integers(0, 4),
    work_ms=st.integers(0, 3),
)
def test_batcher_resolves_every_request_exactly_once(
    plan: list[Plan], max_batch: int, fail_every: int, work_ms: int
) -> None:
    asyncio.run(scenario(plan, max_batch, fail_every, work_ms))
