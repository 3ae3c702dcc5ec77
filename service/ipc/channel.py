"""How the messages travel: ZeroMQ multipart messages over a Unix socket in the service's
private run directory, pickled with protocol 5 so that array buffers (the pixels) go as
their own frames, out of band, without a copy into the pickle.

Pickle is safe here because both ends are this service's own processes: the socket lives
in a directory only the service's user can open (mode 0700, made by the supervisor).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import zmq

#: The engine core's socket inside the run directory.
CORE_SOCKET_NAME: Final = "engine-core.sock"


@dataclass(frozen=True, slots=True)
class CoreAddress:
    """Where the engine core listens: ``ipc://RUN_DIR/engine-core.sock``."""

    run_dir: Path

    @property
    def url(self) -> str:
        return f"ipc://{self.run_dir / CORE_SOCKET_NAME}"


def encode(message: object) -> list[Any]:
    """The frames of one message: the pickle, then each out-of-band buffer."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    return [head, *(buffer.raw() for buffer in buffers)]


def decode(frames: Sequence[Any]) -> Any:
    """The message from its frames (``zmq.Frame`` or bytes); arrays are views of the
    frames' memory, read-only."""
    head, *buffers = (_memory(frame) for frame in frames)
    return pickle.loads(head, buffers=buffers)


def _memory(frame: Any) -> Any:
    return frame.buffer if isinstance(frame, zmq.Frame) else frame


def configure(socket: zmq.Socket[Any]) -> None:
    """Options both ends share: drop unsent messages at close (a dead peer's work is
    answered by the watcher, not by a late delivery) and queue nothing for a peer that is
    not connected (so a send while the core is gone fails at once)."""
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.IMMEDIATE, 1)
