"""Request and response bodies of the public API: the server renders them (and its OpenAPI
schema) from these models, the client parses answers with them, so the two cannot drift."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import BaseModel, Field

from fashion_florence_client.schema import AttributeConfidence, FashionAttributes

_CONFIDENCE_DOC = (
    "Per-value confidence in [0, 1], shaped like `attributes`; null when the service runs "
    "without constrained decoding."
)

#: Documented shape of an image URL. Enforced by the fetcher (``url_not_allowed``), not by
#: request validation, so a wrong scheme gets its own stable code rather than a generic 400.
URL_SCHEMA: dict[str, Any] = {"pattern": "^[hH][tT][tT][pP][sS]?://", "format": "uri"}

_BATCH_URL_DOC = (
    "URL of one image. Any string is accepted here: a URL that is not an allowed http(s) "
    "URL is answered as this item's `url_not_allowed` error, like every other per-image "
    "failure, and the other items are still answered."
)


#: The request header that picks a request's scheduling class (:class:`Priority`).
PRIORITY_HEADER: Final = "X-Priority"


class Priority(StrEnum):
    """A request's scheduling class. ``/v1/extract`` is interactive by default and
    ``/v1/extract/batch`` batch; the ``X-Priority`` header overrides either. Waiting
    interactive images are run first (batch work keeps a guaranteed share), and batch work
    may hold only part of the service's capacity, so a backfill cannot crowd out a shop
    page."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


class UrlRequest(BaseModel):
    url: str = Field(
        min_length=1,
        max_length=8192,
        description="http(s) URL of the image; any other is refused with 400 url_not_allowed",
        json_schema_extra=URL_SCHEMA,
    )


class UrlBatchRequest(BaseModel):
    # No URL pattern on the items: the request is valid whatever one item holds (a batch
    # answers a bad item in its own result), and a pattern would promise a 400 it never gets.
    urls: list[Annotated[str, Field(max_length=8192, description=_BATCH_URL_DOC)]] = Field(
        min_length=1, description="image URLs, answered in this order"
    )


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
