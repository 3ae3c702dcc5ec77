"""Operations endpoints: probes, metrics and the loaded model's description."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from fashion_florence_client.problems import ErrorCode
from fashion_florence_client.protocol import HealthResponse, ModelResponse
from service.errors import ServiceError
from service.http.auth import require_api_key
from service.http.deps import get_runtime
from service.http.openapi import problem_responses
from service.serving.lifecycle import Runtime
from service.telemetry.metrics import CONTENT_TYPE

router = APIRouter(tags=["operations"])

RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def _probe(ok: bool, detail: str) -> JSONResponse:
    body = HealthResponse(status="ok" if ok else "unavailable", detail=detail)
    if ok:
        return JSONResponse(body.model_dump())
    # Every 503 of the API says when to come back, a probe's too (loading takes seconds).
    return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "5"})


@router.get("/healthz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def healthz(runtime: RuntimeDep) -> JSONResponse:
    """Liveness: the process and its batcher loop are alive. Does no model work."""
    return _probe(*(await runtime.liveness()))


@router.get("/readyz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Readiness: the model is loaded and warmed, and the service is not draining."""
    return _probe(*(await runtime.readiness()))


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    get_runtime(request).publish_phase()  # the engine core may have restarted meanwhile
    # Reading every process's metrics files and /proc takes tens of milliseconds: off the
    # event loop, so a scrape never stalls the requests this server is answering.
    body = await asyncio.to_thread(request.app.state.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)


@router.get(
    "/v1/model",
    response_model=ModelResponse,
    dependencies=[Depends(require_api_key)],
    responses=problem_responses(401, 503),
)
async def model(runtime: RuntimeDep) -> ModelResponse:
    info = runtime.model_info
    if info is None:
        raise ServiceError(ErrorCode.NOT_READY, f"model is {runtime.phase.value}")
    return ModelResponse(
        name=info.name,
        revision=info.revision,
        device=info.device,
        dtype=info.dtype,
        image_size=info.image_size,
        manifest=dict(info.manifest),
    )
