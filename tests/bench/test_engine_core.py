"""bench.engine_core's IPC part against a real instant engine core (a smoke run)."""

from __future__ import annotations

import re
import sys

import pytest

from bench import engine_core
from bench.servers import free_port, spawn


def test_the_ipc_round_trip_is_measured_at_both_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert engine_core.main(["--parts", "ipc", "--quick"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (\d+) x \d+ x 3 \| (\d+) \| (\d+) \|$", out, re.MULTILINE)
    assert [side for side, _, _ in rows] == ["64", "768"]
    assert all(0 < int(p50) < 1_000_000 for _, p50, _ in rows)  # a real, finite round trip


def test_the_intake_part_finds_each_process_by_its_role() -> None:
    """The CPU accounting's roles, from a real supervisor with two API servers."""
    port = free_port()
    env = {"FF_HOST": "127.0.0.1", "FF_PORT": str(port), "FF_LOG_LEVEL": "warning"}
    argv = [sys.executable, "-m", "bench.engine_core", "--serve-instant", "2"]
    with spawn(argv, env, port) as handle:
        roles = engine_core.service_roles(handle.pid, port)
        cpu = engine_core.cpu_by_role(roles)
    assert roles[handle.pid] == "supervisor"
    assert sorted(r for r in roles.values() if r != "supervisor") == [
        "API servers", "API servers", "engine core",
    ]  # fmt: skip
    assert cpu["API servers"] > 0  # both started and served /readyz
