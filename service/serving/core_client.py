"""The engine core as an API server reaches it: :class:`service.backend.Engine` over IPC.

Each API server holds one ZeroMQ DEALER connected to the core's ROUTER. A request gets a
number, goes out as one message (:mod:`service.ipc.messages`), and its future waits in
``_pending`` until the reply with the same number comes back; one reader task routes the
replies. A cancelled ``infer`` (the client hung up, the deadline guard fired) sends
``Cancel`` so the core skips the image.

When the engine core dies, what it held is not lost: a watcher sees the supervisor bump
the core's generation (:class:`service.ipc.shared_state.SharedState`) and answers every
request sent to the dead core with ``EngineRestartingError`` (503 ``engine_restarting``
with ``Retry-After``); until the new core is ready, new work is refused the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import zmq
import zmq.asyncio
from PIL import Image

from fashion_florence_client.protocol import Priority
from service.backend import (
    DeadlineExceededError,
    EngineClosedError,
    EngineRestartingError,
    ItemOutcome,
    ModelInfo,
    PreparedImage,
    TimedOutcome,
)
from service.ipc import messages as m
from service.ipc.channel import CoreAddress, configure, decode, encode
from service.ipc.shared_state import CoreStatus, SharedState
from service.settings import Settings

log = logging.getLogger(__name__)

#: How often the watcher reads the shared state: the bound on how long a request sent to a
#: dead engine core waits before it is answered ``engine_restarting``.
WATCH_INTERVAL_S: Final = 0.02
#: What a restart costs with the demo model (a new process, torch, load and warm-up); the
#: Retry-After of a request refused meanwhile counts down from it.
EXPECTED_RESTART_S: Final = 6.0


@dataclass(frozen=True, slots=True)
class CoreLink:
    """What an API server needs to reach the engine core: its address, the shared state."""

    address: CoreAddress
    state: SharedState


class CoreClient:
    """Implements :class:`service.backend.Engine` over the engine core; see the module."""

    def __init__(self, link: CoreLink) -> None:
        self._state = link.state
        self._context = zmq.asyncio.Context()
        self._socket = self._context.socket(zmq.DEALER)
        configure(self._socket)
        self._socket.connect(link.address.url)
        self._numbers = itertools.count(1)
        self._pending: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._generation = link.state.generation
        self._described: m.Described | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    @classmethod
    async def connect(cls, link: CoreLink, settings: Settings) -> CoreClient:
        """Wait for the engine core to be ready (the supervisor says so), then ask it what
        it serves. The supervisor ends the service if the first core cannot load."""
        del settings  # the core owns every model setting
        while link.state.status != CoreStatus.READY:
            if link.state.status == CoreStatus.FAILED:
                raise EngineClosedError("the engine core failed to start")
            await asyncio.sleep(WATCH_INTERVAL_S)
        client = cls(link)
        client._tasks = [
            asyncio.create_task(client._read_replies(), name="core-replies"),
            asyncio.create_task(client._watch_core(), name="core-watch"),
        ]
        client._described = await client._describe()
        return client

    async def _describe(self) -> m.Described:
        while True:
            try:
                reply = await asyncio.wait_for(self._call(m.Describe(self._next())), 5.0)
            except (TimeoutError, EngineRestartingError):
                await asyncio.sleep(WATCH_INTERVAL_S)  # the core is not there yet
                continue
            assert isinstance(reply, m.Described)
            return reply

    @property
    def info(self) -> ModelInfo:
        assert self._described is not None
        return self._described.info

    def prepare(self, image: Image.Image) -> PreparedImage:
        """The engine's own resize, here on this server's pool; the core normalizes."""
        assert self._described is not None
        side, resample = self._described.side, Image.Resampling(self._described.resample)
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return np.asarray(rgb.resize((side, side), resample), dtype=np.uint8)

    async def lookup(self, key: str) -> ItemOutcome | None:
        reply = await self._call(m.Lookup(self._next(), key))
        assert isinstance(reply, m.Found)
        return reply.outcome

    async def infer(
        self,
        prepared: PreparedImage,
        *,
        deadline: float,
        key: str | None,
        priority: Priority = Priority.INTERACTIVE,
    ) -> TimedOutcome:
        number = self._next()
        submit = m.Submit(number, self._generation, deadline, key, prepared, priority)
        try:
            reply = await self._call(submit)
        except asyncio.CancelledError:
            self._send_quietly(m.Cancel(number))
            raise
        if isinstance(reply, m.Done):
            return reply.timed
        assert isinstance(reply, m.Failed)
        raise _failure(reply, self.retry_after_s())

    def retry_after_s(self) -> float:
        if self.restarting():
            waited = time.monotonic() - self._state.restart_began()
            return max(1.0, EXPECTED_RESTART_S - waited)
        return self._state.retry_after_s

    def restarting(self) -> bool:
        return self._state.status in (CoreStatus.RESTARTING, CoreStatus.STARTING)

    async def liveness(self) -> str | None:
        if self._state.status == CoreStatus.FAILED:
            return f"the engine core died {self._state.deaths} times; not restarted again"
        return None

    async def close(self) -> None:
        """Stop reading and close the socket. Admitted work was waited for by the drain."""
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_pending(EngineClosedError("the API server is stopping"))
        self._socket.close(linger=0)
        self._context.term()

    def _next(self) -> int:
        return next(self._numbers)

    async def _call(self, message: m.Request) -> m.Reply:
        if self._closed:
            raise EngineClosedError("the API server is stopping")
        if self._state.status != CoreStatus.READY:
            raise EngineRestartingError("the engine core is restarting", self.retry_after_s())
        future: asyncio.Future[m.Reply] = asyncio.get_running_loop().create_future()
        self._pending[message.request] = (self._generation, future)
        try:
            await self._socket.send_multipart(encode(message), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._pending.pop(message.request, None)
            raise EngineRestartingError(
                "the engine core is not connected", self.retry_after_s()
            ) from None
        try:
            return await future
        finally:
            self._pending.pop(message.request, None)

    def _send_quietly(self, message: m.Request) -> None:
        with contextlib.suppress(zmq.ZMQError):
            self._socket.send_multipart(encode(message), flags=zmq.NOBLOCK)

    async def _read_replies(self) -> None:
        while True:
            try:
                frames = await self._socket.recv_multipart(copy=False)
                reply: m.Reply = decode(frames)
            except zmq.ZMQError:
                if self._closed:
                    return
                log.exception("reading the engine core's replies failed; reading on")
                await asyncio.sleep(WATCH_INTERVAL_S)
                continue
            except Exception:  # a reply that does not decode answers nobody; keep reading
                log.exception("an engine core reply could not be decoded")
                continue
            entry = self._pending.get(reply.request)
            if entry is not None and not entry[1].done():
                entry[1].set_result(reply)

    async def _watch_core(self) -> None:
        """Answer what a dead engine core left unanswered, as soon as its successor is
        announced (the supervisor bumps the generation when it sees the death)."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            generation = self._state.generation
            if generation == self._generation:
                continue
            log.warning(
                "engine core %d gone (now %d): %d requests answered engine_restarting",
                self._generation, generation, len(self._pending),
            )  # fmt: skip
            self._generation = generation
            self._fail_pending(
                EngineRestartingError("the engine core died", self.retry_after_s()),
                older_than=generation,
            )

    def _fail_pending(self, error: Exception, older_than: int | None = None) -> None:
        for generation, future in list(self._pending.values()):
            if older_than is not None and generation >= older_than:
                continue
            if not future.done():
                future.set_exception(error)


def _failure(reply: m.Failed, retry_after_s: float) -> Exception:
    if reply.kind == m.FailureKind.DEADLINE:
        return DeadlineExceededError(reply.stage)
    if reply.kind == m.FailureKind.CLOSED:
        return EngineClosedError(reply.detail)
    if reply.kind == m.FailureKind.STALE:
        return EngineRestartingError(reply.detail, retry_after_s)
    return RuntimeError(reply.detail)
