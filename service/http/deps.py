"""FastAPI dependencies: reach the runtime through app state, never through globals."""

from __future__ import annotations

from fastapi import Request

from fashion_florence_client.problems import ErrorCode
from fashion_florence_client.protocol import ModelRef
from service.errors import ServiceError
from service.serving.extraction import Extractor, restarting_error
from service.serving.lifecycle import Phase, Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def get_extractor(request: Request) -> Extractor:
    """The serving layer, while it takes work. A draining service still gets here: its
    admission refuses with ``draining`` (the drain itself is the lifecycle's)."""
    runtime = get_runtime(request)
    if runtime.phase == Phase.RESTARTING and runtime.engine is not None:
        raise restarting_error(
            "the engine core is restarting; retry shortly", runtime.engine.retry_after_s()
        )
    if runtime.phase not in (Phase.READY, Phase.DRAINING) or runtime.extractor is None:
        raise ServiceError(
            ErrorCode.NOT_READY, f"model is {runtime.phase.value}", headers={"Retry-After": "5"}
        )
    return runtime.extractor


def model_ref(request: Request) -> ModelRef:
    info = get_runtime(request).model_info
    if info is None:
        raise ServiceError(ErrorCode.NOT_READY, "model is not ready")
    return ModelRef(name=info.name, revision=info.revision)
