"""The application factory. No import-time singletons: every app owns its state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.backend import InferenceBackend
from service.http import extract, ops, ui
from service.http.auth import ApiKeyVerifier
from service.http.middleware import BodyLimitMiddleware, ObserveMiddleware, RequestIdMiddleware
from service.http.openapi import install_openapi
from service.http.problems import install_problem_handlers
from service.serving.admission import CapacityPool
from service.serving.lifecycle import BackendLoader, EngineConnector, Runtime, load_real_engine
from service.settings import Settings
from service.telemetry.logs import AccessLog
from service.telemetry.metrics import ServiceMetrics


def create_app(
    settings: Settings | None = None,
    backend: InferenceBackend | None = None,
    *,
    loader: BackendLoader = load_real_engine,
    connector: EngineConnector | None = None,
    pool: CapacityPool | None = None,
) -> FastAPI:
    """Build one API server. ``connector`` reaches the engine core (``serve``; ``pool`` is
    then the capacity every API server shares). Without it the engine runs in this process:
    ``backend`` (tests) or what ``loader`` builds (``extract --local``)."""
    settings = settings or Settings()
    metrics = ServiceMetrics()
    runtime = Runtime(
        settings, metrics, backend=backend, loader=loader, connector=connector, pool=pool
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()  # loads in the background; /readyz tells when it is done
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="Fashion Florence",
        version="0.1.0",
        summary="Structured fashion attributes from clothing photos",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = runtime
    app.state.api_keys = ApiKeyVerifier.from_settings(settings)
    install_problem_handlers(app)
    app.include_router(extract.router)
    app.include_router(ops.router)
    install_openapi(
        app, auth_required=app.state.api_keys.enabled, max_batch_items=settings.max_batch_items
    )
    if settings.ui_enabled:
        app.include_router(ui.router)
    # Added last = outermost: the request id is on every response, even a 413.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    # Inside the request id, outside the body cap: its 413s are counted and logged too.
    app.add_middleware(ObserveMiddleware, metrics=metrics, access_log=AccessLog())
    app.add_middleware(RequestIdMiddleware)
    return app
