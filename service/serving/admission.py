"""Admission control: how many images the service holds at once, decided in microseconds.

A request is admitted *before* its body is parsed or its image decoded, so refusing it
under overload costs a counter check, not a thread or a megabyte of parsing. Admission is
a :class:`Permit`: the route takes one first and hands it to the serving call, which
cannot run without it; the images it holds are given back when the request is answered.
The count covers everything between admission and answer (decode, queue, engine), which
is also what a drain waits for. Only the lifecycle starts a drain.

The capacity is the whole service's, not one API server's: the count lives in a
:class:`CapacityPool`, shared by every API server process (``service.ipc.shared_state``)
or local to one process (:class:`LocalPool`, tests and ``extract --local``). Each image
counts in its scheduling class too (:class:`Priority`): batch work may hold only
``FF_BATCH_ADMISSION_SHARE`` of the capacity (:func:`class_limits`), so a backfill that
keeps the service busy still leaves room for interactive requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Protocol

from fashion_florence_client.problems import ErrorCode
from fashion_florence_client.protocol import Priority
from service.errors import ServiceError


class CapacityPool(Protocol):
    """Where the images admitted by every API server are counted, per scheduling class,
    against one capacity."""

    @property
    def capacity(self) -> int: ...

    def try_acquire(
        self, images: int, priority: Priority = Priority.INTERACTIVE, limit: int | None = None
    ) -> bool:
        """Hold ``images`` more of class ``priority`` if they fit both the capacity and
        ``limit``, the most that class may hold (None: the capacity) (all or nothing, atomic across processes)."""
        ...

    def release(self, images: int, priority: Priority = Priority.INTERACTIVE) -> None: ...

    def fits(
        self, images: int, priority: Priority = Priority.INTERACTIVE, limit: int | None = None
    ) -> bool:
        """Whether ``images`` more would fit now (holds nothing)."""
        ...


class LocalPool:
    """A :class:`CapacityPool` for a service in one process."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._held = dict.fromkeys(Priority, 0)

    @property
    def capacity(self) -> int:
        return self._capacity

    def try_acquire(
        self, images: int, priority: Priority = Priority.INTERACTIVE, limit: int | None = None
    ) -> bool:
        if not self.fits(images, priority, limit):
            return False
        self._held[priority] += images
        return True

    def release(self, images: int, priority: Priority = Priority.INTERACTIVE) -> None:
        self._held[priority] = max(0, self._held[priority] - images)

    def fits(
        self, images: int, priority: Priority = Priority.INTERACTIVE, limit: int | None = None
    ) -> bool:
        total = sum(self._held.values())
        cap = self._capacity if limit is None else limit  # None: the class may use it all
        return total + images <= self._capacity and self._held[priority] + images <= cap


def class_limits(capacity: int, batch_share: float) -> dict[Priority, int]:
    """The most images each class may hold: interactive work may use all the capacity,
    batch work ``batch_share`` of it (at least one image), so a backfill always leaves
    room for interactive requests."""
    return {
        Priority.INTERACTIVE: capacity,
        Priority.BATCH: max(1, min(capacity, int(capacity * batch_share))),
    }


class Permit:
    """The images one request holds, from :meth:`Admission.permit`."""

    def __init__(self, admission: Admission, images: int, priority: Priority) -> None:
        self._admission = admission
        self._images = images
        self.priority = priority

    @property
    def images(self) -> int:
        return self._images

    def take(self) -> None:
        """Hold one more image (a batch item whose turn has come), or raise ServiceError
        (``queue_full``, ``draining``). Never waits."""
        self._admission._acquire(1, self.priority)
        self._images += 1

    def give_back(self) -> None:
        """Release one image before the request ends (a batch item that is done)."""
        if self._images > 0:
            self._images -= 1
            self._admission._release(1, self.priority)

    def _give_back_all(self) -> None:
        held, self._images = self._images, 0
        if held:
            self._admission._release(held, self.priority)


class Admission:
    def __init__(
        self,
        pool: CapacityPool,
        retry_after_s: Callable[[], float],
        on_change: Callable[[int], None] | None = None,
        on_reject: Callable[[str], None] | None = None,
        limits: Mapping[Priority, int] | None = None,
    ) -> None:
        self._pool = pool
        self._limits = dict(limits or dict.fromkeys(Priority, pool.capacity))
        self._retry_after_s = retry_after_s
        self._on_change = on_change or (lambda _count: None)
        self._on_reject = on_reject or (lambda _reason: None)
        self._held = 0
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def held(self) -> int:
        """Images this process has admitted and not yet answered."""
        return self._held

    @asynccontextmanager
    async def permit(
        self, images: int = 1, priority: Priority = Priority.INTERACTIVE
    ) -> AsyncIterator[Permit]:
        """``async with admission.permit(n) as permit``: admit a request holding ``images``
        images, or raise ServiceError (``draining``, ``queue_full``) on entering. With
        ``images=0`` (a batch, whose size its body will tell) nothing is held yet, but the
        request is refused if nothing could be admitted. Everything the permit still holds
        is given back when the block ends, however it ends. The images count against
        ``priority``'s own limit as well as the capacity."""
        if images < 0:
            raise ValueError("images must be >= 0")
        if images:
            self._acquire(images, priority)
        else:
            self._check_open(0, priority)
        permit = Permit(self, images, priority)
        try:
            yield permit
        finally:
            permit._give_back_all()

    def start_draining(self) -> None:
        self._draining = True

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until everything admitted has been answered; False if time ran out."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def _check_open(self, images: int, priority: Priority) -> None:
        if self._draining:
            self._reject(ErrorCode.DRAINING, "the service is shutting down; retry elsewhere")
        if images == 0 and not self._pool.fits(1, priority, self._limits[priority]):
            self._reject_full(priority)

    def _acquire(self, images: int, priority: Priority) -> None:
        self._check_open(images, priority)
        if not self._pool.try_acquire(images, priority, self._limits[priority]):
            self._reject_full(priority)
        self._held += images
        self._idle.clear()
        self._on_change(self._held)

    def _release(self, images: int, priority: Priority) -> None:
        self._pool.release(images, priority)
        self._held -= images
        if self._held <= 0:
            self._held = 0
            self._idle.set()
        self._on_change(self._held)

    def _reject_full(self, priority: Priority) -> None:
        retry_after = max(1, round(self._retry_after_s()))
        self._on_reject(ErrorCode.QUEUE_FULL.value)
        limit = min(self._pool.capacity, self._limits[priority])
        raise ServiceError(
            ErrorCode.QUEUE_FULL,
            f"{limit} {priority.value} images (of {self._pool.capacity} in all) already "
            f"admitted; retry after {retry_after}s",
            headers={"Retry-After": str(retry_after)},
        )

    def _reject(self, code: ErrorCode, detail: str) -> None:
        self._on_reject(code.value)
        raise ServiceError(code, detail, headers={"Retry-After": "1"})
