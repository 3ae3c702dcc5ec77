"""The application factory. No import-time singletons: every app owns its state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.backend import InferenceBackend
from service.core.lifecycle import BackendLoader, Runtime, load_real_engine
from service.http import extract, ops, ui
from service.http.auth import ApiKeyVerifier
from service.http.middleware import BodyLimitMiddleware, ObserveMiddleware, RequestIdMiddleware
from service.http.problems import install_problem_handlers
from service.settings import Settings
from service.telemetry.logs import AccessLog
from service.telemetry.metrics import ServiceMetrics


def create_app(
    settings: Settings | None = None,
    backend: InferenceBackend | None = None,
    *,
    loader: BackendLoader = load_real_engine,
) -> FastAPI:
    """Build the service. ``backend`` replaces the real engine (tests); ``loader`` builds it."""
    settings = settings or Settings()
    metrics = ServiceMetrics()
    runtime = Runtime(settings, metrics, backend=backend, loader=loader)

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
    if settings.ui_enabled:
        app.include_router(ui.router)
    # Added last = outermost: the request id is on every response, even a 413.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    # Inside the request id, outside the body cap: its 413s are counted and logged too.
    app.add_middleware(ObserveMiddleware, metrics=metrics, access_log=AccessLog())
    app.add_middleware(RequestIdMiddleware)
    return app
