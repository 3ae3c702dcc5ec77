"""Structured logs: one line per request, JSON (default) or plain text (``FF_LOG_FORMAT``).

What a line may hold is an allowlist, not a filter: request id, method, route template,
status, latency, queue wait, batch size, images, cache hits and the problem ``code``, all
read from the request's record. Never the raw path (it may carry a query string), headers
(API keys), URLs from the body or image bytes: the record holds none of them.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, Final

from service.telemetry.record import RequestRecord

ACCESS_LOGGER: Final = "service.access"
#: Probes and scrapes arrive every few seconds per replica: logged at DEBUG only.
QUIET_ROUTES: Final = frozenset({"/healthz", "/readyz", "/metrics"})
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


class AccessLog:
    """One line per HTTP request, from its closed :class:`RequestRecord`."""

    def __init__(self) -> None:
        self.log = logging.getLogger(ACCESS_LOGGER)

    def write(self, record: RequestRecord) -> None:
        fields: dict[str, Any] = {
            "request_id": record.request_id,
            "method": record.method,
            "route": record.route,
            "status": record.status,
            "latency_ms": None if record.latency_s is None else round(record.latency_s * 1000, 3),
            "queue_ms": None if record.queue_ms is None else round(record.queue_ms, 3),
            "batch_size": record.batch_size,
            "images": record.images,
            "cache_hits": record.cache_hits,
            "error_code": record.error_code,
        }
        level = logging.DEBUG if record.route in QUIET_ROUTES else logging.INFO
        self.log.log(level, "%s %s %d", record.method, record.route, record.status, extra=fields)
