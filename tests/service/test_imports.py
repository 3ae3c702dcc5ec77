"""The API servers' and the supervisor's code (and the engine core's modules, until its
process loads the model) must not drag torch or transformers into the process, and nothing but the
Ray job's own run drags Ray in (the server's install does not have it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

HEAVY = ("torch", "transformers", "ray")
LIGHT_MODULES = (
    "service.http.app",
    "service.http.extract",
    "service.http.ops",
    "service.engine_core.batching",
    "service.serving.extraction",
    "service.serving.lifecycle",
    "service.serving.core_client",
    "service.http.server",
    "service.supervisor",
    "service.ipc.messages",
    "service.ipc.channel",
    "service.ipc.shared_state",
    "service.engine_core.main",
    "service.engine_core.local",
    "service.local_job",
    "service.cli",
    "service.jobs.cli",
    "service.jobs.ray_job",
    "service.engine_core.cache",
    "service.telemetry.logs",
    "service.telemetry.tracing",
    "fashion_florence_client",
    "fashion_florence_client.client",
    "fashion_florence_client.catalogue",
    "fashion_florence_client.cli",
)

_PROBE = """
import json, sys
mods = json.loads(sys.argv[1])
heavy = json.loads(sys.argv[2])
import importlib
for name in mods:
    importlib.import_module(name)
loaded_before_app = sorted(h for h in heavy if h in sys.modules)
from service.http.app import create_app
from tests.fakes import FakeBackend
create_app(backend=FakeBackend())
print(json.dumps({
    "imported": [m for m in mods if m in sys.modules],
    "heavy_after_imports": loaded_before_app,
    "heavy_after_app": sorted(h for h in heavy if h in sys.modules),
}))
"""


def test_http_modules_do_not_import_torch_or_transformers() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(LIGHT_MODULES), json.dumps(HEAVY)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["imported"] == list(LIGHT_MODULES)
    assert report["heavy_after_imports"] == []
    assert report["heavy_after_app"] == []
