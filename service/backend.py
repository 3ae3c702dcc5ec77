"""The typed boundaries between the service and a model.

Two of them, one per side of the process boundary:

* :class:`InferenceBackend`, batch-level and synchronous: what the engine core's scheduler
  runs (the real one is :class:`service.inference.engine.FlorenceEngine`; tests swap in
  fakes so the HTTP and batching suites stay fast).
* :class:`Engine`, image-level and async: what the API server's serving layer reaches the
  model through. In production it is the engine core over IPC
  (:class:`service.serving.core_client.CoreClient`); tests and ``extract --local`` use the
  same scheduler in process (:class:`service.engine_core.local.InProcessEngine`).

Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from PIL import Image

from fashion_florence_client.protocol import Priority
from fashion_florence_client.schema import AttributeConfidence, FashionAttributes

#: One image as the backend's ``preprocess`` left it, opaque to the service: it is only
#: handed back to the same backend's ``run_batch``. (The Florence engine uses a float32
#: 3 x H x W array on CPU and a uint8 tensor already on the GPU under CUDA.)
PreparedImage = Any


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    revision: str
    device: str
    dtype: str
    image_size: int
    manifest: Mapping[str, Any] = field(default_factory=dict)


class ItemFailure(StrEnum):
    """Why one image got no attributes. What happened, not an API code: the serving layer
    (``service.serving.extraction``) maps each to its public problem code."""

    INVALID_OUTPUT = "invalid_output"  # the model answered, but not schema-valid JSON
    OUT_OF_MEMORY = "out_of_memory"  # the image did not fit in device memory even alone


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """The engine's answer for one image: attributes, or a failure of this item only."""

    text: str
    generated_tokens: int
    attributes: FashionAttributes | None = None
    failure: ItemFailure | None = None
    error_detail: str | None = None
    #: Per-value confidence (same shape as ``attributes``); constrained decoding only.
    confidence: AttributeConfidence | None = None

    @property
    def ok(self) -> bool:
        return self.attributes is not None


class DeviceOutOfMemoryError(Exception):
    """The batch did not fit in device memory; the backend has already released what it
    could. The caller may retry smaller batches (see ``service.serving.extraction``)."""


class DeviceFatalError(Exception):
    """The device is unusable for the rest of the process (a sticky CUDA error, a lost
    device): the engine is dead and the pod must be restarted."""


class DeadlineExceededError(Exception):
    """The item's deadline passed before it reached the model; it was never run."""

    def __init__(self, stage: str) -> None:
        super().__init__(f"deadline passed while {stage}")
        self.stage = stage


class EngineClosedError(Exception):
    """The engine takes no more work (stopping or stopped)."""


class EngineRestartingError(Exception):
    """The engine core died (or is starting again) and the item was not answered; it may
    be sent again once the new core is ready, about ``retry_after_s`` from now."""

    def __init__(self, detail: str, retry_after_s: float) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class TimedOutcome:
    """One image's outcome with the scheduler's timing of it (``time.monotonic()``, one
    clock for every process on the host): queued at, its batch started and finished."""

    outcome: ItemOutcome
    enqueued_at: float
    started_at: float
    finished_at: float
    batch_size: int

    @property
    def queued_s(self) -> float:
        return max(0.0, self.started_at - self.enqueued_at)


class InferenceBackend(Protocol):
    @property
    def info(self) -> ModelInfo: ...

    def preprocess(self, image: Image.Image) -> PreparedImage:
        """Prepare one decoded image for ``run_batch``. Thread-safe: it runs on the
        preprocessing pool, concurrently with the batch in the engine (it may upload the
        pixels to the device there, so the copy overlaps with compute)."""
        ...

    def run_batch(self, images: Sequence[PreparedImage]) -> list[ItemOutcome]:
        """Run one batch; one outcome per image, in order. Called from one thread at a time."""
        ...

    def warmup(self) -> None:
        """Run a representative batch so the first request does not pay for lazy init."""
        ...

    def check_device(self) -> None:
        """A tiny round trip to the device for liveness; raises DeviceFatalError if the
        device is unusable. Any other exception is taken as transient (busy, momentarily
        out of memory), not as a dead engine. Must be cheap (it runs on every liveness
        probe)."""
        ...

    def close(self) -> None: ...


class StepRunner(Protocol):
    """A backend's running set of rows, driven one decoder step at a time (the engine core's
    iteration-level scheduler). Rows are named by the caller's ``tags``. Synchronous: one
    thread calls it. :class:`DeviceOutOfMemoryError` from :meth:`join` leaves nothing
    joined, and from :meth:`step` leaves every row as it was, so either can be retried."""

    @property
    def running(self) -> int: ...

    def join(self, images: Sequence[PreparedImage], tags: Sequence[int]) -> None:
        """Encode ``images`` and add their rows; they decode from the next step on."""
        ...

    def leave(self, tags: Sequence[int]) -> None:
        """Drop these rows (cancelled, expired, evicted) before the next step."""
        ...

    def step(self) -> list[tuple[int, ItemOutcome]]:
        """One decoder step for every row; the rows it finished, which have left."""
        ...

    def reset(self) -> None:
        """Forget every row (a step failed other than by running out of memory)."""
        ...


class Engine(Protocol):
    """The model as the serving layer sees it: one image in, one timed outcome out.
    Batching, the result cache and the device are behind it."""

    @property
    def info(self) -> ModelInfo: ...

    def prepare(self, image: Image.Image) -> PreparedImage:
        """Turn a decoded image into what :meth:`infer` takes. Thread-safe: it runs on the
        serving layer's preprocessing pool."""
        ...

    async def lookup(self, key: str) -> ItemOutcome | None:
        """The cached outcome for an image's content digest, or None (also when the cache
        is off)."""
        ...

    async def infer(
        self,
        prepared: PreparedImage,
        *,
        deadline: float,
        key: str | None,
        priority: Priority = Priority.INTERACTIVE,
    ) -> TimedOutcome:
        """Queue one image in its scheduling class and wait for its outcome; ``key`` (its
        content digest) caches it. Raises DeadlineExceededError (dropped unrun), EngineRestartingError,
        EngineClosedError, or the batch's own exception. Cancelling the call withdraws
        the image if it has not run yet."""
        ...

    def retry_after_s(self) -> float:
        """Seconds until the current backlog drains at the recent rate (for Retry-After)."""
        ...

    def restarting(self) -> bool:
        """True while the engine is being replaced after a death (work is refused with
        ``engine_restarting`` meanwhile)."""
        ...

    async def liveness(self) -> str | None:
        """Why the engine is dead for good (the pod must restart), or None if it is alive
        or coming back."""
        ...

    async def close(self) -> None:
        """Finish accepted work, then release the engine (in process) or the connection."""
        ...
