"""``python -m bench.peers --quick`` end to end: our service and each installed peer,
started for real on 127.0.0.1, one short closed-loop point each plus the corrupt-image
row, and the two ratio lines. A peer whose venv is missing (``python -m bench.peers
--install``) or that does not start is skipped with its reason, never passed.
Bounded: the quick plan, killed after 6 minutes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.peers.servers import PYTRITON_REASON, SAME_ENGINE_PEERS

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.load]


@pytest.fixture(scope="module")
def quick_run(
    trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], list[str]]:
    out = tmp_path_factory.mktemp("peers") / "peers.json"
    argv = [sys.executable, "-m", "bench.peers", "--quick", "--no-plots"]
    argv += ["--model-dir", str(trained_model_dir), "--out", str(out)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=360)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout.splitlines()


def _row(result: dict[str, Any], part: str, server: str) -> dict[str, Any]:
    row: dict[str, Any] = next(r for r in result[part] if r["server"] == server)
    if "unavailable" in row:
        pytest.skip(f"{server} ({part}) did not run: {row['unavailable'][-600:]}")
    return row


def _check_point(row: dict[str, Any]) -> None:
    [point] = row["closed"]
    assert point["errors"] == 0, point
    assert point["ok"] > 0
    assert point["model_images"] >= point["ok"]  # the model's own count saw every answer
    assert row["cold_start_s"] > 0
    assert row["peak_rss_bytes"] > 0


def test_the_last_two_lines_are_the_ratios(quick_run: tuple[dict[str, Any], list[str]]) -> None:
    result, lines = quick_run
    same, users = lines[-2], lines[-1]
    assert same.startswith("vs best peer (same engine): ")
    assert users.startswith("vs best peer (as written by users): ")
    summary = result["summary"]
    for line, key in ((same, "vs_same_engine"), (users, "vs_users")):
        value = line.rsplit(": ", 1)[1]
        if summary[key] is None:
            assert value == "n/a"  # no peer ran: the reason is in its row
        else:
            assert float(value) == pytest.approx(summary[key], abs=5e-4)


def test_ours_isolates_the_corrupt_image(quick_run: tuple[dict[str, Any], list[str]]) -> None:
    row = _row(quick_run[0], "same_engine", "ours")
    _check_point(row)
    corrupt = row["behaviour"]["corrupt"]
    assert (corrupt["good_answered"], corrupt["good_sent"]) == (15, 15)
    assert row["behaviour"]["metrics"]["batch_size"] == ["ff_batch_size"]


@pytest.mark.parametrize("peer", SAME_ENGINE_PEERS)
def test_peer_serves_the_same_engine(
    peer: str, quick_run: tuple[dict[str, Any], list[str]]
) -> None:
    row = _row(quick_run[0], "same_engine", peer)
    _check_point(row)
    [point] = row["closed"]
    assert point["valid_per_s"] > 0  # our engine's answers, every one schema-valid
    corrupt = row["behaviour"]["corrupt"]
    assert corrupt["good_sent"] == 15
    assert 0 <= corrupt["good_answered"] <= 15  # what the peer does is the finding


def test_a_peer_serves_florence_as_users_write_it(
    quick_run: tuple[dict[str, Any], list[str]],
) -> None:
    row = _row(quick_run[0], "users", "litserve")
    _check_point(row)


def test_pytriton_is_reported_with_its_reason() -> None:
    pytest.skip(f"pytriton is not measured: {PYTRITON_REASON}")
