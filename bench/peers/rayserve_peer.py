"""Ray Serve serving the model, as Ray Serve's docs write a batched deployment.

    python -m bench.peers.rayserve_peer --model-dir DIR --port P [--style same|users]

A ``@serve.deployment(max_ongoing_requests, max_queued_requests)`` class whose
``__call__`` takes the Starlette request, reads the multipart upload and decodes it, then
awaits a ``@serve.batch(max_batch_size, batch_wait_timeout_s)`` method that runs the
batch; ``serve.run`` on a local Ray started with the machine's CPUs, the proxy on
127.0.0.1. The admission bound equals our service's (``FF_QUEUE_SIZE`` +
``FF_MAX_BATCH_SIZE``). Readiness: a
``GET`` on the route answers (the proxy lists a route before its replica is up). Runs in ``.venv-peers/rayserve``.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path
from typing import Any

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from bench.peers.model import (
    BATCH_WAIT_S,
    MAX_BATCH,
    SETTINGS,
    BadImageError,
    SameEngine,
    UsersModel,
    open_image,
)
from bench.servers import LOOPBACK

#: Requests a replica takes at once: two batches, one running and one forming.
MAX_ONGOING = 2 * MAX_BATCH


@serve.deployment(
    max_ongoing_requests=MAX_ONGOING,
    max_queued_requests=SETTINGS.queue_size + SETTINGS.max_batch_size - MAX_ONGOING,
    # Like our service at FF_LOG_LEVEL=warning: no access log line per request.
    logging_config={"log_level": "WARNING", "enable_access_log": False},
)
class Extractor:
    def __init__(self, model_dir: str, style: str) -> None:
        self.style = style
        self.model: SameEngine | UsersModel = (
            SameEngine(Path(model_dir)) if style == "same" else UsersModel(Path(model_dir))
        )

    async def __call__(self, request: Request) -> Any:
        if request.method == "GET":
            return {"ready": True}  # the benchmark's readiness probe: the app is deployed
        form = await request.form()
        upload: Any = form["image"]
        data = await upload.read()
        try:
            item = (
                self.model.prepare(data) if isinstance(self.model, SameEngine) else open_image(data)
            )
        except BadImageError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        return await self.run(item)

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def run(self, items: list[Any]) -> list[dict[str, Any]]:
        return self.model.run(items)


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--style", choices=["same", "users"], default="same")
    parser.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        # Ray exports Serve's metrics (batch size, batch wait) here, not on the HTTP port.
        _metrics_export_port=args.metrics_port,
    )
    try:
        serve.start(http_options={"host": LOOPBACK, "port": args.port})
        # serve.deployment turns the class into a Deployment, which mypy does not see.
        app = Extractor.bind(str(args.model_dir), args.style)  # type: ignore[attr-defined]
        serve.run(app, route_prefix="/v1/extract")
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


if __name__ == "__main__":
    raise SystemExit(main())
