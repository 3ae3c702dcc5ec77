"""The catalogue job over real photos: one line per image, resumable; the client's
`fashion-florence-client extract` and the server's `fashion-florence extract --local`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fashion_florence_client import catalogue
from fashion_florence_client.client import AsyncClient
from service import local_job
from service.cli import main
from service.http.app import create_app
from tests.conftest import PHOTOS, REPO_ROOT
from tests.fakes import FakeBackend
from tests.live import _no_ff_environment, live_service, settings

__all__ = ["_no_ff_environment"]  # the autouse fixture, shared

FOLDER = PHOTOS / "hat"  # one class folder: 12 real photos


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def photos() -> list[Path]:
    # Resolved, as the catalogue records them (shared data may be reached through a link).
    found = sorted(p.resolve() for p in FOLDER.iterdir() if p.suffix.lower() == ".jpg")
    assert len(found) >= 10, f"expected the real photos under {FOLDER}"
    return found


def test_folder_run_writes_one_line_per_image(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    listing = tmp_path / "more.txt"
    extra = photos()[0]
    listing.write_text(
        f"# also one file twice, and a missing one\n{extra}\n{tmp_path / 'no.jpg'}\n"
    )
    with live_service() as (url, _):
        code = main(
            ["extract", str(FOLDER), "--from-file", str(listing), "--out", str(out),
             "--server", url, "--concurrency", "4", "--no-progress"]
        )  # fmt: skip
    records = lines(out)
    items = [r["item"] for r in records]
    assert len(items) == len(set(items)) == len(photos()) + 1  # the duplicate counted once
    assert {str(p) for p in photos()} <= set(items)
    ok = [r for r in records if "attributes" in r]
    assert len(ok) == len(photos())
    assert all(r["model"]["name"] == "fake" and r["attributes"]["category"] for r in ok)
    (missing,) = [r for r in records if "error" in r]
    assert missing["error"]["code"] == "invalid_input"
    assert code == 1  # a failed item is reported in the exit status


def test_killed_and_rerun_it_resumes_without_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    # Slow batches, so the job is still running when it is killed.
    with live_service(settings(max_batch_size=1), FakeBackend(batch_delay_s=0.15)) as (url, _):
        command = [sys.executable, "-m", "service.cli", "extract", str(FOLDER), "--out", str(out),
                   "--server", url, "--concurrency", "1", "--no-progress"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("FF_")}
        job = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not out.exists() or len(out.read_text().splitlines()) < 3:
            assert job.poll() is None, job.stderr.read() if job.stderr else ""
            assert time.monotonic() < deadline, "the job wrote nothing"
            time.sleep(0.02)
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=10)
        first = lines(out)
        assert 3 <= len(first) < len(photos())
        with out.open("a") as sink:  # a line cut short by the kill
            sink.write('{"item": "/half/writ')
        code = main(
            ["extract", str(FOLDER), "--out", str(out), "--server", url, "--no-progress"]
        )  # fmt: skip
    records = lines(out)
    items = [r["item"] for r in records]
    assert code == 0
    assert records[: len(first)] == first  # kept, not redone
    assert sorted(items) == sorted(str(p) for p in photos())  # every image once


async def test_rerun_skips_done_and_retry_failed_redoes_errors(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    good = str(photos()[0])
    out.write_text(
        json.dumps({"item": good, "attributes": {}}) + "\n"
        + json.dumps({"item": str(photos()[1]), "error": {"code": "queue_full"}}) + "\n"
    )  # fmt: skip
    with live_service() as (url, _):
        async with AsyncClient(url) as client:
            summary = await catalogue.run_job(
                client, [good, str(photos()[1]), str(photos()[2])], out,
                concurrency=2, retry_failed=True, progress=False,
            )  # fmt: skip
    assert (summary.skipped, summary.done, dict(summary.failed)) == (1, 2, {})
    items = [r["item"] for r in lines(out)]
    assert sorted(items) == sorted([good, str(photos()[1]), str(photos()[2])])
    assert "images/s" in summary.render()
    assert "--retry-failed" not in summary.render()  # nothing failed: nothing to redo


def test_a_summary_with_failures_says_how_to_redo_them() -> None:
    summary = catalogue.Summary(skipped=0)
    summary.failed["connection_failed"] = 3
    last = summary.render().splitlines()[-1]
    assert "rerun with --retry-failed" in last
    assert "the 3 failed item(s)" in last
    assert "check that the service is up" in last


async def test_local_mode_runs_the_service_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --local is create_app() behind the ASGI transport; the fake backend stands in for
    # the engine (the real one is exercised by the report's run).
    monkeypatch.setattr(
        local_job, "create_local_app", lambda: create_app(settings(), FakeBackend())
    )
    out = tmp_path / "local.jsonl"
    async with local_job.local_client() as client:
        assert isinstance(client._http._transport, httpx.ASGITransport)
        summary = await catalogue.run_job(
            client, [str(p) for p in photos()[:4]], out, concurrency=2, progress=False
        )
    assert summary.done == 4
    assert len(lines(out)) == 4


def test_client_command_without_tqdm_prints_plain_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The client's own install has no tqdm (it is the `cli` extra): the job still reports.
    from fashion_florence_client.cli import main as client_main

    monkeypatch.setitem(sys.modules, "tqdm", None)  # `from tqdm import tqdm` now fails
    out = tmp_path / "client.jsonl"
    with live_service() as (url, _):
        code = client_main(
            ["extract", *(str(p) for p in photos()[:2]), "--out", str(out), "--server", url]
        )
    assert code == 0
    assert len(lines(out)) == 2
    assert "2/2 images, 0 failed" in capsys.readouterr().err


def test_server_command_local_flag_runs_in_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        local_job, "create_local_app", lambda: create_app(settings(), FakeBackend())
    )
    out = tmp_path / "local.jsonl"
    code = main(["extract", str(photos()[0]), "--out", str(out), "--local", "--no-progress"])
    assert code == 0
    (record,) = lines(out)
    assert record["model"]["name"] == "fake"
