"""The pieces of the training loop that do not change with the preset: data order,
learning-rate schedule, lazily opened images, autocast and the validation loss."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from transformers import Florence2Processor

from model_store.data.dataset import Record
from model_store.evaluation.predict import open_rgb
from model_store.training.augment import augment
from model_store.training.config import TrainConfig
from model_store.training.encoding import TrainingExample, encode_batch

VAL_BATCH = 32


def learning_rate_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up over ``warmup_ratio`` of the steps, then linear decay to zero."""
    warmup = max(1, math.ceil(config.warmup_ratio * total))
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    return config.learning_rate * max(0.0, (total - step) / max(1, total - warmup))


def micro_batches(n: int, config: TrainConfig, start: int) -> Iterator[tuple[int, list[int]]]:
    """(epoch, indices) from micro-batch ``start`` on.

    Each epoch's order depends only on (seed, epoch), which is what lets a resumed run
    continue exactly where the interrupted one stopped.
    """
    per_epoch = math.ceil(n / config.batch_size)
    micro = start
    while True:
        epoch, position = divmod(micro, per_epoch)
        order = list(range(n))
        random.Random(config.seed * 1_000_003 + epoch).shuffle(order)
        at = position * config.batch_size
        yield epoch, order[at : at + config.batch_size]
        micro += 1


class Examples:
    """Images opened when a batch needs them (a real dataset does not fit in memory)."""

    def __init__(self, records: Sequence[Record]) -> None:
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def batch(self, indices: Sequence[int]) -> list[TrainingExample]:
        return [self.example(self._records[i]) for i in indices]

    @staticmethod
    def example(record: Record) -> TrainingExample:
        return TrainingExample(open_rgb(record.image), record.target, tuple(record.unknown))


def augmented(pixels: torch.Tensor, config: TrainConfig, micro_step: int) -> torch.Tensor:
    """One micro-batch's images augmented; the draw depends only on (seed, micro-step), so
    a resumed run augments exactly as the interrupted one would have."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + micro_step)
    return augment(pixels, generator, zoom_and_shift=True)


def autocast(device: torch.device, config: TrainConfig) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA (the paper's setting); fp32 elsewhere."""
    if device.type == "cuda" and config.bf16 and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    processor: Florence2Processor,
    prompt: str,
    examples: Examples,
    config: TrainConfig,
    device: torch.device,
) -> float:
    """Mean per-token loss over the whole validation set (dropout off)."""
    model.train(False)
    total, tokens = 0.0, 0
    for start in range(0, len(examples), VAL_BATCH):
        indices = list(range(start, min(start + VAL_BATCH, len(examples))))
        batch = to_device(encode_batch(processor, prompt, examples.batch(indices)), device)
        count = int((batch["labels"] != -100).sum())
        with autocast(device, config):
            loss = model(**batch).loss
        total += float(loss) * count
        tokens += count
    model.train(True)
    return total / max(tokens, 1)
