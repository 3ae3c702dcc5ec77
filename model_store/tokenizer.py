"""A byte-level BPE tokenizer trained locally on the schema's vocabulary.

The demo model cannot download Florence-2's tokenizer, so it gets a small one of its own
with the same special-token layout as BART (``<s>``=0, ``<pad>``=1, ``</s>``=2,
``<unk>``=3) plus Florence-2's ``<image>`` placeholder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import RobertaTokenizer

from fashion_florence_client.schema import (
    CATEGORIES,
    COLORS,
    FIELD_ORDER,
    MATERIALS,
    OCCASION_TAGS,
    STYLE_TAGS,
    FashionAttributes,
)

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]
IMAGE_TOKEN = "<image>"


def schema_vocabulary() -> list[str]:
    """Every literal string the schema can emit, for tokenizer training and tests."""
    words: list[str] = list(FIELD_ORDER)
    for values in (CATEGORIES, COLORS, MATERIALS, STYLE_TAGS, OCCASION_TAGS):
        words.extend(values)
    return words


def _corpus(prompt: str) -> Iterator[str]:
    """Deterministic training text: every schema literal as it appears in target JSON."""
    yield prompt
    for word in schema_vocabulary():
        yield json.dumps(word)
    # A sweep of full targets so common punctuation runs (`":"`, `"],"`) become merges.
    for index, category in enumerate(CATEGORIES):
        for offset in range(len(COLORS)):
            attributes = FashionAttributes(
                category=category,
                primary_color=COLORS[(index + offset) % len(COLORS)],
                material=None
                if offset % 3 == 0
                else MATERIALS[(index * 7 + offset) % len(MATERIALS)],
                style_tags=sorted(
                    {
                        STYLE_TAGS[(index + offset) % len(STYLE_TAGS)],
                        STYLE_TAGS[offset % len(STYLE_TAGS)],
                    },
                    key=STYLE_TAGS.index,
                ),
                occasion_tags=[OCCASION_TAGS[(index * 3 + offset) % len(OCCASION_TAGS)]],
            )
            yield attributes.to_target_text()


def train_tokenizer(prompt: str, vocab_size: int = 640) -> RobertaTokenizer:
    """Train the demo tokenizer; same input, same tokenizer, byte for byte."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(prompt), trainer)
    trained = json.loads(tokenizer.to_str())["model"]
    # transformers' BPE constructor wants merges as (left, right) tuples.
    merges: list[tuple[str, str]] = [
        (left, right)
        for left, right in (m.split(" ") if isinstance(m, str) else m for m in trained["merges"])
    ]
    return RobertaTokenizer(
        vocab=tokenizer.get_vocab(),
        # Annotated as list[str] in transformers, but the tokenizers backend only takes tuples.
        merges=merges,  # type: ignore[arg-type]
        add_prefix_space=False,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )
