"""The GPU run's clock and its report on disk."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


class Budget:
    """One wall-clock budget for the whole run: builds, loads, sweeps, counts, service."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started = time.perf_counter()
        self.deadline = self.started + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def spent(self) -> float:
        return time.perf_counter() - self.started


class Recorder:
    """Writes ``report`` to ``path`` on every :meth:`save` (after each step and each sweep
    point), through a temporary file and a rename: a run killed at any moment leaves the
    last complete report, never half a file."""

    def __init__(self, path: Path, report: dict[str, Any]) -> None:
        self.path = path
        self.report = report
        path.parent.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        staging = self.path.with_name(f".{self.path.name}.tmp")
        staging.write_text(json.dumps(self.report, indent=2, default=_plain) + "\n", "utf-8")
        os.replace(staging, self.path)


def _plain(value: Any) -> Any:
    return str(value)  # paths and the like; the report holds no other non-JSON values
