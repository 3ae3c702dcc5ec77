"""Florence-2's real vocabulary, built offline from GPT-2's BPE ranks.

Florence-2 uses BART's tokenizer: GPT-2's byte-level BPE (same merges, so the same
tokenization) with BART's special tokens around it, 50,265 entries. Florence-2's processor
then adds 1,024 tokens of its own (``<od>``, ``<ocr>``, ``<loc_0>``..``<loc_999>``, the task
tokens), which makes the original checkpoints' 51,289; transformers' native port adds
``<image>`` (id 51,289) and pads the embedding table to a multiple of 64 (51,328).

GPT-2's ranks ship as a ``.tiktoken`` file (one ``base64(token) rank`` per line), e.g.
``openai-whisper``'s ``whisper/assets/gpt2.tiktoken``. Merges are recovered from the ranks
the standard way: each multi-byte token splits into the two parts BPE would have joined
last. Token ids of the BPE part differ from BART's (its ids follow fairseq's dictionary
order); the tokenization, the vocabulary's size and the added tokens' ids are Florence-2's.
That is what tests and benchmarks need: real mask widths and real token counts.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Final

from tokenizers import AddedToken, pre_tokenizers
from transformers import RobertaTokenizer

from model_store.tokenizer import IMAGE_TOKEN, SPECIAL_TOKENS

#: BART's vocabulary: 4 specials, 50,256 BPE tokens, ``<|endoftext|>``, three fairseq
#: placeholders and ``<mask>``.
BART_VOCAB_SIZE: Final = 50265
BART_TAIL: Final = ("<|endoftext|>", "madeupword0000", "madeupword0001", "madeupword0002")
#: The original checkpoints' embedding rows (BART + Florence-2's added tokens).
FLORENCE_ORIGINAL_VOCAB_SIZE: Final = 51289
#: transformers pads the native embedding table (with ``<image>``) to a multiple of 64.
NATIVE_EMBEDDING_MULTIPLE: Final = 64


def florence_added_tokens() -> list[str]:
    """The 1,024 tokens the original Florence-2 processor adds, in its order (its spelling,
    ``desciption`` included: the ids depend on it)."""
    tasks = [
        "<cap>", "</cap>", "<ncap>", "</ncap>", "<dcap>", "</dcap>", "<grounding>",
        "</grounding>", "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>",
        "<region_to_desciption>", "</region_to_desciption>", "<proposal>", "</proposal>",
        "<poly>", "</poly>", "<and>",
    ]  # fmt: skip
    return ["<od>", "</od>", "<ocr>", "</ocr>", *(f"<loc_{i}>" for i in range(1000)), *tasks]


def native_embedding_rows(tokenizer_length: int) -> int:
    """The native model's embedding rows for a tokenizer of this length (padded)."""
    multiple = NATIVE_EMBEDDING_MULTIPLE
    return -(-tokenizer_length // multiple) * multiple


def read_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in path.read_text(encoding="ascii").splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _split(ranks: dict[bytes, int], token: bytes, rank: int) -> tuple[bytes, bytes]:
    """The pair BPE merges last to make ``token``: replay the merges ranked below it."""
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best: tuple[int, int] | None = None
        for index in range(len(parts) - 1):
            candidate = ranks.get(parts[index] + parts[index + 1])
            if candidate is not None and candidate < rank and (best is None or candidate < best[0]):
                best = (candidate, index)
        if best is None:
            break
        index = best[1]
        parts[index : index + 2] = [parts[index] + parts[index + 1]]
    if len(parts) != 2:
        raise ValueError(f"rank {rank} ({token!r}) is not a merge of two lower-ranked tokens")
    return parts[0], parts[1]


def bart_tokenizer(ranks_path: Path) -> RobertaTokenizer:
    """BART's 50,265 tokens: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, the GPT-2
    vocabulary, ``<|endoftext|>``, the placeholders and ``<mask>``=50264."""
    ranks = read_ranks(ranks_path)
    byte_to_char = dict(zip(_byte_order(), _byte_chars(), strict=True))

    def text(piece: bytes) -> str:
        return "".join(byte_to_char[b] for b in piece)

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    merges: list[tuple[str, str]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        vocab[text(token)] = len(vocab)
        if len(token) > 1:
            left, right = _split(ranks, token, rank)
            merges.append((text(left), text(right)))
    for special in (*BART_TAIL, "<mask>"):
        vocab[special] = len(vocab)
    if len(vocab) != BART_VOCAB_SIZE:
        raise ValueError(f"{ranks_path} gives {len(vocab)} BART tokens, not {BART_VOCAB_SIZE}")
    return RobertaTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]  # the backend takes (left, right) tuples
        add_prefix_space=False,
    )


def add_florence_tokens(tokenizer: Any) -> Any:
    """Florence-2's 1,024 added tokens after the tokenizer's own (in place)."""
    before = len(tokenizer)
    added = [AddedToken(t, special=True, normalized=False) for t in florence_added_tokens()]
    tokenizer.add_special_tokens({"additional_special_tokens": added})
    if len(tokenizer) != before + len(added):
        raise ValueError("some of Florence-2's added tokens were already in the tokenizer")
    return tokenizer


def add_image_token(tokenizer: Any) -> Any:
    """The native port's ``<image>`` placeholder as the next id (in place)."""
    if getattr(tokenizer, "image_token", None) == IMAGE_TOKEN:
        return tokenizer
    # A named special token (``tokenizer.image_token``, which Florence2Processor reads) can
    # only be declared at construction; this is the hook the constructor itself uses.
    tokenizer._set_model_specific_special_tokens({"image_token": IMAGE_TOKEN})
    tokenizer.add_special_tokens({"image_token": IMAGE_TOKEN})
    return tokenizer


def florence_tokenizer(ranks_path: Path) -> RobertaTokenizer:
    """A Florence-2 (native) tokenizer: 51,290 tokens, ``<image>`` = 51,289."""
    tokenizer: RobertaTokenizer = add_image_token(add_florence_tokens(bart_tokenizer(ranks_path)))
    if len(tokenizer) != FLORENCE_ORIGINAL_VOCAB_SIZE + 1:
        raise ValueError(f"built {len(tokenizer)} tokens, not Florence-2's")
    return tokenizer


def _byte_order() -> list[int]:
    """GPT-2's byte-to-unicode table order: printable bytes first, then the rest."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    return printable + [b for b in range(256) if b not in printable]


def _byte_chars() -> list[str]:
    """The characters GPT-2 maps :func:`_byte_order`'s bytes to (same order)."""
    printable = [chr(b) for b in _byte_order()[:188]]
    chars = printable + [chr(256 + n) for n in range(256 - 188)]
    if set(chars) != set(pre_tokenizers.ByteLevel.alphabet()):
        raise AssertionError("byte-level alphabet differs from GPT-2's table")
    return chars
