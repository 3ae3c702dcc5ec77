"""A fault-injecting backend, and a tiny server entry point around it for subprocess tests.

    python -m tests.faults --port N [--latency-ms MS] [--drain-timeout-s S]

Each knob shows one behaviour exactly: latency per batch, device OOM above a batch size,
a sticky device failure after N batches, a hang.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence

from service.backend import DeviceFatalError, DeviceOutOfMemoryError, ItemOutcome, PreparedImage
from tests.fakes import FakeBackend


class FaultBackend(FakeBackend):
    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        oom_above: int | None = None,
        fatal_after_batches: int | None = None,
        hang: threading.Event | None = None,
    ) -> None:
        super().__init__()
        self.latency_s = latency_s
        self.oom_above = oom_above
        self.fatal_after_batches = fatal_after_batches
        self.hang = hang  # run_batch blocks until this event is set (a wedged device)
        self.attempts: list[int] = []  # every run_batch call's size, OOM attempts included
        self.images_run = 0

    def run_batch(self, images: Sequence[PreparedImage]) -> list[ItemOutcome]:
        self.attempts.append(len(images))
        if self.hang is not None:
            self.hang.wait(timeout=30)
        if self.oom_above is not None and len(images) > self.oom_above:
            raise DeviceOutOfMemoryError(f"fake OOM at batch {len(images)}")
        if self.fatal_after_batches is not None and len(self.batches) >= self.fatal_after_batches:
            raise DeviceFatalError("fake sticky device error")
        if self.latency_s:
            time.sleep(self.latency_s)
        self.images_run += len(images)
        return super().run_batch(images)


def main() -> None:
    from service.http.app import create_app
    from service.http.server import build_server
    from service.settings import Settings

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--drain-timeout-s", type=float, default=10.0)
    args = parser.parse_args()
    settings = Settings(
        host="127.0.0.1", port=args.port, drain_timeout_s=args.drain_timeout_s, log_level="warning"
    )
    app = create_app(settings, FaultBackend(latency_s=args.latency_ms / 1000))
    build_server(app, settings).run()


if __name__ == "__main__":
    main()
