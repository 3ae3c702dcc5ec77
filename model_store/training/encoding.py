"""Supervised examples for Florence-2 and their encoding for teacher forcing.

The model learns to emit the compact target JSON as ``<s>{...}</s>`` after the decoder
start token. Florence-2 is an encoder-decoder: the prompt is the encoder's input and never
part of the labels, and padding is set to -100, so the loss covers exactly the target
tokens. Shared by the pipeline's trainer and the colour-demo fine-tune.

Partial labels: an example's ``unknown`` fields are still written into the decoder's
input (a complete JSON text, with the dataset's placeholders, as at inference where the
model reads its own earlier values), but every label token that overlaps an unknown
field's value is -100, so an unknown field contributes no loss. The key and the
punctuation before it stay supervised unless a token straddles into the value (BPE
merges ``":"`` with the value's opening quote): those are masked too, erring on the side
of teaching nothing about the unknown value.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import Florence2Processor

from fashion_florence_client.schema import FIELD_ORDER, FashionAttributes

IGNORE_INDEX = -100


@dataclass(frozen=True, slots=True)
class TrainingExample:
    image: Image.Image
    attributes: FashionAttributes
    unknown: tuple[str, ...] = ()  # fields without a label: no loss on their value


def value_spans(attributes: FashionAttributes) -> tuple[str, dict[str, tuple[int, int]]]:
    """The target text and, per field, the character span of its JSON value."""
    values = attributes.model_dump(mode="json")
    text, spans = "", {}
    for index, field in enumerate(FIELD_ORDER):
        text += ("{" if index == 0 else ",") + json.dumps(field) + ":"
        start = len(text)
        text += json.dumps(values[field], separators=(",", ":"), ensure_ascii=False)
        spans[field] = (start, len(text))
    text += "}"
    if text != attributes.to_target_text():  # the schema's own text is the one taught
        raise ValueError("target text layout changed; value_spans must follow it")
    return text, spans


def _masked(
    offsets: Sequence[tuple[int, int]], spans: dict[str, tuple[int, int]], unknown: Collection[str]
) -> list[bool]:
    """Per token: does it overlap the value of an unknown field?"""
    hidden = [spans[field] for field in unknown]
    return [
        end > begin and any(begin < stop and end > start for start, stop in hidden)
        for begin, end in offsets
    ]


def encode_batch(
    processor: Florence2Processor, prompt: str, examples: Sequence[TrainingExample]
) -> dict[str, torch.Tensor]:
    inputs = processor(
        text=[prompt] * len(examples), images=[e.image for e in examples], return_tensors="pt"
    )
    texts, spans = zip(*(value_spans(e.attributes) for e in examples), strict=True)
    tokenizer = processor.tokenizer
    encoded = tokenizer(
        list(texts),
        add_special_tokens=True,
        padding=True,
        return_tensors="pt",
        return_offsets_mapping=any(e.unknown for e in examples),
    )
    ids = encoded["input_ids"]
    labels = ids.clone()
    labels[ids == tokenizer.pad_token_id] = IGNORE_INDEX  # no loss on padding
    if not any(e.unknown for e in examples):
        return {**inputs, "labels": labels}  # the model shifts the labels itself
    for row, example in enumerate(examples):
        if example.unknown:
            hide = _masked(encoded["offset_mapping"][row].tolist(), spans[row], example.unknown)
            labels[row, torch.tensor(hide, dtype=torch.bool)] = IGNORE_INDEX
    # The decoder reads the whole text, placeholders included: shifting ``labels`` (the
    # model's default) would feed <pad> where a label is masked, which inference never
    # shows it. Florence-2 starts decoding from </s>.
    start = torch.full((len(examples), 1), tokenizer.eos_token_id, dtype=ids.dtype)
    decoder_input_ids = torch.cat([start, ids[:, :-1]], dim=1)
    return {**inputs, "labels": labels, "decoder_input_ids": decoder_input_ids}
