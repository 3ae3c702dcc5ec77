"""Spawn an HTTP server as a subprocess on 127.0.0.1, wait until it is ready, stop it.

Every benchmark server (ours and the baselines in :mod:`bench.baselines`) goes through
:func:`spawn`, so cold start, peak memory and shutdown are measured the same way for all.
Servers listen on 127.0.0.1 only and every client here ignores proxy variables, so no
packet leaves the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Final

import httpx

LOOPBACK: Final = "127.0.0.1"
#: How much of the server's output a startup failure quotes.
LOG_TAIL_BYTES: Final = 4000
#: How long a stopped server's leftover workers get to exit after the SIGTERM before SIGKILL.
GROUP_EXIT_S: Final = 5.0


class ServerStartError(RuntimeError):
    """The server exited, or did not answer its readiness path in time; the message quotes
    the end of its output."""


def free_port() -> int:
    """A port free on 127.0.0.1 right now (another process may still take it first)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerHandle:
    process: subprocess.Popen[bytes]
    base_url: str
    cold_start_s: float  # process spawn to the first 2xx from the readiness path
    log: IO[bytes] = field(repr=False)  # the server's stdout and stderr, interleaved
    #: The server runs in its own process group, and stopping it signals the whole group:
    #: servers that start worker processes (LitServe, BentoML, Ray) must not leave them.
    group: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, limit: int = LOG_TAIL_BYTES) -> str:
        self.log.flush()
        self.log.seek(0, os.SEEK_END)
        size = self.log.tell()
        self.log.seek(max(0, size - limit))
        return self.log.read().decode(errors="replace")

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (our service drains, then exits), then SIGKILL if it is still running
        after ``timeout_s``. Returns the exit status; calling it again only returns it."""
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait(timeout=10)
        if self.group:
            # Workers that outlived their parent had the SIGTERM too: give them a moment
            # to exit on their own (a SIGKILLed worker leaves its multiprocessing
            # semaphores in /dev/shm), then SIGKILL whatever is left.
            self._wait_group_gone(GROUP_EXIT_S)
            self._signal(signal.SIGKILL)
        self.log.close()
        return int(self.process.returncode)

    def _wait_group_gone(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def _signal(self, signum: int) -> None:
        if not self.group:
            if self.process.poll() is None:
                self.process.send_signal(signum)
            return
        with contextlib.suppress(ProcessLookupError):  # the group is gone already
            os.killpg(self.process.pid, signum)

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def child_environment(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without its FF_* variables, plus ``env``: a developer's
    shell must not change what a benchmark configures."""
    inherited = {k: v for k, v in os.environ.items() if not k.upper().startswith("FF_")}
    return {**inherited, **env}


def spawn(
    argv: list[str],
    env: Mapping[str, str],
    port: int,
    *,
    ready_path: str = "/readyz",
    timeout_s: float = 180.0,
    cwd: Path | None = None,
    group: bool = False,
) -> ServerHandle:
    """Start ``argv`` (a server that listens on 127.0.0.1:``port``) in ``cwd`` with ``env``
    over this process's environment (see :func:`child_environment`); wait for a 2xx from
    ``ready_path``. Raises :class:`ServerStartError`, with the process stopped, if it exits
    first or is not ready within ``timeout_s``. With ``group``, it runs in a new process
    group that is stopped as a whole (see :attr:`ServerHandle.group`)."""
    # Owned by the handle (closed by stop()), so no `with`: it outlives this function.
    log = tempfile.TemporaryFile(prefix="ff-bench-server-")  # noqa: SIM115
    started = time.perf_counter()
    process = subprocess.Popen(
        argv,
        env=child_environment(env),
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=group,
    )
    handle = ServerHandle(process, f"http://{LOOPBACK}:{port}", 0.0, log, group)
    try:
        handle.cold_start_s = _wait_ready(handle, ready_path, started, timeout_s)
    except BaseException:
        handle.kill()
        log.close()
        raise
    return handle


#: How our service's probes describe an engine that will never serve (see
#: ``service.serving.lifecycle.Runtime.liveness``): the model failed to load, or broke.
FAILED_DETAIL_PREFIXES: Final = ("engine failed", "engine dead")


def failed_phase(response: httpx.Response) -> str | None:
    """The probe's detail when it says the server will never be ready, else None."""
    if response.status_code != 503:
        return None
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        return None  # not our service's probe body: keep waiting
    if isinstance(detail, str) and detail.startswith(FAILED_DETAIL_PREFIXES):
        return detail
    return None


def _wait_ready(handle: ServerHandle, path: str, started: float, timeout_s: float) -> float:
    with httpx.Client(base_url=handle.base_url, timeout=2.0, trust_env=False) as client:
        while time.perf_counter() - started < timeout_s:
            if handle.process.poll() is not None:
                raise ServerStartError(
                    f"server exited with status {handle.process.returncode} before it was "
                    f"ready; its output ended:\n{handle.log_tail()}"
                )
            try:
                response = client.get(path)
            except httpx.TransportError:
                response = None  # not listening yet
            if response is not None and response.is_success:
                return time.perf_counter() - started
            failed = None if response is None else failed_phase(response)
            if failed is not None:
                # Our service stays up with its probes at 503 when the model cannot load:
                # waiting out the timeout would only delay the same answer.
                raise ServerStartError(
                    f"server at {handle.base_url} will not become ready: {failed}; its "
                    f"output ended:\n{handle.log_tail()}"
                )
            time.sleep(0.02)
    raise ServerStartError(
        f"server not ready at {handle.base_url}{path} within {timeout_s:.0f} s; "
        f"its output ended:\n{handle.log_tail()}"
    )


def spawn_service(
    model_dir: Path | None,
    extra_env: Mapping[str, str] | None = None,
    *,
    timeout_s: float = 180.0,
) -> ServerHandle:
    """Our service (``python -m service.cli serve``) on a free port of 127.0.0.1.

    The result cache is off unless ``extra_env`` turns it on: benchmarks repeat a few
    payloads, and answering repeats from memory would measure the cache, not the model.
    Without ``model_dir`` the service uses its demo model (``FF_DEMO_MODEL_DIR``).
    """
    port = free_port()
    env = {
        "FF_HOST": LOOPBACK,
        "FF_PORT": str(port),
        "FF_LOG_LEVEL": "warning",
        "FF_CACHE_ENABLED": "false",
        **({"FF_MODEL_PATH": str(model_dir)} if model_dir is not None else {}),
        **(extra_env or {}),
    }
    argv = [sys.executable, "-m", "service.cli", "serve"]
    return spawn(argv, env, port, timeout_s=timeout_s)


def service_peak_rss_bytes(pid: int) -> int:
    """The peak RSS of ``pid`` and every process below it (our service: the supervisor,
    the engine core, the API servers), added up: an upper bound, since the peaks need not
    coincide. Read it before stopping the service."""
    from service.telemetry.process_metrics import service_pids

    total = 0
    for member in service_pids(pid):
        with contextlib.suppress(OSError, RuntimeError):  # it ended meanwhile
            total += peak_rss_bytes(member)
    return total


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set size (VmHWM), Linux only. Read it before stopping
    the process: /proc forgets it at exit."""
    status = Path(f"/proc/{pid}/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            value, unit = line.split()[1:3]
            assert unit == "kB", f"unexpected VmHWM unit {unit!r}"
            return int(value) * 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


#: The service's counters that one measured point reads before and after itself.
ENGINE_COUNTERS: Final = (
    "ff_batch_size_sum",
    "ff_batch_size_count",
    "ff_inference_duration_seconds_sum",
)


def engine_counters(base_url: str) -> dict[str, float]:
    """Batch size (sum, count) and engine seconds so far, from our service's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base_url}/metrics", timeout=10, trust_env=False).text
    values = dict.fromkeys(ENGINE_COUNTERS, 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in values:
                values[sample.name] = sample.value
    return values


def scrape_mean_batch(base_url: str) -> float:
    """Mean engine batch size our service formed so far (0 before any batch)."""
    counters = engine_counters(base_url)
    return counters["ff_batch_size_sum"] / max(counters["ff_batch_size_count"], 1.0)
