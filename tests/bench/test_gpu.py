"""bench.gpu smoke test on CPU: the demo shape, quick, without the service suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu import suggest_batch_size

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_cpu_run_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    command = [
        sys.executable, "-m", "bench.gpu", "--device", "cpu", "--shapes", "demo", "--quick",
        "--skip-service", "--cache-dir", str(tmp_path / "models"), "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    (shape,) = report["shapes"]
    assert shape["shape"] == "demo"
    assert shape["build_s"] > 0
    assert len(shape["rows"]) == 2 * 3  # batch sizes 1 and 4, three modes
    plain = [r for r in shape["rows"] if r["mode"] == "plain"]
    assert all(r["tokens_per_image"] <= 80 and r["forward_passes_per_image"] == 80 for r in plain)
    assert all(r["img_s"] > 0 and r["fraction_of_bound"] > 0 for r in shape["rows"])
    assert shape["flops"]["gflop_per_image"] > 0
    assert shape["suggested_default"] in (1, 4)
    assert "service" not in shape
    assert "| jump-forward | 4 |" in done.stdout


def test_suggestion_leaves_out_batches_over_the_memory_headroom() -> None:
    gib = 2**30
    rows = [
        {
            "mode": "jump-forward",
            "batch_size": 8,
            "img_s": 50.0,
            "peak_device_memory_bytes": 10 * gib,
        },
        {
            "mode": "jump-forward",
            "batch_size": 64,
            "img_s": 100.0,
            "peak_device_memory_bytes": 70 * gib,
        },
        {
            "mode": "jump-forward",
            "batch_size": 128,
            "img_s": None,
            "peak_device_memory_bytes": None,
        },
    ]
    assert suggest_batch_size(rows, total_memory=80 * gib) == {"jump-forward": 8}
    assert suggest_batch_size(rows, total_memory=None) == {"jump-forward": 64}
