"""Per-field confidence from the grammar-constrained token distribution.

Every decoding step's distribution is renormalized over the tokens the grammar allows
there, so a token's probability is already "among the values still possible". A value's
confidence is the product of the probabilities of the tokens that write its bytes (for a
tag, also the comma that chose to continue the list), i.e. the probability of the path
the decoder took through that value. For a model trained on canonical tokenizations this
is the value's probability; in general it is a lower bound of it (another tokenization of
the same value would be another path).

Tags are scored in the order the model wrote them and reported in schema order. Pure
Python: the confidence model itself (:class:`AttributeConfidence`) lives with the
output schema, which the HTTP layer and clients use without this package.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from fashion_florence_client.schema import AttributeConfidence, FashionAttributes
from model_store.profiles import PROJECT_PROFILE, OutputProfile, labels, target_text


@dataclass(frozen=True, slots=True)
class Span:
    """Where one value sits in the target text: bytes ``[start, end)``."""

    field: str
    tag: int | None  # index within the schema-ordered tag list; None for a single choice
    start: int
    end: int


def value_spans(
    attributes: FashionAttributes, profile: OutputProfile = PROJECT_PROFILE
) -> tuple[str, list[Span]]:
    """The text ``profile``'s model writes for ``attributes`` and the byte span of every
    value in it (in text order; a tag's ``tag`` is its index in schema order).

    Built with the same ``json.dumps`` as :func:`model_store.profiles.target_text` (and
    checked against it), so spans cannot drift from the text the model writes.
    """
    pieces: list[str] = []
    spans: list[Span] = []
    size = 0
    schema_order = attributes.model_dump()

    def put(text: str) -> tuple[int, int]:
        nonlocal size
        pieces.append(text)
        start = size
        size += len(text.encode())
        return start, size

    for index, (name, value) in enumerate(labels(attributes, profile).items()):
        put(("{" if index == 0 else ",") + json.dumps(name, ensure_ascii=False) + ":")
        if isinstance(value, list):
            put("[")
            for position, tag in enumerate(value):
                # A later tag's span starts at its comma: writing the comma is the decision
                # that the list goes on, and that decision belongs to this tag.
                start, end = put(("," if position else "") + json.dumps(tag, ensure_ascii=False))
                spans.append(Span(name, schema_order[name].index(tag), start, end))
            put("]")
        else:
            start, end = put(json.dumps(value, ensure_ascii=False))
            spans.append(Span(name, None, start, end))
    put("}")
    text = "".join(pieces)
    if text != target_text(attributes, profile):
        raise AssertionError("value_spans disagrees with the profile's target text")
    return text, spans


def attribute_confidence(
    attributes: FashionAttributes,
    token_bytes: Sequence[bytes],
    logprobs: Sequence[float],
    profile: OutputProfile = PROJECT_PROFILE,
) -> AttributeConfidence | None:
    """Confidence per value from the tokens that wrote the output and their log-probabilities.

    ``token_bytes`` and ``logprobs`` cover the JSON text only (no ``<s>``/``</s>``). Returns
    None if the tokens do not spell ``profile``'s text for ``attributes`` (not a constrained
    output). Fields the model does not write (derived by the profile) get None.
    """
    text, spans = value_spans(attributes, profile)
    if b"".join(token_bytes) != text.encode() or len(token_bytes) != len(logprobs):
        return None
    ends: list[int] = []
    offset = 0
    for piece in token_bytes:
        offset += len(piece)
        ends.append(offset)
    scores: dict[str, float] = {}
    tags: dict[str, list[float]] = {
        name: [0.0] * len(value)
        for name, value in attributes.model_dump().items()
        if isinstance(value, list) and name in profile.fields
    }
    token = 0
    for span in spans:  # spans and tokens are both in text order: one merge-like sweep
        while token < len(ends) and ends[token] <= span.start:
            token += 1
        total = 0.0
        cursor = token
        while cursor < len(ends) and ends[cursor] - len(token_bytes[cursor]) < span.end:
            total += logprobs[cursor]
            cursor += 1
        probability = min(1.0, max(0.0, math.exp(total)))
        if span.tag is None:
            scores[span.field] = probability
        else:
            tags[span.field][span.tag] = probability
    derived = dict.fromkeys(profile.derived)
    return AttributeConfidence.model_validate({**scores, **tags, **derived})
