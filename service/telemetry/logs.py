"""Structured logs: one line per request, JSON (default) or plain text (``FF_LOG_FORMAT``).

What a line may hold is an allowlist, not a filter: request id, method, route template,
status, latency, queue wait, batch size, images, cache hits and the problem ``code``.
Never the raw path (it may carry a query string), headers (API keys), URLs from the body
or image bytes: the middleware never reads any of them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any, Final

from fashion_florence_client.problems import PROBLEM_CONTENT_TYPE
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.telemetry.tracing import begin_request, end_request

ACCESS_LOGGER: Final = "service.access"
#: Probes and scrapes arrive every few seconds per replica: logged at DEBUG only.
QUIET_ROUTES: Final = frozenset({"/healthz", "/readyz", "/metrics"})
#: A problem body is a few hundred bytes; more than this is not one worth parsing.
_PROBLEM_BODY_MAX: Final = 4096
#: Attributes every LogRecord has; anything else passed in ``extra`` is a structured field.
_STANDARD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


#: Other modules log URLs (e.g. why a fetch was refused); their query strings may hold
#: signed tokens. Redacted in the formatter, so no caller can forget.
_URL_QUERY: Final = re.compile(r"(https?://[^\s'\"?#]*)[?#][^\s'\"]*", re.IGNORECASE)
_BEARER: Final = re.compile(r"(bearer\s+)[^\s'\"]+", re.IGNORECASE)


def redact(text: str) -> str:
    return _BEARER.sub(r"\1<redacted>", _URL_QUERY.sub(r"\1?<redacted>", text))


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(line, default=str, separators=(",", ":")))


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = _fields(record)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return redact(text)


def configure_logging(log_format: str, level: str) -> None:
    """One stderr handler on the root logger (replacing any), in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else PlainFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class AccessLogMiddleware:
    """One line per HTTP request, after the response, with what the request observed.

    Sits inside ``RequestIdMiddleware`` (the id is set) and outside the body limit (its
    413s are logged too). Pure ASGI: the body streams through; only a problem+json answer
    is peeked at, for its ``code``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        problem: bytearray | None = None

        async def observing_send(message: Message) -> None:
            nonlocal status, problem
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = dict(message.get("headers", []))
                if headers.get(b"content-type", b"").startswith(PROBLEM_CONTENT_TYPE.encode()):
                    problem = bytearray()
            elif message["type"] == "http.response.body" and problem is not None:
                # Bounded: at most the first _PROBLEM_BODY_MAX bytes are kept.
                problem += message.get("body", b"")[: max(0, _PROBLEM_BODY_MAX - len(problem))]
            await send(message)

        record, token = begin_request()
        try:
            await self.app(scope, receive, observing_send)
        finally:
            end_request(token)
            route = str(getattr(scope.get("route"), "path", "unmatched"))
            fields: dict[str, Any] = {
                "request_id": str(scope.get("state", {}).get("request_id", "")),
                "method": scope.get("method", ""),
                "route": route,
                "status": status,
                "latency_ms": round((time.perf_counter() - started) * 1000.0, 3),
                "queue_ms": None if record.queue_ms is None else round(record.queue_ms, 3),
                "batch_size": record.batch_size,
                "images": record.images,
                "cache_hits": record.cache_hits,
                "error_code": _problem_code(problem),
            }
            level = logging.DEBUG if route in QUIET_ROUTES else logging.INFO
            self.log.log(level, "%s %s %d", fields["method"], route, status, extra=fields)


def _problem_code(body: bytearray | None) -> str | None:
    if not body:
        return None
    try:
        code = json.loads(bytes(body)).get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) else None
