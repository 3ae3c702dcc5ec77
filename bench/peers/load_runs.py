"""The same load for every server: closed loop at 1/16/32/64 clients, open loop at 0.9x
and 3x of the server's own saturation, alternating servers, repeated.

A closed point is :func:`bench.baselines.measure` (the lean client) after two uncounted
requests, with the model's own count around it: mean batch, the fraction of the wall
time the model was running (``engine_busy``), and valid answers per second. An open point
is :func:`bench.serving.open_point`, whose accounting is complete: sent = answered
(by status) + transport errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.baselines import measure
from bench.load import closed_loop
from bench.peers.servers import PeerUnavailableError, Served
from bench.servers import ServerStartError
from bench.serving import open_point

Row = dict[str, Any]
Starter = Callable[[], Served]


@dataclass(frozen=True)
class LoadPlan:
    concurrencies: tuple[int, ...] = (1, 16, 32, 64)
    open_fractions: tuple[float, ...] = (0.9, 3.0)
    point_s: float = 6.0
    rounds: int = 2
    max_requests: int = 3000

    @classmethod
    def quick(cls) -> LoadPlan:
        return cls(concurrencies=(16,), open_fractions=(), point_s=2.0, rounds=1, max_requests=200)


def closed_point(server: Served, images: list[bytes], concurrency: int, plan: LoadPlan) -> Row:
    asyncio.run(closed_loop(server.base_url, images[:2], 1, 2, 60.0))  # first-call costs
    before = server.snapshot()
    row = measure(server.base_url, images, concurrency, plan.max_requests, plan.point_s, warmup=0)
    done = server.snapshot().minus(before)
    wall = max(row["wall_s"], 1e-9)
    row["mean_batch"] = done.images / done.batches if done.batches else None
    row["engine_busy"] = done.seconds / wall if done.batches else None
    row["valid_per_s"] = row["img_s"] if server.ok_means_valid else done.valid / wall
    row["model_images"] = done.images
    return row


def run_server(
    name: str, start: Starter, images: list[bytes], plan: LoadPlan,
    after: Callable[[Served], Row] | None = None,
) -> Row:  # fmt: skip
    """Start the server, run every point, read its peak RSS, stop it. ``after`` adds more
    (the behaviour rows) while it is still up. A server that cannot start is a row that
    says why."""
    try:
        server = start()
    except (PeerUnavailableError, ServerStartError) as exc:
        return {"server": name, "unavailable": str(exc)[-2000:]}
    try:
        closed = [closed_point(server, images, c, plan) for c in plan.concurrencies]
        saturated = max(row["img_s"] for row in closed)
        opened = [
            open_point(server.base_url, images, fraction * saturated, plan.point_s)
            | {"fraction": fraction}
            for fraction in plan.open_fractions
        ]
        extra = _guarded(after, server) if after is not None else {}
        rss = server.peak_rss_bytes()
        return {
            "server": name,
            "cold_start_s": server.handle.cold_start_s,
            "closed": closed,
            "open": opened,
            "saturated_img_s": saturated,
            "peak_rss_bytes": rss,
            **extra,
        }
    finally:
        server.stop()


def _guarded(after: Callable[[Served], Row], server: Served) -> Row:
    """The extra rows, or the error that stopped them: one broken case must not lose
    the figures the run already has."""
    try:
        return after(server)
    except Exception as exc:
        return {"after_error": f"{type(exc).__name__}: {exc}"}


def alternating(
    starters: dict[str, Starter], images: list[bytes], plan: LoadPlan,
    after: Callable[[Served], Row] | None = None,
) -> list[Row]:  # fmt: skip
    """Every round runs every server, in turn; odd rounds in reverse order (so a slow
    drift of the machine does not favour one server). ``after`` runs in round 0 only."""
    rows: list[Row] = []
    names = list(starters)
    for index in range(plan.rounds):
        order = names if index % 2 == 0 else names[::-1]
        for name in order:
            row = run_server(name, starters[name], images, plan, after if index == 0 else None)
            rows.append({"round": index, **row})
    return rows


def median_at(rows: Sequence[Row], name: str, concurrency: int, key: str) -> float | None:
    values = sorted(
        float(point[key])
        for row in rows
        if row["server"] == name and "closed" in row
        for point in row["closed"]
        if point["concurrency"] == concurrency and point[key] is not None
    )
    if not values:
        return None
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
