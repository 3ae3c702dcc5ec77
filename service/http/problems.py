"""Render every error as ``application/problem+json`` with a stable ``code``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fashion_florence_client.problems import PROBLEM_CONTENT_TYPE, ErrorCode
from service.errors import ServiceError, problem_body
from service.http.middleware import REQUEST_ID_HEADER, new_request_id, request_id_of
from service.telemetry.record import note_error

log = logging.getLogger(__name__)

_HTTP_CODES = {
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
}

#: Retry-After (seconds) for a 503 whose raiser set none: the contract puts one on every
#: 503. A model still loading takes a while; an engine failure is worth a prompt retry.
_DEFAULT_RETRY_AFTER_S = {ErrorCode.NOT_READY: "5"}


def problem_response(
    code: ErrorCode, detail: str, request: Request, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = problem_body(code, detail, instance=request.url.path)
    status = int(str(body["status"]))
    headers = dict(headers or {})
    if status == 503 and not any(name.lower() == "retry-after" for name in headers):
        headers["Retry-After"] = _DEFAULT_RETRY_AFTER_S.get(code, "1")
    note_error(code.value)  # counted and logged from the record, once
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return problem_response(exc.code, exc.detail, request, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return problem_response(ErrorCode.INVALID_REQUEST, "; ".join(parts), request)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, ErrorCode.INVALID_REQUEST)
    return problem_response(code, str(exc.detail), request, dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    # This answer is sent by Starlette's outermost middleware, outside the request-id one,
    # so it carries the id itself.
    headers = {REQUEST_ID_HEADER: request_id_of(request.scope) or new_request_id()}
    return problem_response(ErrorCode.INTERNAL_ERROR, "unexpected server error", request, headers)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
