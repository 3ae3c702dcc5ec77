"""The two engine-core schedulers side by side: FF_SCHEDULER=static against iteration.

    python -m bench.scheduling [--quick] [--env KEY=VALUE ...] [--iteration-env KEY=VALUE ...]
        [--json PATH]

Each scheduler is one real ``fashion-florence serve`` (``python -m service.cli serve``)
with the shipped demo model on 127.0.0.1, the result cache off, fed the real photos of
clothing-small's validation split. Static runs first, since the open loop's rates are
fractions of its saturation. Per scheduler, each part prints p50, p99 and img/s:

* closed loop: 32 clients, one photo per request (the static one is the saturation);
* open loop: Poisson arrivals of single photos at 50%, 70% and 90% of static's saturation;
* backfill: one client keeps ``/v1/extract/batch`` of 32 photos saturated (a few
  requests in flight, class ``batch`` by the endpoint's default), alone and then beside an
  interactive client that sends one photo at a time, 4 per second (``/v1/extract``,
  class ``interactive``): the interactive latency, and the backfill's img/s beside it
  against alone (goal: within 10%).

Every part is bounded in time (the whole run about 6 minutes, ``--quick`` about 1.5),
targets loopback only, and ends with the three ratios the goals are read from.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.load import Tally, closed_loop, open_loop, percentile_ms, photo_payloads, summary
from bench.rawhttp import RawConnection, encode_uploads
from bench.servers import spawn_service

Row = dict[str, Any]

ROOT: Final = Path(__file__).resolve().parents[1]
PHOTOS: Final = ROOT.parent / "shared" / "data" / "clothing-small" / "validation"
SCHEDULERS: Final = ("static", "iteration")
#: The backfill's requests in flight: enough that the engine never waits for the next
#: batch request to be parsed and decoded, and well under the batch class's admission
#: share of the capacity (so no backfill request is refused).
BACKFILL_IN_FLIGHT: Final = 3
SEED: Final = 29


@dataclass(frozen=True)
class Plan:
    """How long each part runs (seconds); ``quick`` is a smoke run."""

    warmup_s: float = 4.0
    closed_s: float = 15.0
    clients: int = 32
    open_fractions: tuple[float, ...] = (0.5, 0.7, 0.9)
    open_s: float = 20.0
    backfill_alone_s: float = 15.0
    backfill_s: float = 40.0
    interactive_rate: float = 4.0
    batch_items: int = 32

    @classmethod
    def quick(cls) -> Plan:
        return cls(1.0, 4.0, 32, (0.5, 0.7, 0.9), 4.0, 4.0, 8.0, 4.0, 32)


def poisson_offsets(rate: float, seconds: float, seed: int = SEED) -> list[float]:
    """Arrival times (s from the start) of a Poisson process at ``rate`` per second, up to
    ``seconds``: exponential gaps, seeded so both schedulers get the same arrivals."""
    rng = random.Random(seed)
    offsets: list[float] = []
    at = rng.expovariate(rate)
    while at < seconds:
        offsets.append(at)
        at += rng.expovariate(rate)
    return offsets


def tally_row(tally: Tally) -> Row:
    """p50, p99 and img/s of one part, with what was not a 200 (which should be nothing)."""
    row = summary(tally)
    not_ok: dict[str, int] = dict(tally.by_code)
    if tally.transport_errors:
        not_ok["transport"] = tally.transport_errors
    return {
        "p50_ms": row["p50_ms"],
        "p99_ms": row["p99_ms"],
        "img_s": row["throughput_ok_per_s"],
        "ok": row["ok"],
        "sent": row["sent"],
        "not_ok": not_ok,
    }


@dataclass
class _BackfillTally:
    images: int = 0
    latencies: list[float] = field(default_factory=list)
    problems: Counter[str] = field(default_factory=Counter)
    finished_at: float = 0.0


async def backfill_client(
    base_url: str, photos: Sequence[bytes], batch_items: int, seconds: float
) -> Row:
    """Keeps ``BACKFILL_IN_FLIGHT`` requests of ``batch_items`` photos in flight for
    ``seconds``; img/s counts the images answered (200 with no per-item error) over the time
    until the last answer."""
    tally = _BackfillTally()
    started = time.perf_counter()
    stop = started + seconds

    async def worker(index: int) -> None:
        connection = RawConnection(base_url)
        n = index * batch_items
        try:
            while time.perf_counter() < stop:
                chosen = [photos[(n + k) % len(photos)] for k in range(batch_items)]
                n += BACKFILL_IN_FLIGHT * batch_items
                request = encode_uploads(connection.authority, chosen)
                sent = time.perf_counter()
                response = await asyncio.wait_for(connection.send(request), seconds + 120)
                if response.status_code != 200:
                    tally.problems[f"{response.status_code} {response.json().get('code')}"] += 1
                    await asyncio.sleep(0.05)
                    continue
                results = response.json()["results"]
                errors = [r["error"]["code"] for r in results if "error" in r]
                tally.problems.update(errors)
                tally.images += len(results) - len(errors)
                tally.latencies.append(time.perf_counter() - sent)
                tally.finished_at = time.perf_counter()
        finally:
            await connection.close()

    await asyncio.gather(*(worker(i) for i in range(BACKFILL_IN_FLIGHT)))
    wall = max(tally.finished_at - started, 1e-9)
    return {
        "p50_ms": percentile_ms(tally.latencies, 0.50),
        "p99_ms": percentile_ms(tally.latencies, 0.99),
        "img_s": tally.images / wall,
        "requests": len(tally.latencies),
        "images": tally.images,
        "not_ok": dict(tally.problems),
    }


async def backfill_beside_interactive(
    base_url: str, photos: Sequence[bytes], plan: Plan
) -> tuple[Row, Row]:
    """The backfill and the interactive client at once: (interactive, backfill)."""
    rate = plan.interactive_rate
    backfill = asyncio.create_task(
        backfill_client(base_url, photos, plan.batch_items, plan.backfill_s)
    )
    await asyncio.sleep(0.5)  # the backfill's requests are queued before the first photo
    interactive = await open_loop(
        base_url, list(photos), rate, int(rate * plan.backfill_s), plan.backfill_s - 0.5
    )
    return tally_row(interactive), await backfill


def measure_scheduler(
    scheduler: str, photos: list[bytes], plan: Plan, env: Mapping[str, str],
    saturation: float | None,
) -> Row:  # fmt: skip
    """Every part against one server; ``saturation`` (static's) sets the open-loop rates,
    and is measured here when None."""
    with spawn_service(None, {**env, "FF_SCHEDULER": scheduler}) as server:
        base = server.base_url
        asyncio.run(closed_loop(base, photos, plan.clients, 10**9, plan.warmup_s))
        closed = tally_row(asyncio.run(closed_loop(base, photos, plan.clients, 10**9,
                                                   plan.closed_s)))  # fmt: skip
        rate = closed["img_s"] if saturation is None else saturation
        opened = {}
        for fraction in plan.open_fractions:
            offsets = poisson_offsets(fraction * rate, plan.open_s)
            tally = asyncio.run(open_loop(base, photos, fraction * rate, len(offsets),
                                          plan.open_s, offsets_s=offsets))  # fmt: skip
            opened[f"{fraction:.0%}"] = {"rate_per_s": fraction * rate, **tally_row(tally)}
        alone = asyncio.run(backfill_client(base, photos, plan.batch_items,
                                            plan.backfill_alone_s))  # fmt: skip
        interactive, beside = asyncio.run(backfill_beside_interactive(base, photos, plan))
        cold = server.cold_start_s
    return {
        "scheduler": scheduler,
        "cold_start_s": cold,
        "closed": closed,
        "open": opened,
        "backfill_alone": alone,
        "interactive_beside_backfill": interactive,
        "backfill_beside_interactive": beside,
    }


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def goal_lines(static: Row, iteration: Row) -> list[str]:
    """The three closing lines the issue's goals are read from (iteration over static)."""
    under = "interactive_beside_backfill"
    p99 = _ratio(iteration[under]["p99_ms"], static[under]["p99_ms"])
    saturation = _ratio(iteration["closed"]["img_s"], static["closed"]["img_s"])
    at70 = _ratio(iteration["open"]["70%"]["p99_ms"], static["open"]["70%"]["p99_ms"])
    return [
        f"iteration/static interactive p99 under a backfill: {p99:.3f}",
        f"iteration/static saturation img/s: {saturation:.3f}",
        f"iteration/static p99 at 70% load: {at70:.3f}",
    ]


def _parts(result: Row) -> list[tuple[str, str]]:
    """(label, key path) of every table row, in print order."""
    static = result["static"]
    rows = [(f"closed loop, {result['plan']['clients']} clients", "closed")]
    for name, row in static["open"].items():
        rows.append((f"open loop, Poisson {name} ({row['rate_per_s']:.0f}/s)", f"open.{name}"))
    rows.append(("backfill alone (per request of 32)", "backfill_alone"))
    rows.append(("interactive, beside the backfill", "interactive_beside_backfill"))
    rows.append(("backfill, beside the interactive (per request of 32)",
                 "backfill_beside_interactive"))  # fmt: skip
    return rows


def _at(row: Row, path: str) -> Row:
    for key in path.split("."):
        row = row[key]
    return row


def render(result: Row) -> str:
    """Markdown: one table with both schedulers side by side, the backfill's goal, what
    was not a 200, then the three goal lines last."""
    head = "| part | " + " | ".join(
        f"{s} p50 ms | {s} p99 ms | {s} img/s" for s in SCHEDULERS
    ) + " |"  # fmt: skip
    lines = [f"machine: {result['machine']}", "", head, "|---" * 7 + "|"]
    for label, path in _parts(result):
        cells = []
        for scheduler in SCHEDULERS:
            row = _at(result[scheduler], path)
            cells += [f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}", f"{row['img_s']:.1f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for scheduler in SCHEDULERS:
        part = result[scheduler]
        kept = _ratio(part["backfill_beside_interactive"]["img_s"],
                      part["backfill_alone"]["img_s"])  # fmt: skip
        lines.append(f"{scheduler}: backfill img/s beside the interactive client / alone: "
                     f"{kept:.3f} (goal >= 0.90)")  # fmt: skip
    for scheduler in SCHEDULERS:
        problems = {path: _at(result[scheduler], path)["not_ok"] for _, path in _parts(result)}
        problems = {path: found for path, found in problems.items() if found}
        lines.append(f"{scheduler}: answers that were not 200: {json.dumps(problems)}")
    return "\n".join([*lines, *goal_lines(result["static"], result["iteration"])])


def _pairs(values: Sequence[str]) -> dict[str, str]:
    out = {}
    for value in values:
        key, sep, setting = value.partition("=")
        if not sep or not key.startswith("FF_"):
            raise SystemExit(f"expected FF_NAME=VALUE, got {value!r}")
        out[key] = setting
    return out


def run(plan: Plan, env: Mapping[str, str], iteration_env: Mapping[str, str]) -> Row:
    photos = photo_payloads(PHOTOS, 10**6)
    load_before = os.getloadavg()
    static = measure_scheduler("static", photos, plan, env, None)
    iteration = measure_scheduler(
        "iteration", photos, plan, {**env, **iteration_env}, static["closed"]["img_s"]
    )
    load_after = os.getloadavg()
    machine = (
        f"{os.cpu_count()} CPUs, {sys.platform}, load average {load_before[0]:.2f} before and "
        f"{load_after[0]:.2f} after; {len(photos)} photos of {PHOTOS.name}; "
        f"env {dict(env)}, iteration env {dict(iteration_env)}"
    )
    return {"machine": machine, "plan": asdict(plan), "static": static, "iteration": iteration}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a smoke run (about 1.5 min)")
    parser.add_argument("--env", action="append", default=[], metavar="FF_NAME=VALUE",
                        help="a setting for both servers (repeatable)")  # fmt: skip
    parser.add_argument("--iteration-env", action="append", default=[], metavar="FF_NAME=VALUE",
                        help="a setting for the iteration server only (repeatable)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures")
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    result = run(plan, _pairs(args.env), _pairs(args.iteration_env))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
