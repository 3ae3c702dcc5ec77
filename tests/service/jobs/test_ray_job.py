"""``fashion-florence extract --engine ray`` end to end on a real local Ray (2 CPUs): the 372
test photos, broken files and URLs from a real server on 127.0.0.1 (and ones the SSRF
rules refuse before any packet leaves), run by a driver subprocess that is killed midway
and rerun; then held to the ``--local`` run of the same model, item by item."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fashion_florence_client import catalogue
from service import local_job
from service.jobs import ray_job
from service.jobs.inputs import collect_items
from service.jobs.output import read_rows, scan_output
from service.jobs.ray_job import RayJobOptions, run_job
from service.jobs.stages import ExtractStage
from service.settings import Settings
from tests.conftest import PHOTOS, photo_paths
from tests.loopback import serve_files
from tests.service.jobs.conftest import checkout_env

pytestmark = pytest.mark.slow

BATCH = 8
ROWS_PER_FILE = 32
DRIVER_TIMEOUT_S = 300
#: What each broken input must get, from the Ray job and from the HTTP API alike.
BROKEN = {
    "truncated.jpg": "invalid_image",
    "text.jpg": "unsupported_image_format",
    "empty.png": "invalid_image",
    "too-wide.png": "image_too_large",
    "missing.jpg": "invalid_input",
}
URLS = {
    "/one.jpg": None,  # served
    "/two.jpg": None,
    "/gone.jpg": "url_fetch_failed",  # 404
}
BLOCKED = {
    "http://10.0.0.1/x.jpg": "url_fetch_failed",  # a private address: refused, never dialled
    "http://169.254.169.254/latest/meta-data": "url_fetch_failed",  # cloud metadata
    "http://127.1/x.jpg": "url_not_allowed",  # an odd spelling of loopback
}


@dataclass(frozen=True)
class Inputs:
    arguments: list[str]
    expected_errors: dict[str, str]  # item id -> code
    photos: int


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Inputs]:
    broken = tmp_path_factory.mktemp("broken")
    photo = photo_paths()[0].read_bytes()
    (broken / "truncated.jpg").write_bytes(photo[:2000])
    (broken / "text.jpg").write_bytes(b"a text file, not an image\n")
    (broken / "empty.png").write_bytes(b"")
    wide = io.BytesIO()
    Image.new("RGB", (17_000, 8)).save(wide, format="PNG")  # over the 16384 px side limit
    (broken / "too-wide.png").write_bytes(wide.getvalue())
    missing = str(broken / "missing.jpg")
    files = {path: photo_paths()[i + 1].read_bytes() for i, path in enumerate(URLS)}
    with serve_files({k: v for k, v in files.items() if URLS[k] is None}) as base:
        urls = {base + path: code for path, code in URLS.items()}
        expected = {str(broken / name): code for name, code in BROKEN.items()}
        expected.update({u: c for u, c in {**urls, **BLOCKED}.items() if c is not None})
        arguments = [str(PHOTOS), str(broken), missing, *urls, *BLOCKED]
        yield Inputs(arguments, expected, len(photo_paths()))


def _environment(model: Path) -> dict[str, str]:
    return {
        "FF_MODEL_PATH": str(model),
        "FF_URL_ALLOW_LOOPBACK_FOR_TESTS": "true",  # the local image server
        "FF_MAX_BATCH_SIZE": str(BATCH),
    }


def _driver(
    inputs: Inputs, out: Path, address: str, model: Path, log: Path
) -> subprocess.Popen[bytes]:
    """The CLI in a subprocess; its stderr (Ray's and ours) goes to ``log``, a file, so
    that a chatty run can never block on a full pipe."""
    argv = [
        sys.executable, "-m", "service.cli", "extract", "--engine", "ray", *inputs.arguments,
        "--out", str(out), "--address", address, "--rows-per-file", str(ROWS_PER_FILE), "--no-progress",
    ]  # fmt: skip
    env = {**checkout_env(), **_environment(model)}
    with log.open("wb") as sink:
        return subprocess.Popen(argv, env=env, stdout=sink, stderr=subprocess.STDOUT)


def _complete_files(out: Path) -> int:
    count = 0
    for path in out.glob("*.parquet"):
        try:
            pq.read_metadata(path)
        except (OSError, ValueError):
            continue  # still being written
        count += 1
    return count


def _wait_until_still(out: Path, quiet_s: float = 3.0, limit_s: float = 60.0) -> None:
    """Until no file in ``out`` has changed for ``quiet_s``."""
    deadline = time.monotonic() + limit_s
    seen: object = None
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        now = sorted((p.name, p.stat().st_size) for p in out.iterdir())
        if now != seen:
            seen, still_since = now, time.monotonic()
        elif time.monotonic() - still_since >= quiet_s:
            return
        time.sleep(0.2)
    pytest.fail(f"{out} kept changing after the driver was killed")


@dataclass(frozen=True)
class KilledAndResumed:
    out: Path
    after_kill: int  # ids in the output once the killed run's files were repaired
    resumed_code: int
    resumed_log: str


@pytest.fixture(scope="module")
def resumed(
    inputs: Inputs, ray_address: str, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> KilledAndResumed:
    out = tmp_path_factory.mktemp("ray-out")
    logs = tmp_path_factory.mktemp("ray-logs")
    first = _driver(inputs, out, ray_address, demo_model_dir, logs / "killed.log")
    deadline = time.monotonic() + DRIVER_TIMEOUT_S
    try:
        while _complete_files(out) < 1:
            if first.poll() is not None:
                pytest.fail(
                    f"the driver ended before the kill:\n{(logs / 'killed.log').read_text()}"
                )
            assert time.monotonic() < deadline, "no output file in time"
            time.sleep(0.05)
    finally:
        os.kill(first.pid, signal.SIGKILL)  # a real kill: no handler, no clean-up
        first.wait(timeout=30)
    _wait_until_still(out)  # Ray ends the dead driver's workers; a write may land first
    after_kill = len(scan_output(str(out)).ids)
    second = _driver(inputs, out, ray_address, demo_model_dir, logs / "resumed.log")
    try:
        second.wait(timeout=DRIVER_TIMEOUT_S)
    finally:
        second.kill()
    log = (logs / "resumed.log").read_text()
    return KilledAndResumed(out, after_kill, second.returncode, log)


def _ids(inputs: Inputs) -> list[str]:
    return [item.id for item in collect_items(inputs.arguments)]


def test_a_killed_run_rerun_has_every_id_exactly_once(
    inputs: Inputs, resumed: KilledAndResumed
) -> None:
    ids = _ids(inputs)
    assert len(ids) == inputs.photos + len(inputs.expected_errors) + 2  # + the 2 served URLs
    assert 0 < resumed.after_kill < len(ids), "the kill should land midway"
    rows = read_rows(str(resumed.out))
    counts = Counter(row["id"] for row in rows)
    assert set(counts) == set(ids), "gaps or strangers"
    assert max(counts.values()) == 1, "duplicates"
    assert resumed.resumed_code == 1, resumed.resumed_log  # 1: some items failed
    assert f"skipped {resumed.after_kill} (already in the output)" in resumed.resumed_log
    assert f"; {len(ids) - resumed.after_kill} in " in resumed.resumed_log  # the rest, once


@pytest.fixture(scope="module")
def local_lines(
    inputs: Inputs, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """The same items through ``--local``: the HTTP API's own code, in process."""
    out = tmp_path_factory.mktemp("local") / "results.jsonl"
    items = catalogue.expand_inputs(inputs.arguments)

    async def run() -> None:
        async with local_job.local_client() as client:
            await catalogue.run_job(client, items, out, concurrency=16, progress=False)

    with pytest.MonkeyPatch.context() as patch:
        for name, value in _environment(demo_model_dir).items():
            patch.setenv(name, value)
        asyncio.run(run())
    return {line["item"]: line for line in map(json.loads, out.read_text().splitlines())}


def _numbers(confidence: dict[str, Any]) -> list[float]:
    """A confidence object's numbers, in field order (tags flattened)."""
    flat: list[float] = []
    for value in confidence.values():
        flat.extend(value if isinstance(value, list) else [value])
    return flat


def test_rows_equal_the_local_run_and_errors_carry_the_api_codes(
    inputs: Inputs, resumed: KilledAndResumed, local_lines: dict[str, dict[str, Any]]
) -> None:
    rows = {row["id"]: row for row in read_rows(str(resumed.out))}
    assert set(rows) == set(local_lines)
    for item, line in local_lines.items():
        row = rows[item]
        assert row["source"] == item
        if "error" in line:
            assert row["error_code"] == line["error"]["code"], item
            assert row["attributes"] is None
            continue
        assert row["error_code"] is None, (item, row["error_detail"])
        assert json.loads(row["attributes"]) == line["attributes"], item
        assert _numbers(json.loads(row["confidence"])) == pytest.approx(
            _numbers(line["confidence"]), abs=1e-5
        ), item
        assert (row["model_name"], row["model_revision"]) == (
            line["model"]["name"],
            line["model"]["revision"],
        )
    errors = {item: row["error_code"] for item, row in rows.items() if row["error_code"]}
    assert errors == inputs.expected_errors


def test_retry_failed_redoes_only_the_failures_even_when_an_actor_dies(
    inputs: Inputs,
    resumed: KilledAndResumed,
    ray_address: str,
    demo_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # In this process: the driver joins the session's Ray instead of starting one. The
    # first batch kills its actor (as a lost device does): Ray restarts the actor and
    # retries that batch, and the job still ends with every id exactly once. (One job for
    # both checks: each Ray job here pays a model load per actor.)
    monkeypatch.setattr(ray_job, "ExtractStage", _dies_once(tmp_path / "died"))
    out = tmp_path / "out"
    shutil.copytree(resumed.out, out)
    settings = Settings(
        model_path=str(demo_model_dir), url_allow_loopback_for_tests=True, max_batch_size=BATCH
    )
    options = RayJobOptions(
        out=str(out), retry_failed=True, rows_per_file=ROWS_PER_FILE, progress=False
    )
    report = run_job(collect_items(inputs.arguments), options, settings)
    assert (tmp_path / "died").exists(), "the actor should have died once"
    failed = len(inputs.expected_errors)
    assert report.summary.skipped == len(_ids(inputs)) - failed
    assert report.summary.done == 0
    assert report.summary.failed == Counter(inputs.expected_errors.values())
    assert not report.missing
    assert not report.duplicates
    counts = Counter(row["id"] for row in read_rows(str(out)))
    assert set(counts) == set(_ids(inputs))
    assert max(counts.values()) == 1
    again = run_job(collect_items(inputs.arguments), RayJobOptions(out=str(out)), settings)
    assert again.summary.skipped == len(_ids(inputs))
    assert again.summary.processed == 0


def _dies_once(flag: Path) -> type[ExtractStage]:
    """The engine stage, but its first batch anywhere kills its actor's process."""

    class DiesOnce(ExtractStage):
        def __call__(self, batch: pa.Table) -> pa.Table:
            if not flag.exists():
                flag.write_text(str(os.getpid()))
                os._exit(1)  # as a lost device ends the actor
            return super().__call__(batch)

    return DiesOnce
