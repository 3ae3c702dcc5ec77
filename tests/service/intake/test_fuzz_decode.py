"""A short, bounded atheris run of the decode harness (fuzz_decode.py) in a subprocess.

libFuzzer owns the process it runs in (it exits when done), hence the subprocess. Skipped
where atheris is not installed (it ships wheels for Linux x86_64 only).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

REPO_ROOT = Path(__file__).resolve().parents[3]
RUNS = 20_000


def test_decoder_survives_a_short_fuzzing_run(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    command = [
        sys.executable, "-m", "tests.service.intake.fuzz_decode",
        f"-runs={RUNS}", "-max_total_time=20", "-timeout=10", "-rss_limit_mb=2048",
        "-seed=1", f"-artifact_prefix={tmp_path}/", str(corpus),
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert f"Done {RUNS} runs" in log or "max_total_time" in log, log[-2000:]
    assert len(list(corpus.iterdir())) > 10  # seeds written, coverage grew from them
