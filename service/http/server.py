"""Run the service under uvicorn: one process, one worker, one model on one device.

Shutdown is a drain, not a stop. On the first SIGTERM the service keeps listening while
``/readyz`` answers 503 and new work is refused with ``draining``; queued and in-flight
work finishes (bounded by ``FF_DRAIN_TIMEOUT_S``); only then does uvicorn stop, and the
process exits 0. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import logging
from types import FrameType

import uvicorn
from fastapi import FastAPI

from service.core.lifecycle import Runtime
from service.http.app import create_app
from service.settings import Settings

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self._runtime = runtime
        self._drain_task: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
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


def build_server(app: FastAPI, settings: Settings) -> DrainingServer:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # One worker per GPU: several would each load the model and fight over the device.
        workers=1,
        access_log=False,  # /metrics carries request counts; per-request logs cost CPU
        timeout_keep_alive=5,
        # Backstop after the drain: connections still open are closed after this.
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
    )
    return DrainingServer(config, app.state.runtime)


def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    build_server(create_app(settings), settings).run()
