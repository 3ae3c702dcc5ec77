"""Drafts for jump-forward decoding: the canonical tokens of the text the grammar forces next.

A forced string can tokenize differently alone than after what precedes it (byte-level
BPE merges across the boundary), so it is tokenized in context. The context is the row's
*frontier*, its last few tokens, never the whole prefix: BPE never merges across the
pre-tokenizer's word boundaries, so wherever the frontier starts at such a boundary (in
compact JSON, nearly always: its pre-tokens are short) it gives the draft the whole
prefix would, for the cost of a short string. If the frontier does not re-tokenize to itself (the row's tokens are not
canonical there, or it starts inside a UTF-8 character), the forced string alone is the
draft.

A draft depends only on (frontier, forced string), and both repeat across rows and
batches (every output has the same keys in the same order), so drafts are memoized: in
steady state drafting a row is one dict lookup. A draft is a guess the model verifies,
so a different draft can cost decoder passes but never changes the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

#: Tokens of context before the forced string. JSON pre-tokens here are a few tokens long.
FRONTIER_TOKENS: Final = 6
#: Memoized drafts kept per decoder; the memo is cleared when full (it refills at once).
MEMO_ENTRIES: Final = 1 << 16


class Drafter:
    """Memoized in-context tokenization of forced strings; one per decoder (one thread)."""

    def __init__(self, tokenizer: Any, token_bytes: Sequence[bytes]) -> None:
        self._encode = tokenizer.backend_tokenizer.encode
        self._token_bytes = token_bytes
        self._memo: dict[tuple[tuple[int, ...], str], tuple[int, ...]] = {}
        self.tokenized = 0  # tokenizer calls so far (memo misses), for tests and benchmarks

    def draft(self, frontier: tuple[int, ...], forced: str) -> tuple[int, ...]:
        """The tokens that follow ``frontier`` when ``forced`` is appended to its text."""
        key = (frontier, forced)
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo.clear()
            found = self._memo[key] = self._tokenize(frontier, forced)
        return found

    def _tokenize(self, frontier: tuple[int, ...], forced: str) -> tuple[int, ...]:
        self.tokenized += 1
        try:
            prefix = b"".join(self._token_bytes[t] for t in frontier).decode()
        except UnicodeDecodeError:  # the frontier starts or ends inside a character
            prefix = None
        if prefix is not None:
            ids: list[int] = self._encode(prefix + forced, add_special_tokens=False).ids
            if tuple(ids[: len(frontier)]) == frontier:
                return tuple(ids[len(frontier) :])
        alone: list[int] = self._encode(forced, add_special_tokens=False).ids
        return tuple(alone)
