"""The engine in a process of its own (``FF_ENGINE_PROCESS=true``), behind the same
:class:`service.backend.InferenceBackend` as the in-process engine.

Why: in one process the engine's decode loop (Python between the model's calls) shares
the GIL with the event loop, multipart parsing, image decoding and JSON. Here the serving
process keeps all of that and the engine process only runs batches, as vLLM splits its
engine core from its API server.

The hand-off copies no pixels through a pipe:

* the serving process resizes each image (the preprocessing pool, as before) to uint8
  H x W x 3, the engine's own resize (:attr:`FlorenceEngine.resize_spec`);
* a batch is written row by row into one shared-memory block (the copy the in-process
  engine makes anyway when it stacks a batch), and the pipe carries only its row count;
* the engine process reads those rows in place (:meth:`FlorenceEngine.run_pixels`
  normalizes them straight from the shared memory) and sends back the outcomes, small
  pickled dataclasses.

Failures keep their meaning across the boundary: an out-of-memory batch is still
``DeviceOutOfMemoryError`` (the serving layer splits it), a dead device or a dead engine
process is ``DeviceFatalError`` (liveness fails, the pod restarts). The serving process
never imports torch; the engine process is started with ``spawn`` (CUDA needs it) and ends
when it is told to, or when the serving process goes away (its pipe closes).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.shared_memory import SharedMemory
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from service.backend import (
    DeviceFatalError,
    DeviceOutOfMemoryError,
    ItemOutcome,
    ModelInfo,
    PreparedImage,
)
from service.settings import Settings

if TYPE_CHECKING:
    from service.inference.engine import FlorenceEngine

log = logging.getLogger(__name__)
#: How long a stop waits for the engine process before it is killed.
STOP_TIMEOUT_S: Final = 10.0


class EngineProcessError(RuntimeError):
    """The engine process failed to load its model, or refused a request."""


class EngineProcess:
    """Implements :class:`service.backend.InferenceBackend` by driving the engine in a
    child process; see the module's docstring."""

    def __init__(
        self,
        process: BaseProcess,
        connection: Connection,
        info: ModelInfo,
        resize_spec: tuple[int, int],
        capacity: int,
    ) -> None:
        self._process = process
        self._connection = connection
        self._info = info
        self._side, resample = resize_spec
        self._resample = Image.Resampling(resample)
        self._capacity = capacity
        self._memory = SharedMemory(create=True, size=capacity * self._side * self._side * 3)
        self._rows: npt.NDArray[np.uint8] = np.ndarray(
            (capacity, self._side, self._side, 3), dtype=np.uint8, buffer=self._memory.buf
        )
        self._lock = threading.Lock()  # one exchange on the pipe at a time
        self._closed = False
        connection.send(("memory", self._memory.name, capacity))

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def preprocess(self, image: Image.Image) -> PreparedImage:
        """The engine's resize, here on the preprocessing pool; the engine process normalizes."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return np.asarray(rgb.resize((self._side, self._side), self._resample), dtype=np.uint8)

    def run_batch(self, images: Sequence[PreparedImage]) -> list[ItemOutcome]:
        outcomes: list[ItemOutcome] = []
        for start in range(0, len(images), self._capacity):
            outcomes.extend(self._run_rows(images[start : start + self._capacity]))
        return outcomes

    def _run_rows(self, images: Sequence[PreparedImage]) -> list[ItemOutcome]:
        with self._lock:
            for row, pixels in enumerate(images):
                self._rows[row] = pixels
            kind, payload = self._exchange(("run", len(images)))
        if kind == "ok":
            outcomes: list[ItemOutcome] = payload
            return outcomes
        if kind == "oom":
            raise DeviceOutOfMemoryError(payload)
        if kind == "fatal":
            raise DeviceFatalError(payload)
        raise EngineProcessError(payload)

    def _exchange(self, message: tuple[Any, ...]) -> tuple[str, Any]:
        try:
            self._connection.send(message)
            reply: tuple[str, Any] = self._connection.recv()
        except (EOFError, OSError) as exc:
            raise DeviceFatalError(self._death_reason()) from exc
        return reply

    def _death_reason(self) -> str:
        self._process.join(timeout=1.0)
        return f"the engine process ended (exit code {self._process.exitcode})"

    def warmup(self) -> None:
        """The engine process warmed its model up before it said ready; this runs one small
        batch through the hand-off itself (shared memory, pipe, pickled outcomes)."""
        gray = self.preprocess(Image.new("RGB", (self._side, self._side), "gray"))
        self.run_batch([gray, gray])

    def check_device(self) -> None:
        """Cheap and never blocked behind a running batch: the process is alive. A dead
        device inside it is reported by the batch that meets it."""
        if not self._process.is_alive():
            raise DeviceFatalError(self._death_reason())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock, contextlib.suppress(OSError, ValueError):  # already gone: fine
            self._connection.send(("stop",))
        self._process.join(timeout=STOP_TIMEOUT_S)
        if self._process.is_alive():
            log.warning("the engine process did not stop in %.0f s: killed", STOP_TIMEOUT_S)
            self._process.kill()
            self._process.join(timeout=STOP_TIMEOUT_S)
        self._connection.close()
        del self._rows
        self._memory.close()
        self._memory.unlink()


def start_engine_process(settings: Settings) -> EngineProcess:
    """Spawn the engine process, wait for its model to load and warm up, and connect the
    shared memory (sized for ``FF_MAX_BATCH_SIZE`` images; a larger batch goes in parts)."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe(duplex=True)
    process = context.Process(
        target=serve_engine, args=(settings, theirs), name="ff-engine", daemon=True
    )
    process.start()
    theirs.close()
    try:
        while not ours.poll(0.5):
            if not process.is_alive():
                raise EngineProcessError(
                    f"the engine process exited while loading (exit code {process.exitcode})"
                )
        kind, *rest = ours.recv()
    except EOFError:
        process.join(timeout=STOP_TIMEOUT_S)
        ours.close()
        raise EngineProcessError(
            f"the engine process exited while loading (exit code {process.exitcode})"
        ) from None
    except BaseException:
        process.kill()
        ours.close()
        raise
    if kind != "ready":
        process.join(timeout=STOP_TIMEOUT_S)
        ours.close()
        raise EngineProcessError(f"the engine process failed to load: {rest[0]}")
    info, resize_spec = rest
    log.info("engine process %s ready: %s on %s", process.pid, info.name, info.device)
    return EngineProcess(process, ours, info, resize_spec, settings.max_batch_size)


def serve_engine(settings: Settings, connection: Connection) -> None:
    """The engine process: load, warm up, say ready, then run batches until told to stop
    or until the serving process is gone."""
    from service.inference.engine import load_engine  # torch is imported in this process only

    try:
        engine = load_engine(settings)
        engine.warmup()
        resize_spec = engine.resize_spec
        if resize_spec is None:
            raise EngineProcessError(
                "FF_ENGINE_PROCESS needs a plain image processor (resize, rescale, normalize)"
            )
    except Exception as exc:  # reported to the serving process, which fails its load
        connection.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    connection.send(("ready", engine.info, resize_spec))
    _, name, capacity = connection.recv()
    memory = SharedMemory(name=name)
    side = resize_spec[0]
    rows: npt.NDArray[np.uint8] = np.ndarray(
        (capacity, side, side, 3), dtype=np.uint8, buffer=memory.buf
    )
    try:
        _serve_batches(engine, connection, rows)
    finally:
        del rows
        memory.close()
        engine.close()


def _serve_batches(
    engine: FlorenceEngine, connection: Connection, rows: npt.NDArray[np.uint8]
) -> None:
    while True:
        try:
            message = connection.recv()
        except EOFError:  # the serving process is gone
            return
        if message[0] == "stop":
            return
        try:
            reply: tuple[str, Any] = ("ok", engine.run_pixels(rows[: message[1]]))
        except DeviceOutOfMemoryError as exc:
            reply = ("oom", str(exc))
        except DeviceFatalError as exc:
            connection.send(("fatal", str(exc)))
            return
        except Exception as exc:  # this batch failed; the engine may serve the next one
            reply = ("error", f"{type(exc).__name__}: {exc}")
        connection.send(reply)
