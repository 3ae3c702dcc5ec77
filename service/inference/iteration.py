"""The Florence engine's running set, one decoder step at a time: the
:class:`service.backend.StepRunner` the engine core's iteration-level scheduler drives.

Rows join between steps (their images encoded as one micro-batch) and leave at any step;
each step is one jump-forward pass for every running row. Every row's tokens are what
static batching gives it: the rows never see each other (per-row slots, positions and
masks), and the grammar, drafts and verification are the same code
(:class:`service.inference.decoding.jump_forward.JumpForwardDecoder`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from service.backend import ItemOutcome, PreparedImage
from service.inference.decoding.jump_forward import JumpForwardDecoder
from service.inference.decoding.rows import Row, RunningSet

T = TypeVar("T")


class FlorenceEngine(Protocol):
    """What the runner needs of :class:`service.inference.engine.FlorenceEngine` (named
    by its parts: only the engine core loads the engine module)."""

    @property
    def device(self) -> torch.device: ...
    @property
    def jump_forward_decoder(self) -> JumpForwardDecoder | None: ...
    def pixel_values(self, images: Sequence[PreparedImage]) -> torch.Tensor: ...
    def normalize_pixels(self, pixels: Any) -> torch.Tensor: ...
    def prompt_ids(self, rows: int) -> torch.Tensor: ...
    def outcome(self, tokens: list[int], logprobs: list[float] | None) -> ItemOutcome: ...
    def guarded_call(self, size: int, run: Callable[[], T]) -> T: ...


class IterationRunner:
    """Implements :class:`service.backend.StepRunner` over a :class:`FlorenceEngine` that
    decodes jump-forward; ``pixels`` turns the images joined at once into ``pixel_values``."""

    def __init__(
        self,
        engine: FlorenceEngine,
        pixels: Callable[[Sequence[PreparedImage]], torch.Tensor] | None = None,
    ) -> None:
        decoder = engine.jump_forward_decoder
        if decoder is None:
            raise ValueError("iteration-level scheduling needs jump-forward decoding")
        self._engine = engine
        self._decoder: JumpForwardDecoder = decoder
        self._pixels = pixels or engine.pixel_values
        self._run: RunningSet = decoder.running_set(engine.device)
        self._rows: dict[int, Row] = {}
        self._tags: dict[int, int] = {}  # id(row) -> tag

    @property
    def running(self) -> int:
        return len(self._rows)

    def join(self, images: Sequence[PreparedImage], tags: Sequence[int]) -> None:
        if not images:
            return

        def encode() -> list[Row]:
            pixel_values = self._pixels(images)
            prompt = self._engine.prompt_ids(len(images))
            return self._decoder.join(self._run, prompt, torch.ones_like(prompt), pixel_values)

        rows = self._engine.guarded_call(len(images), encode)
        for tag, row in zip(tags, rows, strict=True):
            self._rows[tag] = row
            self._tags[id(row)] = tag

    def leave(self, tags: Sequence[int]) -> None:
        rows = [self._rows.pop(tag) for tag in tags if tag in self._rows]
        for row in rows:
            del self._tags[id(row)]
        if rows:
            self._decoder.leave(self._run, rows)

    def step(self) -> list[tuple[int, ItemOutcome]]:
        if not self._rows:
            return []
        finished = self._engine.guarded_call(self.running, lambda: self._decoder.step(self._run))
        answered = []
        for row in finished:
            tag = self._tags.pop(id(row))
            del self._rows[tag]
            answered.append((tag, self._engine.outcome(row.tokens, row.logprobs)))
        return answered

    def reset(self) -> None:
        """Forget every row (after a step failed other than by running out of memory)."""
        self._run = self._decoder.running_set(self._engine.device)
        self._rows.clear()
        self._tags.clear()


def uint8_pixels(engine: FlorenceEngine) -> Callable[[Sequence[PreparedImage]], torch.Tensor]:
    """``pixel_values`` from resized uint8 H x W x 3 arrays (what the engine core gets)."""

    def pixels(images: Sequence[PreparedImage]) -> torch.Tensor:
        return engine.normalize_pixels(np.stack(images))

    return pixels
