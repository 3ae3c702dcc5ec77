"""Florence-2's real-size vocabulary, built offline from GPT-2's ranks."""

from __future__ import annotations

from typing import Any

from model_store.vocabulary import (
    BART_VOCAB_SIZE,
    FLORENCE_ORIGINAL_VOCAB_SIZE,
    florence_added_tokens,
    native_embedding_rows,
)


def test_sizes_and_added_token_ids(bart_vocab: Any, florence_vocab: Any) -> None:
    assert len(bart_vocab) == BART_VOCAB_SIZE == 50265
    assert bart_vocab.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]) == [
        0, 1, 2, 3, 50264,
    ]  # fmt: skip
    assert len(florence_added_tokens()) == 1024
    assert len(florence_vocab) == FLORENCE_ORIGINAL_VOCAB_SIZE + 1 == 51290
    assert florence_vocab.convert_tokens_to_ids(["<od>", "<loc_0>", "<loc_999>", "<and>"]) == [
        50265, 50269, 51268, 51288,
    ]  # fmt: skip
    assert (florence_vocab.image_token, florence_vocab.image_token_id) == ("<image>", 51289)
    assert native_embedding_rows(len(florence_vocab)) == 51328  # transformers' padded table


def test_tokenization_is_gpt2s(florence_vocab: Any) -> None:
    # GPT-2 ids: "hello" 31373, " world" 995; ours follow BART's four specials.
    assert florence_vocab.encode("hello world", add_special_tokens=False) == [31373 + 4, 995 + 4]
    # Added tokens are never split, and text around them is tokenized as usual.
    ids = florence_vocab.encode("<loc_5>hello", add_special_tokens=False)
    assert ids == [50274, 31373 + 4]
