"""Closed-set choice: what a schema-constrained decoder answers for the leading fields.

Under the service's constrained decoding the JSON's fixed text (braces, keys, quotes) is
forced and the model only chooses among each field's allowed values. For the leading
closed-set fields (category, then primary colour) this teacher-forces that fixed text and
takes the allowed value the model rates likeliest, each field after the model's own
earlier choice. Where every value is one token (the demo vocabulary), that is exactly
what greedy constrained decoding picks; for longer values it is the likeliest whole value.
It lets the pipeline score what the service would answer, for models whose unconstrained
text is not valid JSON (partially labelled photos), without importing the service.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import torch
from PIL import Image
from transformers import Florence2ForConditionalGeneration, Florence2Processor
from transformers.modeling_outputs import BaseModelOutput

from fashion_florence_client.schema import CATEGORIES, COLORS, FIELD_ORDER, FashionAttributes
from model_store.training.encoding import value_spans

#: The closed-set fields in the target's order; a choice covers a leading run of them.
CHOICES: Final[dict[str, tuple[str, ...]]] = {
    "category": tuple(CATEGORIES),
    "primary_color": tuple(COLORS),
}


def _prefix(chosen: dict[str, str], field: str) -> str:
    """The target text up to and with the opening quote of ``field``'s value: the
    training layout (:func:`value_spans`), the later fields filled with any valid value."""
    filler: dict[str, object] = {
        "category": CATEGORIES[0], "primary_color": COLORS[0], "material": None,
        "style_tags": [], "occasion_tags": [],
    }  # fmt: skip
    attributes = FashionAttributes.model_validate({**filler, **chosen})
    text, spans = value_spans(attributes)
    return text[: spans[field][0] + 1]


def _value_scores(
    model: Florence2ForConditionalGeneration,
    processor: Florence2Processor,
    encoder: torch.Tensor,
    prefixes: Sequence[str],
    options: Sequence[str],
) -> torch.Tensor:
    """(n, len(options)): each option's summed log-probability after its row's prefix."""
    tokenizer = processor.tokenizer
    texts = [prefix + option + '"' for prefix in prefixes for option in options]
    encoded = tokenizer(
        texts, add_special_tokens=True, padding=True, return_tensors="pt",
        return_offsets_mapping=True,
    )  # fmt: skip
    ids = encoded["input_ids"]
    start = torch.full((len(texts), 1), tokenizer.eos_token_id, dtype=ids.dtype)
    decoder_input_ids = torch.cat([start, ids[:, :-1]], dim=1)  # Florence-2 starts from </s>
    device = encoder.device
    out = model(
        encoder_outputs=BaseModelOutput(
            last_hidden_state=encoder.repeat_interleave(len(options), dim=0)
        ),
        decoder_input_ids=decoder_input_ids.to(device),
        decoder_attention_mask=encoded["attention_mask"].to(device),
    )
    logprobs = out.logits.float().log_softmax(-1).cpu()
    token_logprobs = logprobs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    # A token belongs to the value if it starts inside it (the opening quote is fixed
    # text; BPE may merge it into the token before, which every option shares).
    begins = torch.tensor([len(prefixes[row // len(options)]) for row in range(len(texts))])
    ends = begins + torch.tensor([len(options[row % len(options)]) for row in range(len(texts))])
    starts = encoded["offset_mapping"][..., 0]
    inside = (
        (starts >= begins[:, None]) & (starts < ends[:, None]) & (ids != tokenizer.pad_token_id)
    )
    scores: torch.Tensor = (token_logprobs * inside).sum(-1)
    return scores.view(len(prefixes), len(options))


@torch.inference_mode()
def choose_values(
    model: Florence2ForConditionalGeneration,
    processor: Florence2Processor,
    prompt: str,
    images: Sequence[Image.Image],
    fields: Sequence[str] = ("category", "primary_color"),
) -> list[dict[str, str]]:
    """Per image, the chosen value of each of ``fields`` (a leading run of the target)."""
    if tuple(fields) != FIELD_ORDER[: len(fields)] or not set(fields) <= CHOICES.keys():
        raise ValueError(f"{fields}: give a leading run of the closed-set fields {list(CHOICES)}")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    inputs = processor(text=[prompt] * len(images), images=list(images), return_tensors="pt")
    start = torch.full((len(images), 1), processor.tokenizer.eos_token_id)
    encoder = model(
        input_ids=inputs["input_ids"].to(device),
        pixel_values=inputs["pixel_values"].to(device=device, dtype=dtype),
        decoder_input_ids=start.to(device),
    ).encoder_last_hidden_state
    chosen: list[dict[str, str]] = [{} for _ in images]
    for field in fields:
        options = CHOICES[field]
        prefixes = [_prefix(row, field) for row in chosen]
        best = _value_scores(model, processor, encoder, prefixes, options).argmax(-1)
        for row, index in zip(chosen, best.tolist(), strict=True):
            row[field] = options[index]
    return chosen
