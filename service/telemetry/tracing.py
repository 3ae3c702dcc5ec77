"""Optional tracing spans.

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
from typing import Any, Final

log = logging.getLogger(__name__)

TRACER_NAME: Final = "fashion-florence"


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
        """A span after the fact, from ``time.monotonic()`` stamps (queue and inference
        happen on the batcher, not in the request's own code)."""
        if self._tracer is None:
            return
        offset_ns = time.time_ns() - time.monotonic_ns()
        span = self._tracer.start_span(
            f"ff.{name}", start_time=offset_ns + int(started * 1e9), attributes=attributes
        )
        span.end(end_time=offset_ns + int(finished * 1e9))
