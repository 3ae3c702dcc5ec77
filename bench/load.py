"""A bounded load generator over loopback, with full accounting.

    python -m bench.load --server http://127.0.0.1:8000 [--mode closed|open]
        [--concurrency 32] [--rate 200] [--requests 1000] [--time-limit-s 60]

closed: N clients each send one request after another; open: requests start at a constant
rate whatever the answers (this is how overload looks). Prints throughput, latency
percentiles and the accounting: sent = answered, broken down by status and error code.
Every run is bounded by --requests and --time-limit-s and targets the given server only,
which must be on loopback: the client is :mod:`bench.rawhttp`, chosen because httpx took
more CPU per request than the servers it measured on a 2-core machine (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Any, Protocol

from bench.rawhttp import RawConnection, encode_upload
from model_store.synthetic import COLOR_CLASSES, block_garment


class Answer(Protocol):
    """What Tally reads from a response (the raw client's, or any with the same two)."""

    @property
    def status_code(self) -> int: ...
    def json(self) -> Any: ...


@dataclass
class Tally:
    sent: int = 0
    latencies_ok: list[float] = field(default_factory=list)
    latencies_refused: list[float] = field(default_factory=list)
    by_status: Counter[int] = field(default_factory=Counter)
    by_code: Counter[str] = field(default_factory=Counter)
    transport_errors: int = 0
    wall_s: float = 0.0

    @property
    def answered(self) -> int:
        return sum(self.by_status.values())

    def record(self, response: Answer, seconds: float) -> None:
        self.by_status[response.status_code] += 1
        if response.status_code == 200:
            self.latencies_ok.append(seconds)
            return
        self.latencies_refused.append(seconds)
        try:
            self.by_code[str(response.json().get("code"))] += 1
        except ValueError:
            self.by_code["<not json>"] += 1


def payloads(count: int, *, size: int = 256, seed: int = 42) -> list[bytes]:
    """Synthetic garment JPEGs (the demo model's colour classes in turn): every benchmark's
    request bodies."""
    rng = random.Random(seed)
    colors = list(COLOR_CLASSES)
    out = []
    for index in range(count):
        buffer = io.BytesIO()
        block_garment(colors[index % len(colors)], rng, size=size).save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def photo_payloads(root: Path, count: int) -> list[bytes]:
    """The first ``count`` photos of ``root/<class>/*.jpg``, taken from the class folders in
    turn (so every class is in the mix), as stored: real photos as request bodies."""
    folders = [sorted(d.glob("*.jpg")) for d in sorted(root.iterdir()) if d.is_dir()]
    ordered = [path for rank in zip_longest(*folders) for path in rank if path is not None]
    if not ordered:
        raise ValueError(f"no photos under {root}/<class>/*.jpg")
    return [path.read_bytes() for path in ordered[:count]]


_TRANSPORT_ERRORS = (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError)


async def _timed_send(
    connection: RawConnection, request: bytes, tally: Tally, timeout_s: float
) -> None:
    """Send one request and record its answer, or count a transport error (and close the
    connection: a half-read response poisons it; the next send reopens it)."""
    started = time.perf_counter()
    try:
        response = await asyncio.wait_for(connection.send(request), timeout_s)
    except _TRANSPORT_ERRORS:
        tally.transport_errors += 1
        await connection.close()
        return
    tally.record(response, time.perf_counter() - started)


async def closed_loop(
    base_url: str,
    images: list[bytes],
    concurrency: int,
    requests: int,
    limit_s: float,
    *,
    request_timeout_s: float = 120.0,
) -> Tally:
    """``concurrency`` clients, each sending its next request when the last is answered, on
    one persistent connection each; requests are pre-encoded, so the generator takes little
    CPU from the server it measures."""
    tally = Tally()
    deadline = time.perf_counter() + limit_s
    connections = [RawConnection(base_url) for _ in range(concurrency)]
    encoded = [encode_upload(connections[0].authority, image) for image in images]

    async def worker(connection: RawConnection) -> None:
        while tally.sent < requests and time.perf_counter() < deadline:
            request = encoded[tally.sent % len(encoded)]
            tally.sent += 1
            await _timed_send(connection, request, tally, request_timeout_s)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in connections))
    finally:
        await asyncio.gather(*(c.close() for c in connections))
    tally.wall_s = time.perf_counter() - started
    return tally


async def open_loop(
    base_url: str,
    images: list[bytes],
    rate: float,
    requests: int,
    limit_s: float,
    *,
    max_connections: int = 512,
    request_timeout_s: float = 120.0,
    offsets_s: Sequence[float] | None = None,
) -> Tally:
    """Requests start on schedule at ``rate`` per second whatever the answers (how overload
    looks); idle connections are reused, at most ``max_connections`` are open (past that a
    request waits for one, which the report shows as latency, not as lost work). With
    ``offsets_s`` (seconds from the start, ascending) request ``i`` starts at
    ``offsets_s[i]`` instead (e.g. Poisson arrivals), and there are at most that many."""
    tally = Tally()
    probe = RawConnection(base_url)
    encoded = [encode_upload(probe.authority, image) for image in images]
    idle: list[RawConnection] = [probe]
    slots = asyncio.Semaphore(max_connections)
    opened: list[RawConnection] = [probe]

    async def one(request: bytes) -> None:
        async with slots:
            if idle:
                connection = idle.pop()
            else:
                connection = RawConnection(base_url)
                opened.append(connection)
            await _timed_send(connection, request, tally, request_timeout_s)
            idle.append(connection)

    started = time.perf_counter()
    tasks: list[asyncio.Task[None]] = []
    try:
        for index in range(requests if offsets_s is None else min(requests, len(offsets_s))):
            due = started + (index / rate if offsets_s is None else offsets_s[index])
            if due - started > limit_s:
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tally.sent += 1
            tasks.append(asyncio.create_task(one(encoded[index % len(encoded)])))
        await asyncio.gather(*tasks)
    finally:
        await asyncio.gather(*(c.close() for c in opened))
    tally.wall_s = time.perf_counter() - started
    return tally


def percentile_ms(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0] * 1000
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] * 1000


def summary(tally: Tally) -> dict[str, object]:
    return {
        "sent": tally.sent,
        "answered": tally.answered,
        "transport_errors": tally.transport_errors,
        "ok": tally.by_status.get(200, 0),
        "by_status": dict(sorted(tally.by_status.items())),
        "by_code": dict(sorted(tally.by_code.items())),
        "server_errors_5xx_unexpected": sum(
            n for s, n in tally.by_status.items() if s >= 500 and s not in (502, 503, 504)
        ),
        "throughput_ok_per_s": tally.by_status.get(200, 0) / tally.wall_s if tally.wall_s else 0.0,
        "p50_ms": percentile_ms(tally.latencies_ok, 0.50),
        "p90_ms": percentile_ms(tally.latencies_ok, 0.90),
        "p99_ms": percentile_ms(tally.latencies_ok, 0.99),
        "refusal_p50_ms": percentile_ms(tally.latencies_refused, 0.50),
        "refusal_p99_ms": percentile_ms(tally.latencies_refused, 0.99),
        "wall_s": tally.wall_s,
    }


async def run(
    server: str, mode: str, concurrency: int, rate: float, requests: int, limit_s: float
) -> dict[str, object]:
    images = payloads(64)
    if mode == "closed":
        tally = await closed_loop(server, images, concurrency, requests, limit_s)
    else:
        tally = await open_loop(server, images, rate, requests, limit_s)
    return summary(tally)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--mode", choices=["closed", "open"], default="closed")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s in open mode")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--time-limit-s", type=float, default=60.0)
    args = parser.parse_args()
    result = asyncio.run(
        run(args.server, args.mode, args.concurrency, args.rate, args.requests, args.time_limit_s)
    )
    print(json.dumps(result, indent=2))
    accounted = result["sent"] == result["answered"]  # transport errors are not answers
    return 0 if accounted else 1


if __name__ == "__main__":
    raise SystemExit(main())
