"""Request and response bodies of the public API (also the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

from model_store.schema import FashionAttributes
from service.decoding.confidence import AttributeConfidence

_CONFIDENCE_DOC = (
    "Per-value confidence in [0, 1], shaped like `attributes`; null when the service runs "
    "without constrained decoding."
)

#: Documented shape of an image URL. Enforced by the fetcher (``url_not_allowed``), not by
#: request validation, so a wrong scheme gets its own stable code rather than a generic 400.
URL_SCHEMA: dict[str, Any] = {"pattern": "^[hH][tT][tT][pP][sS]?://", "format": "uri"}


class UrlRequest(BaseModel):
    url: str = Field(
        min_length=1,
        max_length=8192,
        description="http(s) URL of the image",
        json_schema_extra=URL_SCHEMA,
    )


class UrlBatchRequest(BaseModel):
    urls: list[Annotated[str, Field(max_length=8192, json_schema_extra=URL_SCHEMA)]] = Field(
        min_length=1, description="http(s) URLs, answered in this order"
    )


class Problem(BaseModel):
    """RFC 9457 problem details; ``code`` is the stable, machine-readable part."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses a route can return."""
    schema = {"$ref": "#/components/schemas/Problem"}
    return {
        status: {"model": Problem, "content": {"application/problem+json": {"schema": schema}}}
        for status in statuses
    }


class ModelRef(BaseModel):
    name: str
    revision: str


class TimingMs(BaseModel):
    queue: float
    inference: float
    total: float


class ExtractResponse(BaseModel):
    request_id: str
    model: ModelRef
    attributes: FashionAttributes
    confidence: AttributeConfidence | None = Field(default=None, description=_CONFIDENCE_DOC)
    timing_ms: TimingMs


class ItemError(BaseModel):
    code: str
    detail: str


class BatchSuccess(BaseModel):
    attributes: FashionAttributes
    confidence: AttributeConfidence | None = Field(default=None, description=_CONFIDENCE_DOC)


class BatchFailure(BaseModel):
    error: ItemError


class BatchResponse(BaseModel):
    request_id: str
    model: ModelRef
    results: list[BatchSuccess | BatchFailure]


class ModelResponse(BaseModel):
    name: str
    revision: str
    device: str
    dtype: str
    image_size: int
    manifest: dict[str, Any]


class HealthResponse(BaseModel):
    status: str
    detail: str | None = None
