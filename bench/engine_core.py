"""The process layout measured: cold start and memory, intake scaling, an engine-core kill.

    python -m bench.engine_core [--parts cold,ipc,intake,fault] [--quick]

* ``cold``: ``fashion-florence serve`` with the demo model and 1 and 2 API servers: spawn
  to the first 200 of ``/readyz``, and the resident memory of every process of it.
* ``ipc``: one API server's round trip to the engine core and back (``CoreClient.infer``
  against an instant core, one image at a time): the transport's own cost per image, at
  the demo's 64 px and at Florence-2's 768 px.
* ``intake``: the API servers alone. The engine core is replaced by one that answers at
  once (:func:`run_instant_core`, a benchmark's stand-in, never the product's), so what is
  measured is HTTP, multipart parsing, decoding, the resize and the IPC: images/s with 1
  and with 2 API servers, 64 closed-loop clients, the 372 real test photos.
* ``fault``: 32 clients upload real photos for 30 s and the engine core is SIGKILLed at
  10 s; a client told 503 waits ``Retry-After`` before its next upload, as the project's
  client does. Every answer is tallied (200, or 503 with a code and ``Retry-After``; anything
  else is a failure of the service), and the time until ``/readyz`` is 200 again.

Loopback only, bounded in time. Prints Markdown and one line per goal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Final

import httpx

from bench.load import closed_loop, photo_payloads, summary
from bench.rawhttp import RawConnection, encode_upload
from bench.servers import ServerHandle, free_port, spawn, spawn_service
from fashion_florence_client.schema import AttributeConfidence, FashionAttributes
from service.backend import ItemOutcome, ModelInfo
from service.ipc.channel import CoreAddress
from service.ipc.shared_state import SharedState
from service.settings import Settings
from service.supervisor import cpus_available
from service.telemetry.process_metrics import service_pids

TEST_PHOTOS: Final = Path(__file__).resolve().parents[2] / "shared" / "data" / "clothing-small"
_ANSWER = FashionAttributes(
    category="top", primary_color="navy", material=None, style_tags=[], occasion_tags=[]
)
_CONFIDENCE = AttributeConfidence(
    category=1.0, primary_color=1.0, material=1.0, style_tags=[], occasion_tags=[]
)


class InstantBackend:
    """Answers every image at once: the engine core's scheduler and IPC stay real, the
    model is gone, so the API servers are what limits throughput."""

    def __init__(self, side: int) -> None:
        self.side, self.resample = side, 2  # PIL's bilinear
        self.info = ModelInfo("instant", "0", "cpu", "float32", side)

    def preprocess(self, image: Any) -> Any:
        raise NotImplementedError("the API servers resize; the core only runs batches")

    def run_batch(self, images: Sequence[Any]) -> list[ItemOutcome]:
        return [ItemOutcome("{}", 1, _ANSWER, confidence=_CONFIDENCE) for _ in images]

    def warmup(self) -> None: ...
    def check_device(self) -> None: ...
    def close(self) -> None: ...


def run_instant_core(
    settings: Settings, address: CoreAddress, state: SharedState, ready: Connection
) -> None:
    """An engine core serving :class:`InstantBackend` (the supervisor's ``core_target``)."""
    from service.engine_core.main import serve_core
    from service.process import die_with_parent

    die_with_parent()
    side = int(os.environ.get("BENCH_INSTANT_SIDE", "768"))
    asyncio.run(serve_core(InstantBackend(side), settings, address, state, ready))


def serve_instant(api_servers: int) -> int:
    """``--serve-instant N``: the real supervisor and API servers, an instant core."""
    from service.supervisor import Supervisor, bind_listener

    settings = Settings()
    supervisor = Supervisor(settings, api_servers, bind_listener(settings), run_instant_core)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    supervisor.start()
    supervisor.supervise()
    supervisor.stop()
    return 0


def total_rss_bytes(root: int) -> int:
    total = 0
    for pid in service_pids(root):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf(
                "SC_PAGE_SIZE"
            )
        except OSError:
            continue
    return total


def cold(quick: bool) -> list[dict[str, Any]]:
    rows = []
    for servers in (1, 2):
        for _ in range(1 if quick else 3):
            with spawn_service(None, {"FF_API_SERVERS": str(servers)}) as handle:
                time.sleep(1.0)  # let the warm-up's allocations settle
                rows.append({"api_servers": servers, "cold_start_s": handle.cold_start_s,
                             "rss_mib": total_rss_bytes(handle.pid) / 2**20})  # fmt: skip
    return rows


async def _round_trips(side: int, count: int) -> dict[str, Any]:
    import multiprocessing
    import statistics
    import tempfile

    import numpy as np

    from service.ipc.shared_state import CoreStatus
    from service.serving.core_client import CoreClient, CoreLink

    context = multiprocessing.get_context("spawn")
    state = SharedState.create(context, capacity=8, servers=1)
    address = CoreAddress(Path(tempfile.mkdtemp(prefix="ff-bench-ipc-")))
    ours, theirs = context.Pipe(duplex=False)
    settings = Settings(cache_enabled=False)
    state.core_starting(1, 0, 0)
    os.environ["BENCH_INSTANT_SIDE"] = str(side)
    core = context.Process(target=run_instant_core, args=(settings, address, state, theirs))
    core.start()
    try:
        await asyncio.to_thread(ours.recv)
        state.set_status(CoreStatus.READY)
        client = await CoreClient.connect(CoreLink(address, state), settings)
        pixels = np.zeros((side, side, 3), dtype=np.uint8)
        times = []
        for _ in range(count):
            started = time.perf_counter()
            await client.infer(pixels, deadline=time.monotonic() + 10, key=None)
            times.append(time.perf_counter() - started)
        await client.close()
    finally:
        core.terminate()
        core.join(10)
    return {"side": side, "p50_us": statistics.median(times) * 1e6,
            "mean_us": statistics.fmean(times) * 1e6}  # fmt: skip


def ipc(quick: bool) -> list[dict[str, Any]]:
    return [asyncio.run(_round_trips(side, 200 if quick else 2000)) for side in (64, 768)]


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds ``pid`` has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _listener_inode(port: int) -> str:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if int(cols[1].rsplit(":", 1)[1], 16) == port and cols[3] == "0A":  # LISTEN
            return cols[9]
    raise RuntimeError(f"nothing listens on port {port}")


def service_roles(root: int, port: int) -> dict[int, str]:
    """Each process of a service by its role: the supervisor (the root), the API servers
    (the processes that hold the listening socket), the engine core (the rest)."""
    socket = f"socket:[{_listener_inode(port)}]"
    roles = {}
    for pid in service_pids(root):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            fds = [os.readlink(f) for f in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            continue  # ended meanwhile
        if pid == root:
            roles[pid] = "supervisor"
        elif b"resource_tracker" in cmdline:
            roles[pid] = "supervisor"  # multiprocessing's helper, started by the supervisor
        else:
            roles[pid] = "API servers" if socket in fds else "engine core"
    return roles


def cpu_by_role(roles: dict[int, str]) -> dict[str, float]:
    totals: dict[str, float] = dict.fromkeys(roles.values(), 0.0)
    for pid, role in roles.items():
        with contextlib.suppress(OSError):
            totals[role] += _cpu_s(pid)
    return totals


def intake(photos: list[bytes], seconds: float, side: int) -> list[dict[str, Any]]:
    """Also where the CPU goes: CPU ms per answered image for each role and for the load
    generator, and the most images/s the machine's CPUs allow at that cost."""
    rows = []
    for servers in (1, 2):
        port = free_port()
        env = {"FF_HOST": "127.0.0.1", "FF_PORT": str(port), "FF_LOG_LEVEL": "warning",
               "FF_CACHE_ENABLED": "false", "FF_QUEUE_SIZE": "4096",
               "BENCH_INSTANT_SIDE": str(side)}  # fmt: skip
        argv = [sys.executable, "-m", "bench.engine_core", "--serve-instant", str(servers)]
        with spawn(argv, env, port) as handle:
            base = handle.base_url
            asyncio.run(closed_loop(base, photos[:64], 64, 10**9, 2.0))  # warm the servers
            roles = service_roles(handle.pid, port)
            before, own = cpu_by_role(roles), time.process_time()
            tally = asyncio.run(closed_loop(base, photos, 64, 10**9, seconds))
            after, own = cpu_by_role(roles), time.process_time() - own
        row = summary(tally)
        answered = max(1, len(tally.latencies_ok))
        cpu_ms = {role: 1000 * (after[role] - before[role]) / answered for role in after}
        cpu_ms["load generator"] = 1000 * own / answered
        rows.append({"api_servers": servers, "side": side, "img_s": row["throughput_ok_per_s"],
                     "p99_ms": row["p99_ms"], "by_status": row["by_status"],
                     "cpu_ms_per_image": cpu_ms,
                     "cpu_bound_img_s": 1000 * cpus_available() / sum(cpu_ms.values())})  # fmt: skip
    return rows


async def _fault_load(handle: ServerHandle, photos: list[bytes], kill_at_s: float,
                      total_s: float) -> dict[str, Any]:  # fmt: skip
    statuses: Counter[str] = Counter()
    bad: list[str] = []
    started = time.monotonic()
    core = _engine_core_pid(handle.pid)

    async def client(index: int) -> None:
        connection = RawConnection(handle.base_url)
        n = index
        while time.monotonic() - started < total_s:
            request = encode_upload(connection.authority, photos[n % len(photos)])
            n += 32
            response = await connection.send(request)
            if response.status_code == 200:
                statuses["200"] += 1
                continue
            code = response.json().get("code")
            statuses[f"{response.status_code} {code}"] += 1
            if response.status_code != 503 or not code or response.retry_after is None:
                bad.append(f"{response.status_code} {code} retry-after={response.retry_after}")
            else:  # as the project's client does: never sooner than Retry-After
                await asyncio.sleep(float(response.retry_after))
        await connection.close()

    async def killer() -> float | None:
        await asyncio.sleep(kill_at_s)
        os.kill(core, signal.SIGKILL)
        killed = time.monotonic()
        async with httpx.AsyncClient(base_url=handle.base_url, timeout=5) as probe:
            await asyncio.sleep(0.05)
            while time.monotonic() - killed < total_s:
                if (await probe.get("/readyz")).status_code == 200:
                    return time.monotonic() - killed
                await asyncio.sleep(0.05)
        return None

    results = await asyncio.gather(killer(), *(client(i) for i in range(32)))
    return {"statuses": dict(statuses), "not_allowed": bad, "ready_again_s": results[0]}


def _engine_core_pid(supervisor: int) -> int:
    for pid in service_pids(supervisor)[1:]:
        if "libtorch" in Path(f"/proc/{pid}/maps").read_text():
            return pid
    raise RuntimeError("no engine core found")


def fault(photos: list[bytes], quick: bool) -> dict[str, Any]:
    with spawn_service(None, {"FF_API_SERVERS": "1"}) as handle:
        return asyncio.run(_fault_load(handle, photos, 3.0 if quick else 10.0,
                                       10.0 if quick else 30.0))  # fmt: skip


def render(result: dict[str, Any]) -> str:
    lines = [f"machine: {result['machine']}", ""]
    if "cold" in result:
        lines += ["| API servers | cold start to ready (s) | RSS, all processes (MiB) |",
                  "|---|---|---|"]  # fmt: skip
        lines += [f"| {r['api_servers']} | {r['cold_start_s']:.2f} | {r['rss_mib']:.0f} |"
                  for r in result["cold"]]  # fmt: skip
        lines.append(
            f"cold start to ready, worst: {max(r['cold_start_s'] for r in result['cold']):.2f} s"
        )
    if "ipc" in result:
        lines += ["", "| pixels | IPC round trip p50 (µs) | mean (µs) |", "|---|---|---|"]
        lines += [f"| {r['side']} x {r['side']} x 3 | {r['p50_us']:.0f} | {r['mean_us']:.0f} |"
                  for r in result["ipc"]]  # fmt: skip
    if "intake" in result:
        one, two = result["intake"]
        lines += ["", "| API servers (instant engine) | resize to | img/s | p99 ms |",
                  "|---|---|---|---|"]  # fmt: skip
        lines += [f"| {r['api_servers']} | {r['side']} px | {r['img_s']:.1f} | {r['p99_ms']:.1f} |"
                  for r in result["intake"]]  # fmt: skip
        roles = list(one["cpu_ms_per_image"])
        lines += ["", "| API servers | " + " | ".join(f"CPU ms/img, {r}" for r in roles)
                  + " | img/s the CPUs allow at that cost |",
                  "|---" * (len(roles) + 2) + "|"]  # fmt: skip
        lines += [f"| {r['api_servers']} | "
                  + " | ".join(f"{r['cpu_ms_per_image'].get(k, 0.0):.2f}" for k in roles)
                  + f" | {r['cpu_bound_img_s']:.1f} |" for r in result["intake"]]  # fmt: skip
        lines.append(f"intake scaling, 2/1 API servers: {two['img_s'] / one['img_s']:.2f}")
        lines.append(f"intake scaling, most the CPUs allow (1 API server's cost): "
                     f"{one['cpu_bound_img_s'] / one['img_s']:.2f}")  # fmt: skip
    if "fault" in result:
        f = result["fault"]
        lines += ["", f"fault: answers {json.dumps(f['statuses'])}",
                  f"fault: answers that are neither 200 nor 503 with a code and Retry-After: "
                  f"{len(f['not_allowed'])} {f['not_allowed'][:5]}",
                  f"fault: ready again after the SIGKILL: {f['ready_again_s']} s"]  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--parts", default="cold,ipc,intake,fault", help="which parts to run")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke plan)")
    parser.add_argument("--instant-side", type=int, default=768,
                        help="intake: the side the API servers resize to (the demo: 64)")  # fmt: skip
    parser.add_argument("--serve-instant", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_instant is not None:
        return serve_instant(args.serve_instant)
    parts = {p.strip() for p in args.parts.split(",")}
    photos = photo_payloads(TEST_PHOTOS / "test", 372)
    result: dict[str, Any] = {"machine": f"{os.cpu_count()} CPUs, {sys.platform}"}
    if "cold" in parts:
        result["cold"] = cold(args.quick)
    if "ipc" in parts:
        result["ipc"] = ipc(args.quick)
    if "intake" in parts:
        result["intake"] = intake(photos, 5.0 if args.quick else 20.0, args.instant_side)
    if "fault" in parts:
        result["fault"] = fault(photos, args.quick)
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
