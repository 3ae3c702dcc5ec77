"""The behaviour rows: the same scripted cases against every server.

1. ``corrupt``: 16 concurrent uploads, one a truncated JPEG; how many of the 15 good
   ones are answered with a 200 (ours isolates the bad item; a batch that fails as one
   takes the good ones with it).
2. ``disconnect``: a backlog of good uploads, then uploads whose clients hang up before
   their turn; does the model still run them? (images the model ran, minus the backlog).
3. ``deadline``: the same, but the late clients stay and send ``X-Request-Timeout-Ms``
   (our deadline header), which passes while they are queued; what they are answered, and
   whether the model ran them. Peers have no per-request deadline: the header is ignored.
4. ``overload``: a burst of concurrent uploads past our admission bound: the statuses,
   whether refusals carry ``Retry-After``, and how fast they come.
5. ``metrics``: what ``/metrics`` shows of batch size and queue wait.

Every request goes to 127.0.0.1 over raw asyncio streams (headers are read, which
:mod:`bench.rawhttp` does not keep); every case is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from bench.load import percentile_ms
from bench.peers.servers import Served
from bench.rawhttp import encode_upload, read_chunked

CASE_TIMEOUT_S: Final = 120.0
BACKLOG: Final = 48
LATE: Final = 16
#: Past our admission bound (FF_QUEUE_SIZE + FF_MAX_BATCH_SIZE = 272 by default).
BURST: Final = 400
BATCH_SIZE_NAMES: Final = re.compile(r"^(ff_batch_size|bentoml_service_adaptive_batch_size|"
                                     r"ray_serve_actual_batch_size)\w*", re.M)  # fmt: skip
QUEUE_WAIT_NAMES: Final = re.compile(r"^(ff_queue_wait_seconds|ray_serve_batch_wait_time_ms)\w*",
                                     re.M)  # fmt: skip


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    seconds: float


def with_header(request: bytes, name: str, value: str) -> bytes:
    head, sep, body = request.partition(b"\r\n\r\n")
    return head + f"\r\n{name}: {value}".encode() + sep + body


async def send(
    base_url: str, request: bytes, *, hang_up_after_s: float | None = None
) -> Reply | None:
    """One request on its own connection; None when we hung up (``hang_up_after_s``)."""
    parts = urlsplit(base_url)
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(request)
        await writer.drain()
        if hang_up_after_s is not None:
            await asyncio.sleep(hang_up_after_s)
            return None
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            await read_chunked(reader)
        elif length := int(headers.get("content-length", "0")):
            await reader.readexactly(length)
        return Reply(int(lines[0].split(" ", 2)[1]), headers, time.perf_counter() - started)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _gather(*calls: Any) -> list[Any]:
    return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), CASE_TIMEOUT_S)


def _statuses(replies: list[Any]) -> dict[str, int]:
    return dict(Counter(str(r.status) if isinstance(r, Reply) else type(r).__name__
                        for r in replies))  # fmt: skip


async def corrupt(server: Served, good: list[bytes], trials: int) -> dict[str, Any]:
    authority = urlsplit(server.base_url).netloc
    bad = encode_upload(authority, good[0][: len(good[0]) // 3])  # a truncated JPEG
    answered = 0
    for trial in range(trials):
        requests = [encode_upload(authority, good[(trial + i) % len(good)]) for i in range(15)]
        requests.insert(trial % 16, bad)
        replies = await _gather(*(send(server.base_url, r) for r in requests))
        del replies[trial % 16]
        answered += sum(isinstance(r, Reply) and r.status == 200 for r in replies)
    return {"good_answered": answered, "good_sent": 15 * trials, "trials": trials}


async def late_clients(
    server: Served, good: list[bytes], *, deadline_ms: int | None
) -> dict[str, Any]:
    """A backlog, then LATE uploads that hang up (``deadline_ms`` None) or that carry a
    deadline which passes while they are queued. Counts what the model ran."""
    authority = urlsplit(server.base_url).netloc
    before = server.snapshot().images
    backlog = [encode_upload(authority, good[i % len(good)]) for i in range(BACKLOG)]
    late = [encode_upload(authority, good[i % len(good)]) for i in range(LATE)]
    if deadline_ms is not None:
        late = [with_header(r, "X-Request-Timeout-Ms", str(deadline_ms)) for r in late]
    first = [asyncio.create_task(send(server.base_url, r)) for r in backlog]
    await asyncio.sleep(0.05)  # the backlog is in before the late ones
    hang_up = 0.05 if deadline_ms is None else None
    late_replies = await _gather(*(send(server.base_url, r, hang_up_after_s=hang_up) for r in late))
    backlog_replies = await _gather(*first)
    ran = await _settled_count(server, before)
    backlog_ok = sum(isinstance(r, Reply) and r.status == 200 for r in backlog_replies)
    return {
        "backlog_ok": backlog_ok,
        "late": LATE,
        "late_statuses": _statuses([r for r in late_replies if r is not None]),
        "late_run_by_model": max(0, ran - BACKLOG),
        "model_images": ran,
    }


async def _settled_count(server: Served, before: int) -> int:
    """Images run since ``before``, once the count stops moving (hung-up work may run
    after every client has gone)."""
    last, stable_since = -1, time.perf_counter()
    while time.perf_counter() - stable_since < 1.5:
        await asyncio.sleep(0.25)
        count = (await asyncio.to_thread(server.snapshot)).images
        if count != last:
            last, stable_since = count, time.perf_counter()
    return last - before


async def overload(server: Served, good: list[bytes]) -> dict[str, Any]:
    authority = urlsplit(server.base_url).netloc
    requests = [encode_upload(authority, good[i % len(good)]) for i in range(BURST)]
    replies = await _gather(*(send(server.base_url, r) for r in requests))
    refused = [r for r in replies if isinstance(r, Reply) and r.status != 200]
    return {
        "sent": BURST,
        "statuses": _statuses(replies),
        "refused_with_retry_after": sum("retry-after" in r.headers for r in refused),
        "refused": len(refused),
        "refusal_p99_ms": percentile_ms([r.seconds for r in refused], 0.99),
    }


def metrics(server: Served, *, export_wait_s: float = 20.0) -> dict[str, Any]:
    """The series ``/metrics`` has. Ray exports from its own agent, every few seconds: a
    scrape there is retried for ``export_wait_s`` until a batch series shows."""
    if server.metrics_url is None:
        return {"url": None}
    own_port = server.metrics_url.startswith(server.base_url)
    waited_until = time.perf_counter() + (0.0 if own_port else export_wait_s)
    while True:
        try:
            response = httpx.get(server.metrics_url, timeout=10, trust_env=False)
        except httpx.TransportError as exc:
            return {"url": server.metrics_url, "error": type(exc).__name__}
        text = response.text if response.status_code == 200 else ""
        if BATCH_SIZE_NAMES.search(text) or time.perf_counter() > waited_until:
            break
        time.sleep(1.0)
    return {
        "url": server.metrics_url.replace(server.base_url, ""),
        "status": response.status_code,
        "batch_size": sorted(set(BATCH_SIZE_NAMES.findall(text))),
        "queue_wait": sorted(set(QUEUE_WAIT_NAMES.findall(text))),
    }


async def _rows(
    server: Served, good: list[bytes], trials: int, corrupt_only: bool
) -> dict[str, Any]:
    if corrupt_only:
        return {"corrupt": await corrupt(server, good, trials)}
    return {
        "corrupt": await corrupt(server, good, trials),
        "disconnect": await late_clients(server, good, deadline_ms=None),
        "deadline": await late_clients(server, good, deadline_ms=100),
        "overload": await overload(server, good),
    }


def behaviour_rows(
    server: Served, good: list[bytes], *, trials: int = 10, corrupt_only: bool = False
) -> dict[str, Any]:
    """Every case (``corrupt_only``: the corrupt case and /metrics, for smoke runs)."""
    rows = asyncio.run(_rows(server, good, trials, corrupt_only))
    rows["metrics"] = metrics(server)
    return rows
