"""The engine core process: it owns the device, the model, the queue and the batching.

The supervisor (:mod:`service.supervisor`) spawns it; it loads the model, warms it up,
binds its ROUTER socket and tells the supervisor it is ready. From then on every API
server's requests (:mod:`service.ipc.messages`) arrive on that one socket; images go into
the scheduler (:class:`service.engine_core.local.InProcessEngine`: the micro-batcher, its
engine thread and the result cache), and each gets one reply. The asyncio loop here only
routes messages; the decode loop runs on the scheduler's engine thread.

It stops on SIGTERM (after finishing what it accepted) and dies with the supervisor.
A model that cannot load is reported to the supervisor in one line, and the process
exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import zmq
import zmq.asyncio
from PIL import Image

from service.backend import (
    DeadlineExceededError,
    EngineClosedError,
    InferenceBackend,
    ItemOutcome,
    ModelInfo,
    PreparedImage,
    StepRunner,
)
from service.engine_core.local import InProcessEngine
from service.gc_freeze import freeze_startup_objects
from service.ipc import messages as m
from service.ipc.channel import CoreAddress, configure, decode, encode
from service.ipc.shared_state import SharedState
from service.process import die_with_parent, one_line
from service.settings import Settings
from service.telemetry.logs import configure_logging
from service.telemetry.metrics import ServiceMetrics

log = logging.getLogger(__name__)
#: How often the core publishes its drain estimate and heartbeat to the shared state.
PUBLISH_INTERVAL_S: Final = 0.1
#: Exit status of a core whose model did not load (the supervisor stops the service).
LOAD_FAILED_EXIT: Final = 3


class PixelBackend:
    """The engine behind the core's scheduler: API servers send resized uint8 pixels
    (H x W x 3), stacked here into one batch the engine normalizes."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        spec = engine.resize_spec
        if spec is None:
            raise ValueError("the engine core needs a plain image processor (resize, normalize)")
        self.side, self.resample = spec

    @property
    def info(self) -> ModelInfo:
        info: ModelInfo = self._engine.info
        return info

    def preprocess(self, image: Image.Image) -> PreparedImage:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        resample = Image.Resampling(self.resample)
        return np.asarray(rgb.resize((self.side, self.side), resample), dtype=np.uint8)

    def run_batch(self, images: Sequence[PreparedImage]) -> list[ItemOutcome]:
        if not images:
            return []
        pixels: npt.NDArray[np.uint8] = np.stack(images)
        outcomes: list[ItemOutcome] = self._engine.run_pixels(pixels)
        return outcomes

    def step_runner(self) -> StepRunner | None:
        """The running set the iteration scheduler drives (jump-forward decoding only)."""
        from service.inference.iteration import IterationRunner, uint8_pixels

        if self._engine.jump_forward_decoder is None:
            return None
        return IterationRunner(self._engine, uint8_pixels(self._engine))

    def warmup(self) -> None:
        self._engine.warmup()

    def check_device(self) -> None:
        self._engine.check_device()

    def close(self) -> None:
        self._engine.close()


def load_backend(settings: Settings) -> PixelBackend:
    """Load and warm the real engine (torch is imported in this process only). A model
    that cannot be loaded is named by the setting that chose it."""
    from model_store.loading import ModelLoadError
    from service.inference.engine import load_engine

    try:
        engine = load_engine(settings)
    except ModelLoadError as exc:
        chosen = f"FF_MODEL_PATH={settings.model_path}" if settings.model_path else "the demo model"
        raise ModelLoadError(f"{chosen}: {exc}") from exc
    backend = PixelBackend(engine)
    backend.warmup()
    return backend


def run_engine_core(
    settings: Settings, address: CoreAddress, state: SharedState, ready: Connection
) -> None:
    """The process's entry point (a ``spawn`` target)."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the supervisor decides
    configure_logging(settings.log_format, settings.log_level)
    try:
        backend = load_backend(settings)
    except Exception as exc:  # reported in one line; the supervisor decides what follows
        ready.send(("failed", one_line(exc)))
        raise SystemExit(LOAD_FAILED_EXIT) from None
    asyncio.run(serve_core(backend, settings, address, state, ready))


async def serve_core(
    backend: InferenceBackend,
    settings: Settings,
    address: CoreAddress,
    state: SharedState,
    ready: Connection,
) -> None:
    """Serve until SIGTERM: bind, say ready, route messages, finish accepted work."""
    engine = InProcessEngine(backend, settings, ServiceMetrics())
    await engine.start()
    core = CoreLoop(engine, backend, state.generation)
    context = zmq.asyncio.Context()
    socket = context.socket(zmq.ROUTER)
    configure(socket)
    socket.bind(address.url)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    if settings.gc_freeze:
        freeze_startup_objects()
    ready.send(("ready", engine.info))
    tasks = [
        asyncio.create_task(core.route(socket), name="route"),
        asyncio.create_task(_publish(engine, state), name="publish"),
    ]
    await stop.wait()
    log.info("engine core stopping: finishing %d images", core.running)
    await engine.close()  # the queue drains first: everything accepted is answered
    await core.wait_replies()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    socket.close(linger=0)
    context.term()


class CoreLoop:
    """Routes each request to the scheduler and sends its one reply."""

    def __init__(self, engine: InProcessEngine, backend: PixelBackend | Any, generation: int):
        self._engine = engine
        self._side = getattr(backend, "side", engine.info.image_size)
        self._resample = getattr(backend, "resample", int(Image.Resampling.BICUBIC))
        self._generation = generation
        self._runs: dict[tuple[bytes, int], asyncio.Task[None]] = {}
        self._socket: zmq.asyncio.Socket | None = None
        self._replies: set[asyncio.Task[None]] = set()  # held so they are not collected

    @property
    def running(self) -> int:
        return len(self._runs)

    async def route(self, socket: zmq.asyncio.Socket) -> None:
        self._socket = socket
        while True:
            identity, *frames = await socket.recv_multipart(copy=False)
            try:
                await self._handle(identity.bytes, decode(frames))
            except Exception:  # one bad message must not stop the core for everyone
                log.exception("engine core: a message could not be handled")

    async def _handle(self, peer: bytes, message: m.Request) -> None:
        if isinstance(message, m.Submit):
            self._start(peer, message)
        elif isinstance(message, m.Cancel):
            run = self._runs.get((peer, message.request))
            if run is not None:
                run.cancel()  # the batcher skips it unless its batch already runs
        elif isinstance(message, m.Lookup):
            await self._reply(peer, m.Found(message.request, await self._lookup(message)))
        elif isinstance(message, m.Describe):
            info = self._engine.info
            await self._reply(peer, m.Described(message.request, info, self._side, self._resample))

    async def _lookup(self, message: m.Lookup) -> ItemOutcome | None:
        return await self._engine.lookup(message.key)

    def _start(self, peer: bytes, submit: m.Submit) -> None:
        if submit.generation != self._generation:
            stale = m.Failed(submit.request, m.FailureKind.STALE, "sent to an earlier core")
            self._replies.add(task := asyncio.create_task(self._reply(peer, stale)))
            task.add_done_callback(self._replies.discard)
            return
        task = asyncio.create_task(self._run(peer, submit))
        self._runs[(peer, submit.request)] = task
        task.add_done_callback(lambda _t: self._runs.pop((peer, submit.request), None))

    async def _run(self, peer: bytes, submit: m.Submit) -> None:
        reply: m.Reply
        try:
            timed = await self._engine.infer(
                submit.pixels, deadline=submit.deadline, key=submit.key, priority=submit.priority
            )
            reply = m.Done(submit.request, timed)
        except asyncio.CancelledError:
            return  # the API server gave up on it; it expects no reply
        except DeadlineExceededError as exc:
            reply = m.Failed(submit.request, m.FailureKind.DEADLINE, str(exc), exc.stage)
        except EngineClosedError as exc:
            reply = m.Failed(submit.request, m.FailureKind.CLOSED, str(exc))
        except Exception as exc:  # the batch failed; the core serves the next one
            reply = m.Failed(submit.request, m.FailureKind.ERROR, f"{type(exc).__name__}: {exc}")
        await self._reply(peer, reply)

    async def _reply(self, peer: bytes, reply: m.Reply) -> None:
        assert self._socket is not None
        with contextlib.suppress(zmq.ZMQError):  # the API server is gone: nobody to tell
            await self._socket.send_multipart([peer, *encode(reply)])

    async def wait_replies(self) -> None:
        runs = list(self._runs.values())
        if runs:
            await asyncio.wait(runs, timeout=5.0)


async def _publish(engine: InProcessEngine, state: SharedState) -> None:
    """The core's drain estimate and heartbeat, for Retry-After and the stall check."""
    while True:
        batcher = engine.batcher
        # The heartbeat proves this loop turns; a batch stuck on the engine thread shows
        # in busy_since instead (the batcher's own heartbeat stands still while it runs).
        state.publish_core(
            engine.retry_after_s(), time.monotonic(), batcher.busy_since_monotonic or 0.0
        )
        await asyncio.sleep(PUBLISH_INTERVAL_S)
