"""Problem details (RFC 9457) and the stable error codes of the Fashion Florence API.

Every error the API returns is ``application/problem+json`` with ``type``, ``title``,
``status``, ``detail`` and ``code``. Codes are part of the public contract: add, never
rename, never remove. Clients branch on ``code``; the README's error table mirrors
:data:`ERROR_CATALOGUE`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from pydantic import BaseModel, Field


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    TOO_MANY_ITEMS = "too_many_items"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNSUPPORTED_IMAGE_FORMAT = "unsupported_image_format"
    INVALID_IMAGE = "invalid_image"
    IMAGE_TOO_LARGE = "image_too_large"
    URL_NOT_ALLOWED = "url_not_allowed"
    URL_FETCH_FAILED = "url_fetch_failed"
    URL_FETCH_TIMEOUT = "url_fetch_timeout"
    QUEUE_FULL = "queue_full"
    DRAINING = "draining"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNAUTHORIZED = "unauthorized"
    CLIENT_CLOSED_REQUEST = "client_closed_request"
    NOT_READY = "not_ready"
    INVALID_MODEL_OUTPUT = "invalid_model_output"
    ENGINE_ERROR = "engine_error"
    ENGINE_OOM = "engine_oom"
    ENGINE_RESTARTING = "engine_restarting"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    status: int
    title: str


ERROR_CATALOGUE: Final[Mapping[ErrorCode, ErrorSpec]] = {
    ErrorCode.INVALID_REQUEST: ErrorSpec(400, "The request is malformed"),
    ErrorCode.PAYLOAD_TOO_LARGE: ErrorSpec(413, "The request body is too large"),
    ErrorCode.TOO_MANY_ITEMS: ErrorSpec(413, "The batch has too many items"),
    # The request's own content type (not multipart/JSON); the image's format is below.
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: ErrorSpec(415, "The request content type is not supported"),
    ErrorCode.UNSUPPORTED_IMAGE_FORMAT: ErrorSpec(415, "The image format is not supported"),
    ErrorCode.INVALID_IMAGE: ErrorSpec(422, "The image could not be decoded"),
    ErrorCode.IMAGE_TOO_LARGE: ErrorSpec(413, "The image is too large"),
    ErrorCode.URL_NOT_ALLOWED: ErrorSpec(400, "The image URL is not allowed"),
    ErrorCode.URL_FETCH_FAILED: ErrorSpec(502, "The image URL could not be fetched"),
    # No longer returned: a timeout is url_fetch_failed like every other network failure,
    # so the answer does not tell a filtered port from a refused one. Kept: codes are never
    # removed.
    ErrorCode.URL_FETCH_TIMEOUT: ErrorSpec(504, "Fetching the image URL timed out"),
    ErrorCode.QUEUE_FULL: ErrorSpec(503, "The service is at capacity"),
    ErrorCode.DRAINING: ErrorSpec(503, "The service is shutting down"),
    ErrorCode.DEADLINE_EXCEEDED: ErrorSpec(504, "The request deadline passed before inference"),
    ErrorCode.UNAUTHORIZED: ErrorSpec(401, "A valid API key is required"),
    # nginx's convention: the client left before the answer; nobody reads this response,
    # it exists so logs and metrics count the cancellation.
    ErrorCode.CLIENT_CLOSED_REQUEST: ErrorSpec(499, "The client closed the request"),
    ErrorCode.NOT_READY: ErrorSpec(503, "The model is not ready"),
    # The model answered, but not with schema-valid JSON: a server-side failure of the
    # upstream model, hence a 5xx that is not 500 (retrying the same image will not help).
    ErrorCode.INVALID_MODEL_OUTPUT: ErrorSpec(502, "The model output did not match the schema"),
    ErrorCode.ENGINE_ERROR: ErrorSpec(503, "The inference engine failed"),
    ErrorCode.ENGINE_OOM: ErrorSpec(503, "The image did not fit in device memory"),
    # The engine core died and is being restarted: nothing of the request was lost, retry.
    ErrorCode.ENGINE_RESTARTING: ErrorSpec(503, "The inference engine is restarting"),
    ErrorCode.NOT_FOUND: ErrorSpec(404, "Not found"),
    ErrorCode.METHOD_NOT_ALLOWED: ErrorSpec(405, "Method not allowed"),
    ErrorCode.INTERNAL_ERROR: ErrorSpec(500, "Internal error"),
}

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
PROBLEM_TYPE_BASE: Final = "https://fashion-florence.dev/problems/"


def codes_with_status(status: int) -> list[ErrorCode]:
    """The codes a problem with this HTTP status can carry."""
    return [code for code, spec in ERROR_CATALOGUE.items() if spec.status == status]


_CODE_DOC = (
    "Stable error code; branch on it, not on `detail`. New codes may be added, so treat an "
    "unknown one by its `status`. The codes: "
    + "; ".join(f"`{code.value}` ({spec.status})" for code, spec in ERROR_CATALOGUE.items())
    + "."
)


class Problem(BaseModel):
    """RFC 9457 problem details; ``code`` is the stable, machine-readable part."""

    type: str
    title: str
    status: int
    detail: str
    # A plain string, not an enum: a client built today must still parse a code added later.
    code: str = Field(description=_CODE_DOC, examples=[code.value for code in ErrorCode])
    instance: str | None = None
