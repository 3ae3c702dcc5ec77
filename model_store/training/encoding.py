"""Supervised examples for Florence-2 and their encoding for teacher forcing.

The model learns to emit the compact target JSON as ``<s>{...}</s>`` after the decoder
start token. Florence-2 is an encoder-decoder: the prompt is the encoder's input and never
part of the labels, and padding is set to -100, so the loss covers exactly the target
tokens. Shared by the pipeline's trainer and the colour-demo fine-tune.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import Florence2Processor

from fashion_florence_client.schema import FashionAttributes


@dataclass(frozen=True, slots=True)
class TrainingExample:
    image: Image.Image
    attributes: FashionAttributes


def encode_batch(
    processor: Florence2Processor, prompt: str, examples: Sequence[TrainingExample]
) -> dict[str, torch.Tensor]:
    inputs = processor(
        text=[prompt] * len(examples), images=[e.image for e in examples], return_tensors="pt"
    )
    labels = processor.tokenizer(
        [e.attributes.to_target_text() for e in examples],
        add_special_tokens=True,
        padding=True,
        return_tensors="pt",
    )["input_ids"]
    labels[labels == processor.tokenizer.pad_token_id] = -100  # no loss on padding
    return {**inputs, "labels": labels}
