"""Admission control: how many images the service holds at once, decided in microseconds.

A request is admitted *before* its body is parsed or its image decoded, so refusing it
under overload costs a counter check, not a thread or a megabyte of parsing. The count
covers everything between admission and answer (decode, queue, engine), which is also
what a drain waits for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fashion_florence_client.problems import ErrorCode

from service.errors import ServiceError


class Admission:
    def __init__(
        self,
        capacity: int,
        retry_after_s: Callable[[], float],
        on_change: Callable[[int], None] | None = None,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        self._capacity = capacity
        self._retry_after_s = retry_after_s
        self._on_change = on_change or (lambda _count: None)
        self._on_reject = on_reject or (lambda _reason: None)
        self._held = 0
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def held(self) -> int:
        return self._held

    @property
    def draining(self) -> bool:
        return self._draining

    def check_open(self) -> None:
        """Refuse at once if nothing could be admitted now (no reservation is made)."""
        if self._draining:
            self._reject(ErrorCode.DRAINING, "the service is shutting down; retry elsewhere")
        if self._held >= self._capacity:
            self._reject_full()

    def acquire(self) -> None:
        """Admit one image or raise ServiceError (draining, queue_full). Never waits."""
        self.check_open()
        self._held += 1
        self._idle.clear()
        self._on_change(self._held)

    def release(self) -> None:
        self._held -= 1
        if self._held <= 0:
            self._held = 0
            self._idle.set()
        self._on_change(self._held)

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

    def _reject_full(self) -> None:
        retry_after = max(1, round(self._retry_after_s()))
        self._on_reject(ErrorCode.QUEUE_FULL.value)
        raise ServiceError(
            ErrorCode.QUEUE_FULL,
            f"{self._capacity} images already admitted; retry after {retry_after}s",
            headers={"Retry-After": str(retry_after)},
        )

    def _reject(self, code: ErrorCode, detail: str) -> None:
        self._on_reject(code.value)
        raise ServiceError(code, detail, headers={"Retry-After": "1"})
