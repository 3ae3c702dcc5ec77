"""``fashion-florence serve`` as it runs in production: a supervisor, the engine core and
API servers, all real processes on loopback with the shipped demo model. Each test is
bounded in requests and time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import photo_paths
from tests.served import spawn_serve, stderr_of, wait_ready
from tests.served import stop_serve as stop

pytestmark = [pytest.mark.slow, pytest.mark.load]

START_TIMEOUT_S = 90.0


def children(pid: int) -> list[int]:
    """The processes directly below ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def engine_core_pid(supervisor: int) -> int:
    """The engine core among the supervisor's children: the one child that loaded torch."""
    for pid in children(supervisor):
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        if "libtorch" in maps:
            return pid
    raise AssertionError("no engine core below the supervisor")


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return [path.read_bytes() for path in photo_paths(8)]


def upload(photo: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {"image": ("photo.jpg", photo, "image/jpeg")}


@pytest.fixture(scope="module")
def two_servers() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    process, base_url = spawn_serve(
        {"FF_API_SERVERS": "2", "FF_QUEUE_SIZE": "2", "FF_MAX_BATCH_SIZE": "2"}
    )
    try:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            wait_ready(process, client, START_TIMEOUT_S)
        yield process, base_url
    finally:
        stop(process)


def test_the_service_is_a_supervisor_an_engine_core_and_api_servers(
    two_servers: tuple[subprocess.Popen[bytes], str], photos: list[bytes]
) -> None:
    process, base_url = two_servers
    below = children(process.pid)
    core = engine_core_pid(process.pid)
    api_servers = [p for p in below if p != core and "resource_tracker" not in process_name(p)]
    assert len(api_servers) == 2, [process_name(p) for p in below]
    for pid in api_servers:  # the API servers never load torch
        assert "libtorch" not in Path(f"/proc/{pid}/maps").read_text()
    # One result cache for all API servers: a fresh connection per request lands on
    # either server, and every repeat of the photo is a hit.
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=base_url, timeout=30, limits=no_reuse) as client:
        before = client.get("/metrics").text
        answers = [client.post("/v1/extract", files=upload(photos[0])) for _ in range(6)]
        assert [a.status_code for a in answers] == [200] * 6
        assert len({a.json()["attributes"]["category"] for a in answers}) == 1
        text = client.get("/metrics").text
    hits = metric(text, "ff_cache_hits_total") - metric(before, "ff_cache_hits_total")
    assert hits == 5
    ran = metric(text, "ff_images_total") - metric(before, "ff_images_total")
    assert ran == 1  # the model ran the photo once
    assert metric(text, "ff_requests_total") >= 1
    # process_* adds up the whole service: more than the API server answering alone
    assert metric(text, "ff_service_processes") >= 4
    rss = metric(text, "process_resident_memory_bytes")
    one = int(Path(f"/proc/{api_servers[0]}/statm").read_text().split()[1]) * os.sysconf(
        "SC_PAGE_SIZE"
    )
    assert rss > 2 * one
    assert "_created" not in text


async def test_admission_is_global_across_api_servers(
    two_servers: tuple[subprocess.Popen[bytes], str], photos: list[bytes]
) -> None:
    """Capacity 4 (queue 2 + batch 2) holds for both servers together: 300 concurrent
    uploads get 200 or 503 queue_full with Retry-After, and no more than 4 are ever in."""
    _, base_url = two_servers
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=0)
    stop_watching = asyncio.Event()
    in_flight: list[float] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:

        async def watch() -> None:
            while not stop_watching.is_set():
                text = (await client.get("/metrics")).text
                in_flight.append(metric(text, "ff_in_flight_requests"))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        # Distinct bytes per request, so no answer comes from the result cache.
        bodies = [photos[i % len(photos)] + bytes([i % 251, i // 251]) for i in range(300)]
        answers = await asyncio.gather(
            *(client.post("/v1/extract", files=upload(body)) for body in bodies)
        )
        stop_watching.set()
        await watcher
    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[200] >= 4, statuses
    assert statuses[503] >= 1, statuses
    for answer in answers:
        if answer.status_code == 503:
            assert answer.json()["code"] == "queue_full"
            assert int(answer.headers["Retry-After"]) >= 1
    assert in_flight
    assert max(in_flight) <= 4


async def test_a_killed_engine_core_is_replaced_and_no_request_is_lost(
    photos: list[bytes],
) -> None:
    process, base_url = spawn_serve({"FF_API_SERVERS": "1"})
    try:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
            await asyncio.to_thread(wait_ready, process, httpx.Client(base_url=base_url), 90)
            first_core = engine_core_pid(process.pid)
            answers: list[httpx.Response] = []
            until = time.monotonic() + 6.0

            async def keep_uploading(worker: int) -> None:
                n = 0
                while time.monotonic() < until:
                    body = photos[(worker + n) % len(photos)] + bytes([worker, n % 256])
                    answers.append(await client.post("/v1/extract", files=upload(body)))
                    n += 1

            clients = [asyncio.create_task(keep_uploading(w)) for w in range(16)]
            await asyncio.sleep(1.5)
            os.kill(first_core, signal.SIGKILL)
            killed_at = time.monotonic()
            await asyncio.gather(*clients)
            ready_again = None
            while time.monotonic() - killed_at < 60:
                if (await client.get("/readyz")).status_code == 200:
                    ready_again = time.monotonic() - killed_at
                    break
                await asyncio.sleep(0.1)
            after = await client.post("/v1/extract", files=upload(photos[1]))
        assert ready_again is not None, "not ready again within 60 s"
        assert after.status_code == 200
        assert engine_core_pid(process.pid) != first_core
        statuses = Counter(a.status_code for a in answers)
        assert set(statuses) <= {200, 503}, statuses
        codes = Counter(a.json()["code"] for a in answers if a.status_code == 503)
        assert codes["engine_restarting"] >= 1, codes
        assert set(codes) <= {"engine_restarting", "queue_full"}, codes
        assert all("Retry-After" in a.headers for a in answers if a.status_code == 503)
        assert statuses[200] >= 16  # it served before and after
    finally:
        stop(process)


def test_an_engine_core_that_keeps_dying_fails_liveness() -> None:
    process, base_url = spawn_serve({"FF_API_SERVERS": "1", "FF_ENGINE_RESTARTS_MAX": "0"})
    try:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            wait_ready(process, client, START_TIMEOUT_S)
            assert client.get("/healthz").status_code == 200
            os.kill(engine_core_pid(process.pid), signal.SIGKILL)
            deadline = time.monotonic() + 20
            while client.get("/healthz").status_code == 200:
                assert time.monotonic() < deadline, "liveness did not fail"
                time.sleep(0.1)
            health = client.get("/healthz")
            assert health.status_code == 503
            assert "died" in health.json()["detail"]
            assert client.get("/readyz").status_code == 503
            refused = client.post("/v1/extract", files=upload(b"not read"))
            assert refused.status_code == 503
            assert "Retry-After" in refused.headers
    finally:
        stop(process)


def run_dir_of(supervisor: int) -> Path:
    """The service's private run directory (its metrics directory's parent)."""
    environ = Path(f"/proc/{engine_core_pid(supervisor)}/environ").read_bytes()
    for variable in environ.split(b"\0"):
        if variable.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
            run_dir = Path(variable.split(b"=", 1)[1].decode()).parent
            assert run_dir.is_dir()
            return run_dir
    raise AssertionError("the engine core has no PROMETHEUS_MULTIPROC_DIR")


def assert_nothing_left(processes: list[int], run_dir: Path, shm_before: set[str]) -> None:
    # multiprocessing's resource tracker ends when it reads the supervisor's pipe close:
    # a moment after the supervisor, not at the same instant.
    deadline = time.monotonic() + 5
    while [p for p in processes if Path(f"/proc/{p}").exists()] and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [process_name(pid) for pid in processes if Path(f"/proc/{pid}").exists()]
    assert not left, f"orphaned processes: {left}"
    assert not run_dir.exists()
    # Another xdist worker's live processes may have opened segments meanwhile; a leaked
    # one is mapped by no process.
    new = set(os.listdir("/dev/shm")) - shm_before
    assert not new - mapped_shm_segments(), f"left in /dev/shm: {new}"


def mapped_shm_segments() -> set[str]:
    """The /dev/shm entries some live process has mapped (a named semaphore is)."""
    names = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        with contextlib.suppress(OSError):
            for line in maps.read_text().splitlines():
                if "/dev/shm/" in line:
                    names.add(line.rsplit("/dev/shm/", 1)[1].split(" ", 1)[0])
    return names


async def test_sigterm_drains_every_process_and_leaves_nothing_behind(
    photos: list[bytes],
) -> None:
    shm_before = set(os.listdir("/dev/shm"))
    process, base_url = spawn_serve({"FF_API_SERVERS": "2"})
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
            await asyncio.to_thread(wait_ready, process, httpx.Client(base_url=base_url), 90)
            below, run_dir = children(process.pid), run_dir_of(process.pid)
            bodies = [photos[i % len(photos)] + bytes([i]) for i in range(24)]
            in_flight = [
                asyncio.create_task(client.post("/v1/extract", files=upload(b))) for b in bodies
            ]
            await asyncio.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            answers = await asyncio.gather(*in_flight, return_exceptions=True)
        exit_code = await asyncio.to_thread(process.wait, 60)
    finally:
        stop(process)
    assert exit_code == 0
    for answer in answers:
        assert isinstance(answer, httpx.Response), answer  # every request was answered
        assert answer.status_code == 200 or answer.json()["code"] == "draining"
    assert sum(isinstance(a, httpx.Response) and a.status_code == 200 for a in answers) >= 1
    assert_nothing_left(below, run_dir, shm_before)


BAD_SETTINGS: list[tuple[dict[str, str], int, str]] = [
    ({"FF_MODEL_PATH": "/nonexistent/model"}, 1, "FF_MODEL_PATH"),
    ({"FF_MAX_NEW_TOKENS": "100"}, 1, "FF_MAX_NEW_TOKENS"),
    ({"FF_DEVICE": "cuda"}, 1, "FF_DEVICE"),
    ({"FF_API_SERVERS": "64"}, 2, "FF_API_SERVERS"),
    ({"FF_API_SERVERS": "0"}, 2, "FF_API_SERVERS"),
    ({"FF_MAX_BATCH_SIZE": "0"}, 2, "FF_MAX_BATCH_SIZE"),
]


@pytest.fixture(scope="module")
def bad_starts() -> list[tuple[int | None, str]]:
    """Every bad start at once (each mostly waits on its engine core's torch import, so
    they overlap well): exit status and stderr, in ``BAD_SETTINGS`` order."""
    processes = [spawn_serve({**env, "HF_HUB_OFFLINE": "1"})[0] for env, _, _ in BAD_SETTINGS]
    deadline = time.monotonic() + 60
    try:
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        for process in processes:
            stop(process)
    return [(process.returncode, stderr_of(process)) for process in processes]


@pytest.mark.parametrize("case", range(len(BAD_SETTINGS)), ids=[n for _, _, n in BAD_SETTINGS])
def test_a_bad_setting_stops_the_start_with_one_line(
    case: int, bad_starts: list[tuple[int | None, str]]
) -> None:
    env, status, names = BAD_SETTINGS[case]
    if env.get("FF_DEVICE") == "cuda" and Path("/dev/nvidia0").exists():
        pytest.skip("this machine has a CUDA device, so FF_DEVICE=cuda is not a bad setting")
    returncode, stderr = bad_starts[case]
    assert returncode == status, stderr
    ours = [line for line in stderr.splitlines() if "fashion-florence serve:" in line]
    assert len(ours) == 1, stderr
    assert names in ours[0]
    assert "Traceback" not in stderr
