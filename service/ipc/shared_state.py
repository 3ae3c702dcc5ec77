"""The state the supervisor shares with the engine core and every API server: a few
numbers in shared memory, read without a message and without a syscall.

* the engine core's status and generation (the supervisor writes them; API servers read
  them for ``/readyz``, ``/healthz`` and to answer what a dead core left unanswered);
* the images each API server has admitted, per scheduling class (the service's one
  capacity and each class's limit, checked and taken under one lock, so a request is
  refused in microseconds whichever server takes it; the supervisor zeroes a dead
  server's slots);
* what the engine core publishes about itself: its backlog's drain estimate (for
  ``Retry-After``) and its scheduler's heartbeat (for the supervisor's stall check).
"""

from __future__ import annotations

import os
import time
from enum import IntEnum
from multiprocessing.context import SpawnContext
from typing import Any, Final

from fashion_florence_client.protocol import Priority

_STATUS, _GENERATION, _DEATHS, _CORE_PID = range(4)
_SLOTS_START: Final = 4
#: Admitted images are counted per server and class: class-major, a row of servers each.
_CLASSES: Final = tuple(Priority)
_RETRY_AFTER, _HEARTBEAT, _BUSY_SINCE, _RESTART_BEGAN = range(4)


class CoreStatus(IntEnum):
    STARTING = 0  # the first engine core is loading
    READY = 1
    RESTARTING = 2  # a core died; its successor is loading
    FAILED = 3  # it died too often, or could not load: the pod must restart
    STOPPING = 4


class SharedState:
    """Made once by the supervisor (:meth:`create`) and handed to each child process as a
    ``spawn`` argument (the arrays and the lock pickle as shared memory)."""

    def __init__(self, ints: Any, floats: Any, lock: Any, capacity: int, servers: int) -> None:
        self._ints = ints
        self._floats = floats
        self._lock = lock
        self.capacity = capacity
        self.servers = servers
        self.supervisor_pid = os.getpid()  # made by the supervisor; pickled with its pid

    @classmethod
    def create(cls, context: SpawnContext, capacity: int, servers: int) -> SharedState:
        ints = context.RawArray("q", _SLOTS_START + len(_CLASSES) * servers)
        floats = context.RawArray("d", 4)
        return cls(ints, floats, context.Lock(), capacity, servers)

    # The engine core's life (written by the supervisor)
    @property
    def status(self) -> CoreStatus:
        return CoreStatus(self._ints[_STATUS])

    @property
    def generation(self) -> int:
        """Which engine core this is: 1 for the first, one more for each restart."""
        return int(self._ints[_GENERATION])

    @property
    def deaths(self) -> int:
        return int(self._ints[_DEATHS])

    @property
    def core_pid(self) -> int:
        return int(self._ints[_CORE_PID])

    def core_starting(self, generation: int, pid: int, deaths: int) -> None:
        with self._lock:
            self._ints[_GENERATION] = generation
            self._ints[_CORE_PID] = pid
            self._ints[_DEATHS] = deaths
            restarting = generation > 1
            self._ints[_STATUS] = CoreStatus.RESTARTING if restarting else CoreStatus.STARTING
            self._floats[_RESTART_BEGAN] = time.monotonic()
            self._floats[_BUSY_SINCE] = 0.0
            self._floats[_HEARTBEAT] = time.monotonic()

    def set_status(self, status: CoreStatus) -> None:
        self._ints[_STATUS] = status

    def restart_began(self) -> float:
        return float(self._floats[_RESTART_BEGAN])

    # What the engine core publishes
    def publish_core(self, retry_after_s: float, heartbeat: float, busy_since: float) -> None:
        self._floats[_RETRY_AFTER] = retry_after_s
        self._floats[_HEARTBEAT] = heartbeat
        self._floats[_BUSY_SINCE] = busy_since

    @property
    def retry_after_s(self) -> float:
        return float(self._floats[_RETRY_AFTER]) or 1.0

    @property
    def core_heartbeat(self) -> float:
        return float(self._floats[_HEARTBEAT])

    @property
    def core_busy_since(self) -> float | None:
        busy = float(self._floats[_BUSY_SINCE])
        return busy or None

    # Admission: the service's one capacity, and each class's share of it
    def _slot(self, server: int, priority: Priority) -> int:
        return _SLOTS_START + _CLASSES.index(priority) * self.servers + server

    def admitted(self, priority: Priority | None = None) -> int:
        """Images admitted by every server: of one class, or of all."""
        classes = _CLASSES if priority is None else (priority,)
        return sum(self._ints[self._slot(i, p)] for p in classes for i in range(self.servers))

    def try_acquire(
        self,
        server: int,
        images: int,
        priority: Priority = Priority.INTERACTIVE,
        limit: int | None = None,
    ) -> bool:
        with self._lock:
            if not self.fits(images, priority, limit):
                return False
            self._ints[self._slot(server, priority)] += images
            return True

    def release(self, server: int, images: int, priority: Priority = Priority.INTERACTIVE) -> None:
        with self._lock:
            slot = self._slot(server, priority)
            self._ints[slot] = max(0, self._ints[slot] - images)

    def fits(
        self, images: int, priority: Priority = Priority.INTERACTIVE, limit: int | None = None
    ) -> bool:
        cap = self.capacity if limit is None else limit  # None: the class may use it all
        return self.admitted() + images <= self.capacity and self.admitted(priority) + images <= cap

    def forget_server(self, server: int) -> None:
        """A dead API server's admitted images go back to the pool."""
        with self._lock:
            for priority in _CLASSES:
                self._ints[self._slot(server, priority)] = 0


class SharedPool:
    """One API server's view of the shared capacity
    (a :class:`service.serving.admission.CapacityPool`)."""

    def __init__(self, state: SharedState, server: int) -> None:
        self._state = state
        self._server = server

    @property
    def capacity(self) -> int:
        return self._state.capacity

    def try_acquire(
        self, images: int, priority: Priority = Priority.INTERACTIVE, limit: int | None = None
    ) -> bool:
        return self._state.try_acquire(self._server, images, priority, limit)

    def release(self, images: int, priority: Priority = Priority.INTERACTIVE) -> None:
        self._state.release(self._server, images, priority)

    def fits(
        self, images: int, priority: Priority = Priority.INTERACTIVE, limit: int | None = None
    ) -> bool:
        return self._state.fits(images, priority, limit)
