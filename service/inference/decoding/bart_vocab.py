"""A BART-compatible tokenizer built offline from GPT-2's BPE ranks (benchmarks only).

Florence-2 uses BART's tokenizer: GPT-2's byte-level BPE (same merges, so the same
tokenization) with BART's special tokens in front. The ranks ship inside some packages'
source distributions as a ``.tiktoken`` file (one ``base64(token) rank`` per line), e.g.
``openai-whisper``'s ``whisper/assets/gpt2.tiktoken``. Merges are recovered from the ranks
the standard way: each multi-byte token splits into the two parts BPE would have joined
last. Token ids differ from BART's (its ids follow fairseq's dictionary order); only the
tokenization matters for what this is used for: counting tokens and decoder passes.
"""

from __future__ import annotations

import base64
from pathlib import Path

from tokenizers import pre_tokenizers
from transformers import RobertaTokenizer

from model_store.tokenizer import IMAGE_TOKEN, SPECIAL_TOKENS


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
    """BART's special tokens (``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3), the GPT-2
    vocabulary after them, then ``<mask>`` and Florence-2's ``<image>``."""
    ranks = read_ranks(ranks_path)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = {b: c for b, c in zip(_byte_order(), _byte_chars(alphabet), strict=True)}

    def text(piece: bytes) -> str:
        return "".join(byte_to_char[b] for b in piece)

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    merges: list[tuple[str, str]] = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        vocab[text(token)] = len(vocab)
        if len(token) > 1:
            left, right = _split(ranks, token, rank)
            merges.append((text(left), text(right)))
    vocab["<mask>"] = len(vocab)
    return RobertaTokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]  # the backend takes (left, right) tuples
        add_prefix_space=False,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


def _byte_order() -> list[int]:
    """GPT-2's byte-to-unicode table order: printable bytes first, then the rest."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    return printable + [b for b in range(256) if b not in printable]


def _byte_chars(alphabet: list[str]) -> list[str]:
    """The characters GPT-2 maps :func:`_byte_order`'s bytes to (same order)."""
    printable = [chr(b) for b in _byte_order()[:188]]
    extra = [chr(256 + n) for n in range(256 - 188)]
    chars = printable + extra
    if set(chars) != set(alphabet):
        raise AssertionError("byte-level alphabet differs from GPT-2's table")
    return chars
