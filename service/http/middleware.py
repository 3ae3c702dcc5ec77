"""Pure-ASGI middleware: request ids, the per-request record (metrics and access log) and
the request body cap.

Pure ASGI (not BaseHTTPMiddleware) so bodies stream through untouched and nothing is
buffered or copied per request.
"""

from __future__ import annotations

import json
import random
import re
from typing import Final

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fashion_florence_client.problems import PROBLEM_CONTENT_TYPE, ErrorCode
from service.errors import problem_body
from service.telemetry.logs import AccessLog
from service.telemetry.metrics import ServiceMetrics
from service.telemetry.record import note_error, open_record, reset_record

REQUEST_ID_HEADER: Final = "x-request-id"
#: What a client's own X-Request-ID must look like to be echoed (else one is minted).
REQUEST_ID_PATTERN: Final = r"^[A-Za-z0-9._:\-]{1,128}$"
_VALID_REQUEST_ID: Final = re.compile(REQUEST_ID_PATTERN)


def new_request_id() -> str:
    """32 hex digits. A correlation id, not a secret: the process's PRNG is enough, and
    ``uuid4`` (a getrandom syscall per request) cost 7% of the event loop under load in a
    sandboxed kernel where syscalls are dear."""
    return f"{random.getrandbits(128):032x}"


def request_id_of(scope: Scope) -> str:
    return str(scope.get("state", {}).get("request_id", ""))


class RequestIdMiddleware:
    """Echo a sane client ``X-Request-ID`` or mint one; expose it to handlers via state."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = sent if _VALID_REQUEST_ID.match(sent) else new_request_id()
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        await self.app(scope, receive, send_with_id)


def route_label(scope: Scope) -> str:
    """The matched route's template, never the raw path: unknown paths must not mint new
    label values. FastAPI puts its own routes in the scope; the plain routes it adds for
    the docs (``/openapi.json``, ``/docs``, ``/redoc``, ...) only leave their endpoint there,
    so they are found by it, among the app's routes."""
    route = scope.get("route")
    if route is None and "endpoint" in scope and "app" in scope:
        endpoint = scope["endpoint"]
        routes = getattr(scope["app"], "routes", ())
        route = next((r for r in routes if getattr(r, "endpoint", None) is endpoint), None)
    return str(getattr(route, "path", "unmatched"))


class ObserveMiddleware:
    """Open the request's record, note its status, and once the answer is sent hand the
    closed record to metrics and the access log: one measurement for both.

    Sits inside ``RequestIdMiddleware`` (the id is set) and outside the body limit (its
    413s are observed too).
    """

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics, access_log: AccessLog) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record, token = open_record(request_id_of(scope), str(scope.get("method", "")))

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except Exception:
            # Unhandled: Starlette's outermost handler answers 500 internal_error after
            # this middleware has returned, so the record says it here.
            record.error_code = record.error_code or ErrorCode.INTERNAL_ERROR.value
            raise
        finally:
            reset_record(token)
            record.close()
            record.route = route_label(scope)
            self.metrics.observe_request(record)
            self.access_log.write(record)


class BodyLimitMiddleware:
    """Refuse bodies over ``max_body_bytes`` with 413, by header and while streaming."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        # A declared length is only a shortcut: the bytes are counted below whatever it says
        # (chunked bodies have none, and a length can lie low). Over 18 digits is over any
        # limit, and int() of thousands of digits would raise instead of answering 413.
        if (
            declared is not None
            and declared.isdigit()
            and (len(declared) > 18 or int(declared) > self.max_body_bytes)
        ):
            await self._reject(scope, send)
            return
        received = 0
        too_large = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            if too_large:
                raise _BodyTooLargeError  # an app that retries after the refusal gets it again
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    too_large = True
                    raise _BodyTooLargeError
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if too_large:
                # The app turned the refusal into an answer of its own (a broad handler's
                # 400 or 500): the client gets the 413 instead.
                if not response_started:
                    response_started = True
                    await self._reject(scope, send)
                return
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            # Whatever the refusal became on its way out (the error itself, or wrapped in an
            # ExceptionGroup by a task group) it is still a 413; anything else propagates.
            if not too_large:
                raise
        if too_large and not response_started:
            await self._reject(scope, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        detail = f"request body exceeds {self.max_body_bytes} bytes"
        body = json.dumps(problem_body(ErrorCode.PAYLOAD_TOO_LARGE, detail)).encode()
        note_error(ErrorCode.PAYLOAD_TOO_LARGE.value)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _BodyTooLargeError(Exception):
    pass
