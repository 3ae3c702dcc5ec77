"""bench.scheduling: its seeded Poisson arrivals, its report (ending with the three goal
lines), and its backfill beside an interactive client against the real service."""

from __future__ import annotations

import asyncio
import itertools
import statistics
from typing import Any

import pytest

from bench.load import photo_payloads
from bench.scheduling import (
    PHOTOS,
    SCHEDULERS,
    Plan,
    backfill_beside_interactive,
    goal_lines,
    poisson_offsets,
    render,
)
from bench.servers import spawn_service


def test_poisson_arrivals_are_seeded_ascending_and_at_the_rate() -> None:
    offsets = poisson_offsets(50.0, 40.0)
    assert offsets == poisson_offsets(50.0, 40.0)
    assert offsets != poisson_offsets(50.0, 40.0, seed=1)
    assert all(a < b for a, b in itertools.pairwise(offsets))
    assert offsets[0] > 0
    assert offsets[-1] < 40.0
    assert 1800 < len(offsets) < 2200  # 2000 expected; 4.5 standard deviations either side
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    # Exponential gaps: the standard deviation equals the mean (a fixed rate would give 0).
    assert statistics.stdev(gaps) == pytest.approx(statistics.mean(gaps), rel=0.15)


def _part(p50: float, p99: float, img_s: float, **extra: Any) -> dict[str, Any]:
    return {"p50_ms": p50, "p99_ms": p99, "img_s": img_s, "not_ok": {}, **extra}


def _scheduler(scale: float) -> dict[str, Any]:
    return {
        "closed": _part(100 * scale, 200 * scale, 100 / scale),
        "open": {
            f"{f:.0%}": _part(50 * scale, 80 * scale, 90 * f, rate_per_s=100 * f)
            for f in (0.5, 0.7, 0.9)
        },
        "backfill_alone": _part(500, 900, 150),
        "interactive_beside_backfill": _part(40 * scale, 60 * scale, 4),
        "backfill_beside_interactive": _part(520, 950, 140),
    }


def test_the_report_ends_with_exactly_the_three_goal_lines() -> None:
    result: dict[str, Any] = {"machine": "test", "plan": {"clients": 32},
                              "static": _scheduler(1.0), "iteration": _scheduler(0.5)}  # fmt: skip
    lines = render(result).splitlines()
    assert lines[-3:] == [
        "iteration/static interactive p99 under a backfill: 0.500",
        "iteration/static saturation img/s: 2.000",
        "iteration/static p99 at 70% load: 0.500",
    ]
    assert lines[-3:] == goal_lines(result["static"], result["iteration"])
    table = [line for line in lines if line.startswith("| ")]
    assert len(table) == 1 + 1 + 3 + 3  # head, closed, three open rates, three backfill rows
    assert all(line.count("|") == 2 + 3 * len(SCHEDULERS) for line in table)
    kept = "static: backfill img/s beside the interactive client / alone: 0.933 (goal >= 0.90)"
    assert kept in lines


@pytest.mark.slow
@pytest.mark.load
def test_the_backfill_and_the_interactive_client_against_the_real_service() -> None:
    photos = photo_payloads(PHOTOS, 16)
    plan = Plan(backfill_s=3.0, interactive_rate=4.0, batch_items=4)
    with spawn_service(None, {"FF_SCHEDULER": "static"}) as server:
        interactive, backfill = asyncio.run(
            backfill_beside_interactive(server.base_url, photos, plan)
        )
    assert interactive["not_ok"] == {}
    assert backfill["not_ok"] == {}
    assert interactive["ok"] == interactive["sent"] >= 8  # 4/s for 2.5 s
    assert backfill["requests"] >= 3  # one per worker at least
    assert backfill["images"] == 4 * backfill["requests"]
    assert backfill["img_s"] > 0
    assert backfill["p50_ms"] <= backfill["p99_ms"]
