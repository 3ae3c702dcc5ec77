"""``/v1/extract`` and ``/v1/extract/batch``: admit, parse, one serving call, serialize."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from fashion_florence_client.problems import ErrorCode
from fashion_florence_client.protocol import (
    PRIORITY_HEADER,
    BatchFailure,
    BatchResponse,
    BatchSuccess,
    ExtractResponse,
    ItemError,
    Priority,
    TimingMs,
    UrlBatchRequest,
    UrlRequest,
)
from service.errors import ServiceError
from service.http.auth import require_api_key
from service.http.deps import get_extractor, model_ref
from service.http.disconnect import cancel_on_disconnect
from service.http.middleware import request_id_of
from service.http.openapi import problem_responses
from service.serving.extraction import Extraction, Extractor
from service.settings import Settings
from service.telemetry.record import current_record

router = APIRouter(prefix="/v1", tags=["extract"], dependencies=[Depends(require_api_key)])

#: Lets a caller shorten (never lengthen) the server's default deadline, in milliseconds.
TIMEOUT_HEADER = "x-request-timeout-ms"

#: The one multipart field the API reads; any other is refused.
IMAGE_FIELD = "image"

_FILE: dict[str, Any] = {
    "type": "string",
    "format": "binary",
    "contentMediaType": "application/octet-stream",
    "description": "An image file: a file part, i.e. with a filename in its "
    "Content-Disposition (a text field named `image` is refused with invalid_request). "
    "JPEG, PNG, WebP or GIF, judged by the bytes, never by the part's Content-Type.",
}


def _body_doc(image: dict[str, Any], json_body: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body that is either multipart (``image``) or JSON (URLs)."""
    multipart = {
        "type": "object",
        "properties": {IMAGE_FIELD: image},
        "required": [IMAGE_FIELD],
        # Refused, not ignored: a stray field is most often a parameter sent in the wrong
        # place (min_tag_confidence belongs in the query), which must not pass silently.
        "additionalProperties": False,
    }
    encoding = {IMAGE_FIELD: {"contentType": "application/octet-stream"}}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": multipart, "encoding": encoding},
                "application/json": {"schema": json_body.model_json_schema()},
            },
        }
    }


def _priority_doc(default: Priority) -> dict[str, Any]:
    """The ``X-Priority`` header's OpenAPI (read by hand, so a bad value is a problem+json
    ``invalid_request`` like every other)."""
    return {
        "name": PRIORITY_HEADER,
        "in": "header",
        "required": False,
        "schema": {"type": "string", "enum": [p.value for p in Priority], "default": default},
        "description": "Scheduling class: waiting interactive images run first (batch work "
        "keeps a guaranteed share, FF_BATCH_MIN_SHARE), and batch work may hold only "
        "FF_BATCH_ADMISSION_SHARE of the capacity. Backfills should send `batch`.",
    }


_REQUEST_BODY_DOC = _body_doc(_FILE, UrlRequest) | {
    "parameters": [_priority_doc(Priority.INTERACTIVE)]
}
# maxItems is the deployment's FF_MAX_BATCH_ITEMS, filled in by service.http.openapi.
_BATCH_BODY_DOC = _body_doc({"type": "array", "items": _FILE, "minItems": 1}, UrlBatchRequest) | {
    "parameters": [_priority_doc(Priority.BATCH)]
}


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _json_body(request: Request, model: type[UrlRequest] | type[UrlBatchRequest]) -> Any:
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        raise ServiceError(ErrorCode.INVALID_REQUEST, _validation_detail(exc)) from exc


def _validation_detail(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
    )


def _too_many_images(settings: Settings) -> ServiceError:
    return ServiceError(
        ErrorCode.TOO_MANY_ITEMS, f"at most {settings.max_batch_items} images per request"
    )


async def _uploaded_images(request: Request, settings: Settings) -> list[bytes]:
    try:
        # Multipart limits: files as configured (+1 to tell "too many"), few and small text
        # fields (the API reads none); the body cap bounds what the parser can spool.
        form = await request.form(
            max_files=settings.max_batch_items + 1, max_fields=8, max_part_size=64 * 1024
        )
    except StarletteHTTPException as exc:
        # The parser stops at max_files (so a huge batch is not spooled to disk first); that
        # is this API's too_many_items, not a malformed request.
        if str(exc.detail).startswith("Too many files"):
            raise _too_many_images(settings) from exc
        raise ServiceError(ErrorCode.INVALID_REQUEST, str(exc.detail)) from exc
    try:
        unknown = sorted(set(form.keys()) - {IMAGE_FIELD})
        if unknown:
            raise ServiceError(
                ErrorCode.INVALID_REQUEST,
                f"unknown multipart field(s) {', '.join(map(repr, unknown))}: send only "
                f"'{IMAGE_FIELD}' (min_tag_confidence is a query parameter)",
            )
        files = form.getlist(IMAGE_FIELD)
        if not files:
            raise ServiceError(ErrorCode.INVALID_REQUEST, "multipart field 'image' is missing")
        if len(files) > settings.max_batch_items:
            raise _too_many_images(settings)
        images = []
        for upload in files:
            if not isinstance(upload, UploadFile):
                raise ServiceError(ErrorCode.INVALID_REQUEST, "field 'image' must be a file upload")
            images.append(await upload.read())
        return images
    finally:
        await form.close()


def _unsupported(request: Request) -> ServiceError:
    return ServiceError(
        ErrorCode.UNSUPPORTED_MEDIA_TYPE,
        f"content type {_media_type(request)!r}: send multipart/form-data or application/json",
    )


def _deadline(request: Request, extractor: Extractor) -> float:
    raw = request.headers.get(TIMEOUT_HEADER)
    if raw is None:
        return extractor.deadline_after_ms(None)
    try:
        timeout_ms = float(raw)
    except ValueError:
        timeout_ms = -1.0
    if not 0 < timeout_ms < float("inf"):
        raise ServiceError(ErrorCode.INVALID_REQUEST, f"{TIMEOUT_HEADER} must be a positive number")
    return extractor.deadline_after_ms(timeout_ms)


def _priority(request: Request, default: Priority) -> Priority:
    raw = request.headers.get(PRIORITY_HEADER)
    if raw is None:
        return default
    try:
        return Priority(raw.strip().lower())
    except ValueError:
        allowed = " or ".join(p.value for p in Priority)
        raise ServiceError(
            ErrorCode.INVALID_REQUEST, f"{PRIORITY_HEADER} must be {allowed}"
        ) from None


async def _single_payload(request: Request, settings: Settings) -> bytes | str:
    media_type = _media_type(request)
    if media_type == "multipart/form-data":
        images = await _uploaded_images(request, settings)
        if len(images) != 1:
            raise ServiceError(
                ErrorCode.INVALID_REQUEST, "send exactly one 'image'; use /v1/extract/batch"
            )
        return images[0]
    if media_type == "application/json":
        return str((await _json_body(request, UrlRequest)).url)
    raise _unsupported(request)


MinTagConfidence = Annotated[
    float | None,
    Query(
        ge=0.0,
        le=1.0,
        # Without it "nan" parses as a float and is refused as "not <= 1", which misleads.
        allow_inf_nan=False,
        description="Drop tags whose confidence is below this; ignored (no tag dropped) when "
        "the service runs without constrained decoding, i.e. `confidence` is null.",
    ),
]


_EXTRACT_ERRORS = problem_responses(400, 401, 413, 415, 422, 499, 502, 503, 504)


@router.post(
    "/extract",
    response_model=ExtractResponse,
    openapi_extra=_REQUEST_BODY_DOC,
    responses=_EXTRACT_ERRORS,
)
async def extract(
    request: Request,
    extractor: Annotated[Extractor, Depends(get_extractor)],
    min_tag_confidence: MinTagConfidence = None,
) -> ExtractResponse:
    deadline = _deadline(request, extractor)
    # Admitted before the body is parsed: under overload the refusal costs microseconds.
    priority = _priority(request, Priority.INTERACTIVE)
    async with extractor.admit(1, priority) as permit:
        payload = await _single_payload(request, request.app.state.settings)
        result = await cancel_on_disconnect(
            request, extractor.extract(payload, permit, deadline, min_tag_confidence)
        )
    return ExtractResponse(
        request_id=request_id_of(request.scope),
        model=model_ref(request),
        attributes=result.attributes,
        confidence=result.confidence,
        timing_ms=TimingMs(
            queue=round(result.queue_ms, 3),
            inference=round(result.inference_ms, 3),
            total=round(_elapsed_ms(), 3),
        ),
    )


@router.post(
    "/extract/batch",
    response_model=BatchResponse,
    openapi_extra=_BATCH_BODY_DOC,
    responses=_EXTRACT_ERRORS,
)
async def extract_batch(
    request: Request,
    extractor: Annotated[Extractor, Depends(get_extractor)],
    min_tag_confidence: MinTagConfidence = None,
) -> BatchResponse:
    deadline = _deadline(request, extractor)
    # Refused before parsing when nothing could be admitted; each item takes its own image.
    priority = _priority(request, Priority.BATCH)
    async with extractor.admit(0, priority) as permit:
        payloads = await _batch_payloads(request, request.app.state.settings)
        results = await cancel_on_disconnect(
            request, extractor.extract_many(payloads, permit, deadline, min_tag_confidence)
        )
    return BatchResponse(
        request_id=request_id_of(request.scope),
        model=model_ref(request),
        results=[_batch_item(result) for result in results],
    )


async def _batch_payloads(request: Request, settings: Settings) -> list[bytes | str]:
    media_type = _media_type(request)
    if media_type == "multipart/form-data":
        return list(await _uploaded_images(request, settings))
    if media_type == "application/json":
        urls = (await _json_body(request, UrlBatchRequest)).urls
        if len(urls) > settings.max_batch_items:
            raise ServiceError(
                ErrorCode.TOO_MANY_ITEMS, f"at most {settings.max_batch_items} URLs per request"
            )
        return list(urls)
    raise _unsupported(request)


def _batch_item(result: Extraction | ServiceError) -> BatchSuccess | BatchFailure:
    if isinstance(result, ServiceError):
        return BatchFailure(error=ItemError(code=result.code.value, detail=result.detail))
    return BatchSuccess(attributes=result.attributes, confidence=result.confidence)


def _elapsed_ms() -> float:
    """Since the request arrived, from its record (the one latency measurement)."""
    record = current_record()
    # None only for a router mounted without the observing middleware (never by create_app).
    return record.elapsed_ms() if record is not None else 0.0
