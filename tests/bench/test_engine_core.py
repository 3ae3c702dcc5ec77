"""bench.engine_core's IPC part against a real instant engine core (a smoke run)."""

from __future__ import annotations

import re

import pytest

from bench import engine_core


def test_the_ipc_round_trip_is_measured_at_both_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert engine_core.main(["--parts", "ipc", "--quick"]) == 0
    out = capsys.readouterr().out
    rows = re.findall(r"^\| (\d+) x \d+ x 3 \| (\d+) \| (\d+) \|$", out, re.MULTILINE)
    assert [side for side, _, _ in rows] == ["64", "768"]
    assert all(0 < int(p50) < 1_000_000 for _, p50, _ in rows)  # a real, finite round trip
