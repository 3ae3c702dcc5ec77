"""What one request observed on its way through the service, and optional tracing spans.

The access log line is written by HTTP middleware, but the queue wait and batch size are
only known deep in the extractor. A context variable carries a per-request record between
them, so the extractor needs no HTTP types and the routes need no logging code: tasks the
request spawns (disconnect watching, batch items) copy the context and so share the
record.

Tracing (OpenTelemetry) is optional: the service never depends on its packages. With
``FF_TRACING_ENABLED`` on and ``opentelemetry-api`` importable, the extractor opens spans
named ``ff.fetch``, ``ff.decode``, ``ff.queue`` and ``ff.inference``; where they go is the
deployment's choice (an SDK with an exporter, e.g. ``opentelemetry-instrument``). Without
the SDK the API's tracer is a no-op; without the API, or disabled, nothing is called.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger(__name__)

TRACER_NAME: Final = "fashion-florence"


@dataclass(slots=True)
class RequestRecord:
    images: int = 0  # images answered (by the engine or the cache)
    cache_hits: int = 0
    queue_ms: float | None = None  # the longest queue wait among the request's images
    batch_size: int | None = None  # the largest engine batch one of them ran in


_current: ContextVar[RequestRecord | None] = ContextVar("ff_request_record", default=None)


def begin_request() -> tuple[RequestRecord, Token[RequestRecord | None]]:
    record = RequestRecord()
    return record, _current.set(record)


def end_request(token: Token[RequestRecord | None]) -> None:
    _current.reset(token)


def note_inference(queue_ms: float, batch_size: int) -> None:
    record = _current.get()
    if record is None:  # not inside an HTTP request (e.g. a direct Extractor caller)
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


def _load_otel_trace() -> Any | None:
    # importlib, not an import statement: the packages are optional and mypy must not
    # need them either.
    try:
        return importlib.import_module("opentelemetry.trace")
    except ImportError:
        return None


class Tracer:
    """Spans when enabled and OpenTelemetry is installed; otherwise every call is a no-op."""

    def __init__(self, enabled: bool) -> None:
        self._tracer: Any | None = None
        if not enabled:
            return
        trace = _load_otel_trace()
        if trace is None:
            log.warning("FF_TRACING_ENABLED is set but opentelemetry-api is not installed")
            return
        self._tracer = trace.get_tracer(TRACER_NAME)

    @property
    def active(self) -> bool:
        return self._tracer is not None

    def span(self, name: str) -> AbstractContextManager[Any]:
        if self._tracer is None:
            return nullcontext()
        return self._live_span(name)

    @contextmanager
    def _live_span(self, name: str) -> Iterator[Any]:
        assert self._tracer is not None
        with self._tracer.start_as_current_span(f"ff.{name}") as span:
            yield span

    def record(self, name: str, started: float, finished: float, **attributes: Any) -> None:
        """A span after the fact, from ``time.perf_counter()`` stamps (queue and inference
        happen on the batcher, not in the request's own code)."""
        if self._tracer is None:
            return
        offset_ns = time.time_ns() - time.perf_counter_ns()
        span = self._tracer.start_span(
            f"ff.{name}", start_time=offset_ns + int(started * 1e9), attributes=attributes
        )
        span.end(end_time=offset_ns + int(finished * 1e9))
