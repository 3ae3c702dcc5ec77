"""bench.servers: spawning, readiness, failure reports and peak memory (loopback only)."""

from __future__ import annotations

import os
import sys
import time

import pytest

from bench.servers import (
    ServerStartError,
    child_environment,
    free_port,
    peak_rss_bytes,
    spawn,
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
