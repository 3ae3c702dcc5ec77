"""The messages between an API server and the engine core, in one place.

An API server (a ZeroMQ DEALER, one per server) sends requests; the engine core (the
ROUTER) answers each with exactly one reply carrying the same ``request`` number, except
:class:`Cancel`, which has none. Everything here is a small frozen dataclass; the one large
field, :attr:`Submit.pixels`, travels as its own zero-copy frame (:mod:`service.ipc.channel`).

    API server                                  engine core
    Describe(request)                     ->    Described(request, info, side, resample)
    Lookup(request, key)                  ->    Found(request, outcome | None)
    Submit(request, generation, deadline,
           key, pixels H x W x 3 uint8,
           priority)                      ->    Done(request, timed) | Failed(request, ...)
    Cancel(request)                       ->    (no reply; the image is skipped if not run)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from fashion_florence_client.protocol import Priority
from service.backend import ItemOutcome, ModelInfo, TimedOutcome


@dataclass(frozen=True, slots=True)
class Describe:
    """Ask for the loaded model and the resize the API server must apply."""

    request: int


@dataclass(frozen=True, slots=True)
class Lookup:
    """Ask the core's result cache for the outcome of an image's content digest."""

    request: int
    key: str


@dataclass(frozen=True, slots=True)
class Submit:
    """One image to run. ``deadline`` is ``time.monotonic()`` (one clock for every process
    on the host); ``generation`` is the engine core's the server saw when it sent it, so
    a new core never runs what was meant for a dead one; ``priority`` is the request's
    scheduling class."""

    request: int
    generation: int
    deadline: float
    key: str | None
    pixels: npt.NDArray[np.uint8]
    priority: Priority = Priority.INTERACTIVE


@dataclass(frozen=True, slots=True)
class Cancel:
    """The client went away: skip the image unless its batch already runs."""

    request: int


Request = Describe | Lookup | Submit | Cancel


@dataclass(frozen=True, slots=True)
class Described:
    request: int
    info: ModelInfo
    side: int  # the API server resizes to side x side ...
    resample: int  # ... with this PIL resampling filter


@dataclass(frozen=True, slots=True)
class Found:
    request: int
    outcome: ItemOutcome | None


@dataclass(frozen=True, slots=True)
class Done:
    request: int
    timed: TimedOutcome


class FailureKind(StrEnum):
    DEADLINE = "deadline"  # dropped unrun; ``stage`` says where
    CLOSED = "closed"  # the core is stopping and took no more work
    STALE = "stale"  # meant for an earlier engine core (a restart happened meanwhile)
    ERROR = "error"  # the batch failed; ``detail`` names the exception


@dataclass(frozen=True, slots=True)
class Failed:
    request: int
    kind: FailureKind
    detail: str
    stage: str = ""


Reply = Described | Found | Done | Failed
