"""Request and response bodies of the public API (also the OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from model_store.schema import FashionAttributes


class UrlRequest(BaseModel):
    url: str = Field(min_length=1, max_length=8192, description="http(s) URL of the image")


class UrlBatchRequest(BaseModel):
    urls: list[str] = Field(min_length=1, description="http(s) URLs, answered in this order")


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
    timing_ms: TimingMs


class ItemError(BaseModel):
    code: str
    detail: str


class BatchSuccess(BaseModel):
    attributes: FashionAttributes


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
