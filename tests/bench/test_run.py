"""``make bench``'s entry point end to end, in its short form: every part runs against real
servers on 127.0.0.1 and the report carries the figures the issue asks for. Bounded: the
quick plan (a few seconds per point), killed after 5 minutes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.load]


def test_quick_suite_prints_the_ratio_and_writes_every_part(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "suite.json"
    argv = [sys.executable, "-m", "bench.run", "--quick", "--model-dir", str(trained_model_dir)]
    done = subprocess.run(
        [*argv, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    ratio_line = next(line for line in lines if line.startswith("service/offline: "))
    result = json.loads(out.read_text())
    assert float(ratio_line.split()[1]) == pytest.approx(result["service_over_offline"], abs=5e-4)
    suite = result["suite"]
    closed = suite["service"]["closed"]
    assert [row["concurrency"] for row in closed] == [1, 8]
    for row in [*closed, *suite["dispatch_wait"], suite["paper_demo"]]:
        assert row["errors"] == 0
        assert row["ok"] > 0
    overload = suite["service"]["overload"]
    assert overload["sent"] == overload["answered"]  # every request accounted for
    assert overload["server_errors_5xx_unexpected"] == 0
    assert suite["service"]["peak_rss_bytes"] > 0
    assert set(suite["plumbing"]) == {"bare", "bare_decode", "instant"}
    assert {row["mode"] for row in result["offline"]} == {"plain", "constrained", "jump-forward"}
    assert result["preprocessing"]
    assert suite["ratios"]["service_over_paper_demo"] > 1  # batching beats one-at-a-time
