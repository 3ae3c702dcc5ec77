"""Test doubles for the model boundary: for tests about batching and HTTP, not the model."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image

from fashion_florence_client.schema import FashionAttributes
from service.backend import ItemFailure, ItemOutcome, ModelInfo, PreparedImage

GOOD = FashionAttributes(
    category="top",
    primary_color="red",
    material="cotton",
    style_tags=["casual"],
    occasion_tags=["everyday"],
)


class FakeBackend:
    """Answers from the image's mean red level, so each caller's result is traceable.

    Images whose red channel mean is above ``bad_red_above`` get ``invalid_model_output``,
    which lets a test put a bad item in the middle of a good batch.
    """

    def __init__(
        self,
        *,
        image_size: int = 8,
        batch_delay_s: float = 0.0,
        load_gate: threading.Event | None = None,
        bad_red_above: float = 2.0,
    ) -> None:
        self.image_size = image_size
        self.batch_delay_s = batch_delay_s
        self.load_gate = load_gate
        self.bad_red_above = bad_red_above
        self.batches: list[int] = []
        self.warmed = False
        self.closed = False

    @property
    def info(self) -> ModelInfo:
        return ModelInfo("fake", "0", "cpu", "float32", self.image_size, {"name": "fake"})

    def preprocess(self, image: Image.Image) -> PreparedImage:
        resized = image.resize((self.image_size, self.image_size))
        return np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 255.0

    def warmup(self) -> None:
        if self.load_gate is not None:
            self.load_gate.wait(timeout=10)
        self.warmed = True

    def close(self) -> None:
        self.closed = True

    def check_device(self) -> None:
        pass

    def run_batch(self, images: Sequence[PreparedImage]) -> list[ItemOutcome]:
        self.batches.append(len(images))
        if self.batch_delay_s:
            time.sleep(self.batch_delay_s)
        return [self._answer(image) for image in images]

    def _answer(self, image: PreparedImage) -> ItemOutcome:
        red = float(image[0].mean())
        if red > self.bad_red_above:
            return ItemOutcome(
                "{oops", 3, failure=ItemFailure.INVALID_OUTPUT, error_detail="not JSON"
            )
        color = "red" if red > 0.5 else "blue"
        attributes = GOOD.model_copy(update={"primary_color": color})
        return ItemOutcome(attributes.to_target_text(), 30, attributes=attributes)
