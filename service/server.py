"""Run the service under uvicorn: one process, one worker, one model on one device."""

from __future__ import annotations

import logging
from types import FrameType

import uvicorn

from service.app import create_app
from service.settings import Settings


class GracefulServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after a graceful shutdown, so the process dies "killed by
    signal 15". A drained, clean stop should exit 0; only a forced stop is an error."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


def serve(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # One worker per GPU: several would each load the model and fight over the device.
        workers=1,
        access_log=False,  # /metrics carries request counts; per-request logs cost CPU
        timeout_keep_alive=5,
    )
    GracefulServer(config).run()
