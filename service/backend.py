"""The typed boundary between the service and a model.

``service`` talks to a model only through :class:`InferenceBackend`. The real
implementation is :class:`service.engine.FlorenceEngine`; tests swap in fakes so the HTTP
and batching suites stay fast. Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

from model_store.schema import FashionAttributes

#: One image resized and normalized for the model: float32, shape (3, H, W).
PreparedImage = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    revision: str
    device: str
    dtype: str
    image_size: int
    manifest: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """The engine's answer for one image: attributes, or an error code for this item only."""

    text: str
    generated_tokens: int
    attributes: FashionAttributes | None = None
    error_code: str | None = None
    error_detail: str | None = None

    @property
    def ok(self) -> bool:
        return self.attributes is not None


class InferenceBackend(Protocol):
    @property
    def info(self) -> ModelInfo: ...

    def preprocess(self, image: Image.Image) -> PreparedImage:
        """Resize and normalize one decoded image. Thread-safe; CPU only."""
        ...

    def run_batch(self, images: Sequence[PreparedImage]) -> list[ItemOutcome]:
        """Run one batch; one outcome per image, in order. Called from one thread at a time."""
        ...

    def warmup(self) -> None:
        """Run a representative batch so the first request does not pay for lazy init."""
        ...

    def close(self) -> None: ...
