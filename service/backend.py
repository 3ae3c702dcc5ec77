"""The typed boundary between the service and a model.

``service`` talks to a model only through :class:`InferenceBackend`. The real
implementation is :class:`service.inference.engine.FlorenceEngine`; tests swap in fakes so the HTTP
and batching suites stay fast. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from PIL import Image

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
    (``service.core.extraction``) maps each to its public problem code."""

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
    could. The caller may retry smaller batches (see ``service.core.extraction``)."""


class DeviceFatalError(Exception):
    """The device is unusable for the rest of the process (a sticky CUDA error, a lost
    device): the engine is dead and the pod must be restarted."""


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
