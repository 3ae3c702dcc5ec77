"""bench.servers: spawning, readiness, failure reports and peak memory (loopback only)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from bench.servers import (
    ServerStartError,
    child_environment,
    free_port,
    peak_rss_bytes,
    spawn,
    spawn_service,
)


def test_a_server_that_exits_before_ready_is_reported_with_its_output() -> None:
    argv = [sys.executable, "-c", "print('no model here', flush=True); raise SystemExit(3)"]
    with pytest.raises(ServerStartError, match="status 3") as caught:
        spawn(argv, {}, free_port(), timeout_s=30)
    assert "no model here" in str(caught.value)


def test_a_server_that_never_answers_is_killed_at_the_timeout() -> None:
    started = time.perf_counter()
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(ServerStartError, match="not ready"):
        spawn(argv, {}, free_port(), timeout_s=1.0)
    assert time.perf_counter() - started < 30  # killed, not waited for


def test_children_get_only_the_ff_variables_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FF_MAX_BATCH_SIZE", "1")
    env = child_environment({"FF_PORT": "1234"})
    assert env["FF_PORT"] == "1234"
    assert "FF_MAX_BATCH_SIZE" not in env
    assert env["PATH"] == os.environ["PATH"]


def test_peak_rss_is_read_from_proc() -> None:
    assert peak_rss_bytes(os.getpid()) > 10 * 1024 * 1024  # a Python with pytest loaded


FAILING_PROBE = """
import http.server, json, sys

class Probe(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"status": "unavailable", "detail": sys.argv[2]}).encode()
        self.send_response(503)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Probe).serve_forever()
"""


def test_a_server_whose_model_failed_to_load_is_reported_at_once() -> None:
    port = free_port()
    detail = "engine failed: OSError: no model at /nowhere"
    argv = [sys.executable, "-c", FAILING_PROBE, str(port), detail]
    started = time.perf_counter()
    with pytest.raises(ServerStartError, match="will not become ready: engine failed"):
        spawn(argv, {}, port, timeout_s=60)
    assert time.perf_counter() - started < 15  # not the 60 s timeout


def test_a_server_still_loading_is_waited_for() -> None:
    port = free_port()
    argv = [sys.executable, "-c", FAILING_PROBE, str(port), "loading"]
    with pytest.raises(ServerStartError, match="not ready"):
        spawn(argv, {}, port, timeout_s=2.0)


@pytest.mark.slow
def test_our_service_with_a_missing_model_fails_fast(tmp_path: Path) -> None:
    started = time.perf_counter()
    # serve exits 1 with one line naming the setting (the engine core could not load it)
    with pytest.raises(ServerStartError, match=r"the model did not load.*FF_MODEL_PATH"):
        spawn_service(tmp_path / "no-model", timeout_s=90)
    assert time.perf_counter() - started < 60
