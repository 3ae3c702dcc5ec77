"""SIGTERM against real uvicorn in a subprocess: in-flight work finishes, new work is refused,
the process exits 0 within the grace period. Loopback only."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.served import free_port
from tests.service.http.conftest import RED

pytestmark = [pytest.mark.slow, pytest.mark.load]


def _spawn(port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tests.faults", "--port", str(port)]
    command += ["--latency-ms", "1500", "--drain-timeout-s", "10"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def _wait_ready(client: httpx.AsyncClient, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "server died during start-up"
        try:
            if (await client.get("/readyz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    pytest.fail("server not ready in 60 s")


async def test_sigterm_drains_in_flight_work_and_exits_zero() -> None:
    port = free_port()
    process = _spawn(port)
    try:
        limits = httpx.Limits(max_connections=20, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=30, limits=limits
        ) as client:
            await _wait_ready(client, process)
            files = {"image": ("x.jpg", RED, "image/jpeg")}
            in_flight = [
                asyncio.create_task(client.post("/v1/extract", files=files)) for _ in range(4)
            ]
            await asyncio.sleep(0.3)  # all four are in the engine's 1.5 s batch
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.1)
            ready = await client.get("/readyz")
            refused = await client.post("/v1/extract", files=files)
            answers = await asyncio.gather(*in_flight)
        exit_code = await asyncio.to_thread(process.wait, 20)
        drained_after = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    print(f"\ndrain: 4 in flight answered {[r.status_code for r in answers]}, "
          f"new request {refused.status_code} {refused.json().get('code')}, exit {exit_code} "
          f"after {drained_after:.2f}s")  # fmt: skip
    assert ready.status_code == 503
    assert refused.status_code == 503
    assert refused.json()["code"] == "draining"
    assert [r.status_code for r in answers] == [200] * 4
    assert exit_code == 0
    assert drained_after < 10
