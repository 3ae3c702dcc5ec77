"""FastAPI dependencies: reach the runtime through app state, never through globals."""

from __future__ import annotations

from fashion_florence_client.problems import ErrorCode
from fashion_florence_client.protocol import ModelRef
from fastapi import Request

from service.core.extraction import Extractor
from service.core.lifecycle import Phase, Runtime
from service.errors import ServiceError


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_extractor(request: Request) -> Extractor:
    runtime = get_runtime(request)
    if runtime.phase == Phase.DRAINING:
        raise ServiceError(
            ErrorCode.DRAINING,
            "the service is shutting down; retry elsewhere",
            headers={"Retry-After": "1"},
        )
    if runtime.phase != Phase.READY or runtime.extractor is None:
        raise ServiceError(
            ErrorCode.NOT_READY, f"model is {runtime.phase.value}", headers={"Retry-After": "5"}
        )
    return runtime.extractor


def model_ref(request: Request) -> ModelRef:
    info = get_runtime(request).model_info
    if info is None:
        raise ServiceError(ErrorCode.NOT_READY, "model is not ready")
    return ModelRef(name=info.name, revision=info.revision)
