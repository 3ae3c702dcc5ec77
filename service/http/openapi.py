"""OpenAPI glue for the HTTP layer: which problem responses a route documents, and the
parts of the contract FastAPI does not derive from the routes (the bearer scheme, the
headers every response carries, this deployment's batch limit).

The bodies themselves are the client distribution's wire models
(``fashion_florence_client.protocol`` and ``.problems``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from fastapi import FastAPI

from fashion_florence_client.problems import PROBLEM_CONTENT_TYPE, Problem, codes_with_status
from service.http.middleware import REQUEST_ID_PATTERN

REQUEST_ID_HEADER: Final = "X-Request-ID"

BEARER_SCHEME: Final = "bearerAuth"
BATCH_PATH: Final = "/v1/extract/batch"

_REQUEST_ID_DOC: Final = {
    "description": "The request's id: the client's own when it sent a sane one "
    "(1-128 of `A-Za-z0-9._:-`), else a fresh one. On every response.",
    "required": True,
    "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN},
}
_RETRY_AFTER_DOC: Final = {
    "description": "Seconds to wait before retrying (on every 503).",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}
_CHALLENGE_DOC: Final = {
    "description": "The bearer challenge (RFC 6750).",
    "required": True,
    "schema": {"type": "string", "pattern": "^Bearer( |$)"},
}
_BEARER_DOC: Final = {
    "type": "http",
    "scheme": "bearer",
    "description": "An API key, `Authorization: Bearer <key>`. Required on `/v1/*` only "
    "where the deployment configures keys (FF_API_KEYS / FF_API_KEY_SHA256); the operations "
    "list it under `security` exactly then.",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route can return, each naming
    the stable codes its problem can carry."""
    schema = {"$ref": "#/components/schemas/Problem"}
    return {
        status: {
            "model": Problem,
            "description": "A problem; `code` is one of "
            + ", ".join(f"`{code.value}`" for code in codes_with_status(status)),
            "content": {PROBLEM_CONTENT_TYPE: {"schema": schema}},
        }
        for status in statuses
    }


def install_openapi(app: FastAPI, *, auth_required: bool, max_batch_items: int) -> None:
    """Make ``app.openapi()`` also say what the routes cannot: see :func:`complete_spec`."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        # FastAPI caches (and on a route change regenerates) the dict; completing it is
        # idempotent, so it is simply done on every call.
        return complete_spec(generate(), auth_required, max_batch_items)

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def complete_spec(
    spec: dict[str, Any], auth_required: bool, max_batch_items: int
) -> dict[str, Any]:
    """The bearer scheme (required on ``/v1/*`` when keys are configured), the response
    headers, and the batch limit, added to ``spec`` in place."""
    components = spec.setdefault("components", {})
    components.setdefault("securitySchemes", {})[BEARER_SCHEME] = dict(_BEARER_DOC)
    for path, item in spec.get("paths", {}).items():
        for operation in item.values():
            if auth_required and path.startswith("/v1/"):
                operation["security"] = [{BEARER_SCHEME: []}]
            for status, response in operation.get("responses", {}).items():
                response["headers"] = _headers_for(str(status), response.get("headers", {}))
    _limit_batch(spec, max_batch_items)
    return spec


def _headers_for(status: str, headers: dict[str, Any]) -> dict[str, Any]:
    headers = {**headers, REQUEST_ID_HEADER: _REQUEST_ID_DOC}
    if status == "503":
        headers["Retry-After"] = _RETRY_AFTER_DOC
    if status == "401":
        headers["WWW-Authenticate"] = _CHALLENGE_DOC
    return headers


def _limit_batch(spec: dict[str, Any], max_batch_items: int) -> None:
    """``maxItems`` on both batch bodies: the limit is a setting, unknown to the routes."""
    content = spec.get("paths", {}).get(BATCH_PATH, {}).get("post", {}).get("requestBody", {})
    for media_type, field in (("multipart/form-data", "image"), ("application/json", "urls")):
        schema = content.get("content", {}).get(media_type, {}).get("schema", {})
        if field in schema.get("properties", {}):
            schema["properties"][field]["maxItems"] = max_batch_items
