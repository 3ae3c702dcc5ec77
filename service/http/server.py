"""One API server process: uvicorn on the listening socket the supervisor shares.

Each API server does HTTP, auth, URL fetching, image decoding and the resize to the
model's input, and reaches the model through the engine core (``service.engine_core``,
another process). Several of them accept from one socket; the supervisor
(``service.supervisor``) starts, restarts and stops them.

Shutdown is a drain, not a stop. On SIGTERM (from the supervisor) the server keeps
listening while ``/readyz`` answers 503 and new work is refused with ``draining``;
admitted work finishes (bounded by ``FF_DRAIN_TIMEOUT_S``); only then does uvicorn stop,
and the process exits 0. A second SIGTERM stops at once. SIGINT (a terminal's Ctrl-C,
which reaches every process of the group) is left to the supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from service.http.app import create_app
from service.ipc.shared_state import SharedPool
from service.process import die_with_parent
from service.serving.core_client import CoreClient, CoreLink
from service.serving.lifecycle import Runtime
from service.settings import Settings
from service.telemetry.logs import configure_logging
from service.telemetry.metrics import ServiceMetrics

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, runtime: Runtime, *, supervised: bool = False
    ) -> None:
        super().__init__(config)
        self._runtime = runtime
        self._supervised = supervised
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._supervised and sig == signal.SIGINT:
            return  # the supervisor got it too, and sends SIGTERM when it is time
        if self._drain_task is None and not self.should_exit:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                log.info(
                    "signal %d: draining (at most %.0fs)",
                    sig,
                    self._runtime.settings.drain_timeout_s,
                )
                self._drain_task = loop.create_task(self._drain_then_exit())
                return
        # Second signal, or no loop to drain on: uvicorn's own (fast) shutdown.
        super().handle_exit(sig, frame)
        # uvicorn re-raises the signal after a graceful stop, so the process would die
        # "killed by signal 15"; a drained, clean stop exits 0.
        self._captured_signals.clear()

    async def _drain_then_exit(self) -> None:
        try:
            await self._runtime.drain()
        finally:
            self.should_exit = True


def build_server(app: FastAPI, settings: Settings, *, supervised: bool = False) -> DrainingServer:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # /metrics carries request counts; per-request logs cost CPU
        timeout_keep_alive=5,
        # Backstop after the drain: connections still open are closed after this.
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
    )
    return DrainingServer(config, app.state.runtime, supervised=supervised)


def run_api_server(settings: Settings, index: int, listener: socket.socket, link: CoreLink) -> None:
    """An API server process's entry point (a ``spawn`` target from the supervisor)."""
    die_with_parent()
    configure_logging(settings.log_format, settings.log_level)

    async def connect(settings: Settings, _metrics: ServiceMetrics) -> CoreClient:
        return await CoreClient.connect(link, settings)

    app = create_app(settings, connector=connect, pool=SharedPool(link.state, index))
    app.state.metrics.service_pid = link.state.supervisor_pid  # process_* for all of them
    build_server(app, settings, supervised=True).run(sockets=[listener])
