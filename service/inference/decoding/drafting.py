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
batches (every output has the same keys in the same order), so drafts are memoized. A
draft is a guess the model verifies, so a different draft can cost decoder passes but
never changes the output. One level up, :class:`StepMemo` keeps a row's whole step plan
(draft and the tokens allowed along it) by the path of tokens that led to it: in steady
state a row's grammar work for a step is one dict lookup, and its matcher is not touched
at all (the decoder advances it only when a step plan has to be computed).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

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


#: Bytes of allowed-token lists the step memo may hold before it starts over.
MEMO_MASK_BYTES: Final = 64 << 20


@dataclass(frozen=True, slots=True)
class StepPlan:
    """What one row does at a step, given its output so far (its *path*): the draft it
    feeds, the tokens the grammar allows at each verified position (each draft position
    and the one after, minus a forced stop token's), and whether the draft ends with the
    forced stop token.

    The allowed tokens are kept sparse, as ascending ids, because a schema grammar allows
    a handful of a vocabulary's tens of thousands at any point: verifying gathers those
    few logits instead of masking every one (:func:`.constrained.allowed_scores`).
    """

    draft: tuple[int, ...]  # with the stop token last when ``ends``
    fed: tuple[int, ...]  # the draft tokens fed to the decoder: a forced stop is verified only
    #: What each verified position must choose for the draft to go on; -1 (no token) at
    #: the position after the draft, where the model's own pick is taken whatever it is.
    expected: tuple[int, ...]
    allowed: np.ndarray  # (sum(counts),) int64: the allowed ids of every verified position
    counts: np.ndarray  # (len(fed) + 1,) int64: how many of ``allowed`` each position has
    widest: int  # the largest count
    ends: bool

    @classmethod
    def of(
        cls, draft: tuple[int, ...], allowed: np.ndarray, counts: np.ndarray, ends: bool
    ) -> StepPlan:
        fed = draft[: len(draft) - ends]
        expected = draft if ends else (*draft, -1)
        return cls(draft, fed, expected, allowed, counts, int(counts.max()), ends)

    @property
    def nbytes(self) -> int:
        return int(self.allowed.nbytes + self.counts.nbytes)

    def cut(self, fed: int) -> StepPlan:
        """This plan feeding only its first ``fed`` draft tokens: the allowed tokens of a
        position depend only on the tokens before it, so they are a prefix of this plan's,
        and the model's pick is taken after the last fed token (no forced stop left)."""
        if fed >= len(self.fed):
            return self
        counts = self.counts[: fed + 1]
        allowed = self.allowed[: int(counts.sum())]
        return StepPlan.of(self.draft[:fed], allowed, counts, ends=False)


class StepMemo:
    """Step plans by path, so that the grammar work of a step is done once per distinct
    output prefix, not once per row and batch.

    The grammar is deterministic: a row's matcher state, its forced string, its draft and
    the masks along the draft are all functions of the tokens it has emitted. Paths are
    interned as (parent path, tokens appended) -> id, which costs one lookup per row and
    step however long the output is. Ids are never reused, so starting over when the
    memo is full (:data:`MEMO_MASK_BYTES`) turns every live row's next lookup into a
    miss, never into another path's plan.
    """

    ROOT: Final = 0  # the path of every row before its first step

    def __init__(self, max_bytes: int = MEMO_MASK_BYTES) -> None:
        self._max_bytes = max_bytes
        self._children: dict[tuple[int, tuple[int, ...]], int] = {}
        self._plans: dict[int, StepPlan] = {}
        self._bytes = 0
        self._ids = itertools.count(self.ROOT + 1)
        self.misses = 0  # plans computed so far, for tests and benchmarks

    def child(self, path: int, tokens: tuple[int, ...]) -> int:
        key = (path, tokens)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = next(self._ids)
        return found

    def get(self, path: int) -> StepPlan | None:
        return self._plans.get(path)

    def put(self, path: int, plan: StepPlan) -> None:
        self.misses += 1
        if self._bytes + plan.nbytes > self._max_bytes:
            self._children.clear()
            self._plans.clear()
            self._bytes = 0
        self._plans[path] = plan
        self._bytes += plan.nbytes
