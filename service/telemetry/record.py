"""What one HTTP request observed on its way through the service, written once.

The observing middleware opens a record when a request arrives and closes it when the
answer has been sent; in between, whoever learns something writes it here: the serving
layer its queue wait and batch size, the problem renderer the error ``code``, a batch its
per-item failures. Metrics and the access log then read the same closed record, so
latency, status and codes are measured once and can never disagree.

A context variable carries the record, so the serving layer needs no HTTP types and the
routes need no logging code: tasks the request spawns (disconnect watching, batch items)
copy the context and so share the record.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token
from dataclasses import dataclass, field


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    method: str
    started: float = field(default_factory=time.perf_counter)
    route: str = "unmatched"  # the route template, never the raw path
    status: int = 500  # until a response starts: a request that dies unanswered is a 500
    latency_s: float | None = None  # set once, when the answer has been sent
    error_code: str | None = None  # the problem ``code`` of the answer, if it is one
    item_errors: list[str] = field(default_factory=list)  # codes of failed batch items
    images: int = 0  # images answered (by the engine or the cache)
    cache_hits: int = 0
    queue_ms: float | None = None  # the longest queue wait among the request's images
    batch_size: int | None = None  # the largest engine batch one of them ran in

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000.0

    def close(self) -> None:
        self.latency_s = time.perf_counter() - self.started


_current: ContextVar[RequestRecord | None] = ContextVar("ff_request_record", default=None)


def open_record(request_id: str, method: str) -> tuple[RequestRecord, Token[RequestRecord | None]]:
    record = RequestRecord(request_id, method)
    return record, _current.set(record)


def reset_record(token: Token[RequestRecord | None]) -> None:
    _current.reset(token)


def current_record() -> RequestRecord | None:
    """The record of the request being served; None outside an HTTP request (a direct
    caller of the serving layer, a benchmark)."""
    return _current.get()


def note_inference(queue_ms: float, batch_size: int) -> None:
    record = _current.get()
    if record is None:
        return
    record.images += 1
    record.queue_ms = queue_ms if record.queue_ms is None else max(record.queue_ms, queue_ms)
    record.batch_size = (
        batch_size if record.batch_size is None else max(record.batch_size, batch_size)
    )


def note_cache_hit() -> None:
    record = _current.get()
    if record is not None:
        record.images += 1
        record.cache_hits += 1


def note_error(code: str) -> None:
    """The answer is a problem with this code (the last one written wins: a body-limit
    refusal replaces whatever the app made of it)."""
    record = _current.get()
    if record is not None:
        record.error_code = code


def note_item_error(code: str) -> None:
    """One item of a batch answer failed with this code (the answer itself is a 200)."""
    record = _current.get()
    if record is not None:
        record.item_errors.append(code)
