"""bench.host_step: host time per step measured as the service runs (heap frozen after the
load), and the caller's collector left as it was."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from bench.host_step import HostTimer, markdown, measure

pytestmark = pytest.mark.slow


def test_host_time_is_measured_with_the_heap_frozen_then_released(
    demo_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen_during: list[int] = []
    real_once = HostTimer.once

    def spying_once(self: HostTimer, batch: int, start: int = 0) -> tuple[float, float, int]:
        frozen_during.append(gc.get_freeze_count())
        return real_once(self, batch, start)

    monkeypatch.setattr("bench.host_step.HostTimer.once", spying_once)
    before = gc.get_freeze_count()

    (row,) = measure(demo_model_dir, [1], repeats=1)

    assert row["host_ms_per_step"] > 0
    assert row["steps"] > 0
    assert frozen_during
    assert all(count > before for count in frozen_during)
    assert gc.get_freeze_count() == before
    assert len(markdown([row]).splitlines()) == 3
