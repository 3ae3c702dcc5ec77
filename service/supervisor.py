"""``fashion-florence serve``: the supervisor, the service's first process.

It binds the listening socket, then starts the engine core (``service.engine_core``:
one process that owns the device, the model, the queue and the decode loop) and
``FF_API_SERVERS`` API servers (``service.http.server``: HTTP and intake, sharing the
socket), and watches them:

* a core that fails to load at start ends the service: one line naming the cause, exit 1;
* a core that dies later (SIGKILL, the OOM killer, a sticky CUDA error, a batch stalled
  past ``FF_ENGINE_STALL_TIMEOUT_S``) is replaced; the API servers answer what it held
  with ``engine_restarting`` and refuse new work the same way until the new core is
  ready. Past ``FF_ENGINE_RESTARTS_MAX`` deaths in ``FF_ENGINE_RESTART_WINDOW_S`` it is
  not replaced: liveness fails and Kubernetes restarts the pod;
* an API server that dies is replaced (its admitted images go back to the pool);
* SIGTERM (or SIGINT) drains: every API server finishes what it admitted and exits, then
  the core stops; the exit status is 0 and nothing is left behind (no process, no
  socket, no shared memory).

What the processes share is in ``service.ipc``; the run directory (the core's socket and
the metrics of every process, ``prometheus_client``'s multiprocess mode) is private to
the service and removed at exit.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Final

from service.ipc.channel import CoreAddress
from service.ipc.shared_state import CoreStatus, SharedState
from service.settings import Settings

log = logging.getLogger("service.supervisor")

#: The environment variable prometheus_client reads in every process it is imported in.
METRICS_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: How often the supervisor checks the core's heartbeat while nothing happens.
TICK_S: Final = 0.25
#: A core loop silent this long (not a long batch: that is the stall limit's) is wedged.
HEARTBEAT_STALE_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0


#: The engine core's entry point: ``run_engine_core`` (benchmarks pass one that serves an
#: instant model, to measure the API servers alone).
CoreTarget = Callable[[Settings, CoreAddress, SharedState, Connection], None]


#: The run directory: ``TMPDIR/fashion-florence-<random suffix>`` (:func:`tempfile.mkdtemp`),
#: holding the supervisor's pid.
RUN_DIR_PREFIX: Final = "fashion-florence-"
OWNER_FILE: Final = "supervisor.pid"


def remove_orphaned_run_dirs(temp: Path) -> list[Path]:
    """Remove the run directories of supervisors that no longer run: a supervisor that was
    SIGKILLed (or the OOM killer's) could not remove its own, and a pod that restarts its
    container in place keeps /tmp. A directory whose owner is alive, or unreadable, stays."""
    removed = []
    for run_dir in temp.glob(f"{RUN_DIR_PREFIX}*"):
        try:
            owner = int((run_dir / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if owner != os.getpid() and not Path(f"/proc/{owner}").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
            removed.append(run_dir)
    return removed


class StartupError(Exception):
    """The service cannot start; the message is the one line the user sees."""


def cpus_available(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a
    Kubernetes CPU limit), which the affinity does not show."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, int(int(quota) / int(period))))


def default_api_servers(cpus: int) -> int:
    """One API server per two CPUs, at least one, at most 8: the engine core keeps a core's
    worth of CPU for its own loop (docs/BENCHMARKS.md has the measurements behind it)."""
    return max(1, min(8, cpus // 2))


def api_server_count(settings: Settings, cpus: int) -> int:
    if settings.api_servers is None:
        return default_api_servers(cpus)
    if settings.api_servers > 2 * cpus:
        raise StartupError(
            f"FF_API_SERVERS={settings.api_servers} is more than twice the {cpus} CPUs this "
            "process may use; each API server needs CPU time"
        )
    return settings.api_servers


def bind_listener(settings: Settings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((settings.host, settings.port))
    except OSError as exc:
        listener.close()
        raise StartupError(
            f"cannot listen on {settings.host}:{settings.port} (FF_HOST, FF_PORT): {exc.strerror}"
        ) from None
    listener.listen(2048)
    listener.set_inheritable(True)
    return listener


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        servers: int,
        listener: socket.socket,
        core_target: CoreTarget | None = None,
    ) -> None:
        self.settings = settings
        self._core_target = core_target
        self._context = multiprocessing.get_context("spawn")
        remove_orphaned_run_dirs(Path(tempfile.gettempdir()))
        self._run_dir = Path(tempfile.mkdtemp(prefix=RUN_DIR_PREFIX))
        (self._run_dir / OWNER_FILE).write_text(str(os.getpid()))
        self._metrics_dir = self._run_dir / "metrics"
        self._metrics_dir.mkdir()
        os.environ[METRICS_DIR_ENV] = str(self._metrics_dir)  # inherited by every child
        self.address = CoreAddress(self._run_dir)
        capacity = settings.queue_size + settings.max_batch_size
        self.state = SharedState.create(self._context, capacity, servers)
        self._listener = listener
        self._servers: list[BaseProcess | None] = [None] * servers
        self._core: BaseProcess | None = None
        self._core_ready: Connection | None = None
        self._deaths: deque[float] = deque()
        self._generation = 0
        self._stopping = False
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)

    # Starting
    def start(self) -> None:
        """Start the core and the API servers; return once the core is ready, or raise
        StartupError with the core's one-line reason."""
        self._start_core()
        for index in range(len(self._servers)):
            self._start_server(index)
        assert self._core is not None
        assert self._core_ready is not None
        reason = self._await_core(self._core, self._core_ready)
        if reason is not None:
            raise StartupError(reason)

    def _start_core(self) -> None:
        from service.engine_core.main import run_engine_core

        self._generation += 1
        ours, theirs = self._context.Pipe(duplex=False)
        core = self._context.Process(
            target=self._core_target or run_engine_core,
            args=(self.settings, self.address, self.state, theirs),
            name=f"ff-engine-core-{self._generation}",
        )
        # The generation is set before the process exists: what it publishes is its own.
        self.state.core_starting(self._generation, 0, len(self._deaths))
        core.start()
        theirs.close()
        self.state.core_starting(self._generation, core.pid or 0, len(self._deaths))
        self._core, self._core_ready = core, ours
        log.info("engine core %d starting (pid %s)", self._generation, core.pid)

    def _start_server(self, index: int) -> None:
        from service.http.server import run_api_server
        from service.serving.core_client import CoreLink

        self.state.forget_server(index)
        server = self._context.Process(
            target=run_api_server,
            args=(self.settings, index, self._listener, CoreLink(self.address, self.state)),
            name=f"ff-api-server-{index}",
        )
        server.start()
        self._servers[index] = server

    def _await_core(self, core: BaseProcess, ready: Connection) -> str | None:
        """Wait for the core's word: None once it is ready, else why it is not."""
        while not ready.poll(TICK_S):
            if not core.is_alive():
                return f"the engine core exited while loading (exit code {core.exitcode})"
            if self._stopping:
                return "stopped while the engine core was loading"
        try:
            kind, detail = ready.recv()
        except EOFError:
            core.join(STOP_TIMEOUT_S)
            return f"the engine core exited while loading (exit code {core.exitcode})"
        if kind != "ready":
            return f"the model did not load: {detail}"
        self.state.set_status(CoreStatus.READY)
        log.info("engine core %d ready: %s on %s", self._generation, detail.name, detail.device)
        return None

    # Watching
    def supervise(self) -> None:
        """Until a stop signal: replace what dies, kill a stalled core."""
        while not self._stopping:
            watched = [p.sentinel for p in self._live_processes()] + [self._wake_read]
            fired = wait(watched, timeout=TICK_S)
            if self._wake_read in fired:
                os.read(self._wake_read, 64)
            if self._stopping:
                return
            self._check_servers()
            self._check_core()

    def _live_processes(self) -> list[BaseProcess]:
        processes = [p for p in self._servers if p is not None]
        return processes + ([self._core] if self._core is not None else [])

    def _check_servers(self) -> None:
        for index, server in enumerate(self._servers):
            if server is not None and not server.is_alive():
                log.error("API server %d died (exit code %s): replaced", index, server.exitcode)
                self._forget(server)
                self._start_server(index)

    def _check_core(self) -> None:
        core = self._core
        if core is None:
            return
        if core.is_alive():
            stalled = self._stall_reason()
            if stalled is None:
                return
            log.error("engine core %d stalled (%s): killed", self._generation, stalled)
            core.kill()
            core.join(STOP_TIMEOUT_S)
        log.error("engine core %d died (exit code %s)", self._generation, core.exitcode)
        self._forget(core)
        self._core = None
        self._restart_core()

    def _stall_reason(self) -> str | None:
        if self.state.status != CoreStatus.READY:
            return None
        now = time.monotonic()
        busy_since = self.state.core_busy_since
        if busy_since is not None and now - busy_since > self.settings.engine_stall_timeout_s:
            return f"a batch has run for {now - busy_since:.0f}s"
        if now - self.state.core_heartbeat > HEARTBEAT_STALE_S:
            return f"its loop has been silent for {now - self.state.core_heartbeat:.0f}s"
        return None

    def _restart_core(self) -> None:
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > self.settings.engine_restart_window_s:
            self._deaths.popleft()
        if len(self._deaths) > self.settings.engine_restarts_max:
            log.error(
                "engine core died %d times in %.0fs: not restarted; liveness fails",
                len(self._deaths), self.settings.engine_restart_window_s,
            )  # fmt: skip
            self.state.core_starting(self._generation + 1, 0, len(self._deaths))
            self.state.set_status(CoreStatus.FAILED)
            return
        started = time.monotonic()
        self._start_core()
        assert self._core is not None
        assert self._core_ready is not None
        reason = self._await_core(self._core, self._core_ready)
        if reason is None:
            log.info("engine core restarted in %.1fs", time.monotonic() - started)
        elif not self._stopping:
            log.error("engine core restart failed: %s", reason)

    def _forget(self, process: BaseProcess) -> None:
        """A dead child's live gauges leave the metrics (its counters stay counted)."""
        if process.pid is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(process.pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]

    # Stopping
    def request_stop(self, signum: int, _frame: object = None) -> None:
        if self._stopping:
            return
        log.info("signal %d: draining the API servers, then the engine core", signum)
        self._stopping = True
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_write, b"x")

    def stop(self) -> None:
        """Drain the API servers, then stop the core; remove the run directory."""
        # An API server drains for up to FF_DRAIN_TIMEOUT_S, then uvicorn closes what is left
        # (again at most FF_DRAIN_TIMEOUT_S): the same budget the deployment's grace period has.
        deadline = time.monotonic() + 2 * self.settings.drain_timeout_s + STOP_TIMEOUT_S
        servers = [p for p in self._servers if p is not None]
        for server in servers:
            if server.is_alive() and server.pid is not None:
                os.kill(server.pid, signal.SIGTERM)
        for server in servers:
            _join_or_kill(server, deadline)
        if self._core is not None:
            self.state.set_status(CoreStatus.STOPPING)
            if self._core.is_alive() and self._core.pid is not None:
                os.kill(self._core.pid, signal.SIGTERM)
            _join_or_kill(self._core, time.monotonic() + STOP_TIMEOUT_S)
        self._listener.close()
        shutil.rmtree(self._run_dir, ignore_errors=True)
        os.close(self._wake_read)
        os.close(self._wake_write)


def _join_or_kill(process: BaseProcess, deadline: float) -> None:
    process.join(max(0.0, deadline - time.monotonic()))
    if process.is_alive():
        log.warning("%s did not stop in time: killed", process.name)
        process.kill()
        process.join(STOP_TIMEOUT_S)


def serve(settings: Settings) -> int:
    """Run the service until SIGTERM; the exit status."""
    try:
        servers = api_server_count(settings, cpus_available())
        listener = bind_listener(settings)
    except StartupError as exc:
        print(f"fashion-florence serve: {exc}", file=sys.stderr)
        return 2
    supervisor = Supervisor(settings, servers, listener)
    signal.signal(signal.SIGTERM, supervisor.request_stop)
    signal.signal(signal.SIGINT, supervisor.request_stop)
    log.info("serving on %s:%d with %d API servers", settings.host, settings.port, servers)
    if settings.ui_enabled:
        shown = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
        log.info("the playground page: http://%s:%d/", shown, settings.port)
    try:
        supervisor.start()
        supervisor.supervise()
    except StartupError as exc:
        print(f"fashion-florence serve: {exc}", file=sys.stderr)
        supervisor.stop()
        return 1
    supervisor.stop()
    return 0
