"""BentoML serving the model, as BentoML's docs write an adaptive-batching image service.

    BENCH_PEER_MODEL_DIR=DIR BENCH_PEER_STYLE=same|users \
        bentoml serve bench.peers.bentoml_peer:Extractor --host 127.0.0.1 --port P

A ``@bentoml.service`` class with one worker whose ``@bentoml.api(batchable=True,
max_batch_size, max_latency_ms, route="/v1/extract")`` method takes a list of uploaded
files (a request sends one, as field ``image``) and returns one answer per file. The
admission bound (``traffic.max_concurrency``) equals our service's (``FF_QUEUE_SIZE`` +
``FF_MAX_BATCH_SIZE``). Readiness: BentoML's ``/readyz``; ``/metrics`` is BentoML's own.
The model directory and style come from the environment: ``bentoml serve`` takes a
service, not arguments. Runs in ``.venv-peers/bentoml``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import bentoml
from bentoml.exceptions import InvalidArgument

from bench.peers.model import (
    MAX_BATCH,
    SETTINGS,
    BadImageError,
    SameEngine,
    UsersModel,
    model_dir_from_env,
    open_image,
)

STYLE_ENV = "BENCH_PEER_STYLE"


@bentoml.service(
    workers=1,
    # Like our service at FF_LOG_LEVEL=warning: no access log line per request.
    logging={"access": {"enabled": False}},
    traffic={"timeout": 120, "max_concurrency": SETTINGS.queue_size + SETTINGS.max_batch_size},
)
class Extractor:
    def __init__(self) -> None:
        self.style = os.environ.get(STYLE_ENV, "same")
        model_dir = model_dir_from_env()
        self.model: SameEngine | UsersModel = (
            SameEngine(model_dir) if self.style == "same" else UsersModel(model_dir)
        )

    @bentoml.api(  # type: ignore[untyped-decorator]
        route="/v1/extract",
        batchable=True,
        max_batch_size=MAX_BATCH,
        # BentoML has no batch wait: its dispatcher sizes the wait from the latency it
        # learns, within max_latency_ms (a request that would exceed it is refused).
        max_latency_ms=60_000,
    )
    def extract(self, image: list[Path]) -> list[dict[str, Any]]:
        try:
            if isinstance(self.model, SameEngine):
                items = [self.model.prepare(path.read_bytes()) for path in image]
            else:
                items = [open_image(path.read_bytes()) for path in image]
        except BadImageError as exc:
            # BentoML's documented way to answer a client error (400).
            raise InvalidArgument(str(exc)) from exc
        return self.model.run(items)
