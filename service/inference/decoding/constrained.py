"""Grammar token masks for a batch: per-row matchers, one batched fill, applied on device.

:class:`RowMatchers` is shared by both constrained decoders: the HF ``generate`` path
(:class:`GrammarLogitsProcessor`) and the jump-forward loop. Masks are filled on the CPU
by xgrammar (multi-threaded across rows), copied once per step, and applied where the
logits live, so the vocabulary-sized tensor never leaves the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import xgrammar as xgr
from transformers import LogitsProcessor

from service.inference.decoding.grammar import SchemaGrammar


class GrammarRejectedError(RuntimeError):
    """A row produced a token its grammar does not allow (non-finite logits, a bug)."""


_CLEARED_BITS: dict[torch.device, torch.Tensor] = {}


def _cleared_bits(device: torch.device) -> torch.Tensor:
    """(256, 8) bool: which bits of each byte value are 0, least significant first."""
    table = _CLEARED_BITS.get(device)
    if table is None:
        values = torch.arange(256, dtype=torch.int32)
        bits = (values.unsqueeze(1) >> torch.arange(8, dtype=torch.int32)) & 1
        table = _CLEARED_BITS[device] = (bits == 0).to(device)
    return table


def apply_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> None:
    """Set disallowed logits to -inf in place; ``bitmask`` must be on the logits' device.

    The packed mask is unpacked a byte at a time through a 256-entry table, straight into
    one bool per token: 1.5 bytes per token of transient memory (the int32 byte indices,
    then the bools), where shifting every word by 0..31 took 5 (an int32 per bit, then a
    comparison). Pure torch, so it runs on any device without xgrammar's JIT-compiled
    kernels; xgrammar's CPU kernel measured slower than this on the 2-core host (see
    docs/BENCHMARKS.md).
    """
    rows, vocab = logits.shape
    packed = bitmask[:rows].contiguous().view(torch.uint8)  # little-endian words
    blocked = _cleared_bits(logits.device).index_select(0, packed.reshape(-1).int())
    logits.masked_fill_(blocked.view(rows, -1)[:, :vocab], float("-inf"))


def masked_scores(logits: torch.Tensor, bitmask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy choice and its log-probability under the grammar-renormalized distribution.

    ``logits`` (N, V), float32 as ``generate`` computes scores, is modified in place.
    """
    apply_bitmask(logits, bitmask)
    best, choice = logits.max(dim=-1)
    return choice, best - torch.logsumexp(logits, dim=-1)


def allowed_ids(bitmask: np.ndarray, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """The token ids each row of an xgrammar bitmask (R, words) int32 allows, ascending:
    all rows' ids in one flat int64 array, and how many belong to each row."""
    bits = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")[:, :vocab]
    rows, ids = np.nonzero(bits)  # row-major: by row, then by id
    return ids.astype(np.int64), np.bincount(rows, minlength=bitmask.shape[0]).astype(np.int64)


def allowed_scores(
    logits: torch.Tensor, allowed: torch.Tensor, padding: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy choice among each row's allowed ids, and its probability under the
    grammar-renormalized distribution: what :func:`masked_scores` gives, from the few
    logits the grammar allows rather than a vocabulary-wide mask.

    ``allowed`` (N, K) int64 lists each row's allowed ids in ascending order, padded
    where ``padding`` (N, K) is True (with any valid id); both on the logits' device.
    Returns the *position* in ``allowed`` of each row's choice (the caller holds the ids)
    and its probability. The choice is the masked argmax over the vocabulary (ties go to
    the lowest id in both, as ``max`` returns the first maximum); the probability is the
    largest softmax value, i.e. the choice's, whatever the ties. Five small ops, as
    each one costs the host a kernel launch (or, on CPU, a dispatch) per step.
    """
    scores = logits.gather(1, allowed).masked_fill_(padding, float("-inf"))
    at = scores.argmax(dim=-1)
    return at, torch.softmax(scores, dim=-1).amax(dim=-1)


class RowMatchers:
    """One grammar matcher per batch row, plus a reusable host-side bitmask.

    Matchers are made on a row's first use: the jump-forward loop takes most steps from
    its memo and never asks a row's grammar state there, so a batch can finish without
    building any.
    """

    def __init__(self, grammar: SchemaGrammar, rows: int, device: torch.device) -> None:
        self.grammar = grammar
        self._matchers: list[xgr.GrammarMatcher | None] = [None] * rows
        self._batch: xgr.BatchGrammarMatcher | None = None
        self._device = device
        self._rows = rows
        self._free: list[int] = []  # released indices (see grow)
        self._bitmask: torch.Tensor | None = None  # allocated on first use (generate's path)

    def grow(self, count: int) -> list[int]:
        """Indices for ``count`` new rows (rows joining a running set): released ones
        first, so a long-running set does not grow without bound."""
        reused, self._free = self._free[:count], self._free[count:]
        fresh = list(range(self._rows, self._rows + count - len(reused)))
        self._rows += len(fresh)
        self._matchers.extend([None] * len(fresh))
        return reused + fresh

    def release(self, row: int) -> None:
        """Row ``row`` left; its index may be handed out again, with a new matcher."""
        self._matchers[row] = None
        self._free.append(row)

    def matcher(self, row: int) -> xgr.GrammarMatcher:
        found = self._matchers[row]
        if found is None:
            found = self._matchers[row] = xgr.GrammarMatcher(self.grammar.compiled)
        return found

    @property
    def matchers(self) -> list[xgr.GrammarMatcher]:
        return [self.matcher(row) for row in range(self._rows)]

    def _allocate(self, rows: int) -> torch.Tensor:
        bitmask = xgr.allocate_token_bitmask(max(rows, 1), self.grammar.vocab_size)
        # Pinned memory lets the host-to-device copy run asynchronously.
        return bitmask.pin_memory() if self._device.type == "cuda" else bitmask

    def bitmask(self, rows: int) -> torch.Tensor:
        """The first ``rows`` rows of the host bitmask, grown if needed."""
        if self._bitmask is None or rows > self._bitmask.shape[0]:
            held = 0 if self._bitmask is None else self._bitmask.shape[0]
            self._bitmask = self._allocate(max(rows, 2 * held, self._rows))
        return self._bitmask[:rows]

    def fill(self, rows: Sequence[int], slots: Sequence[int], bitmask: torch.Tensor) -> None:
        """Write the next-token mask of matcher ``rows[i]`` into ``bitmask[slots[i]]``."""
        if rows:
            if self._batch is None:
                self._batch = xgr.BatchGrammarMatcher(max_threads="auto")
            self._batch.batch_fill_next_token_bitmask(
                [self.matcher(r) for r in rows], bitmask, list(slots)
            )

    def on_device(self, bitmask: torch.Tensor) -> torch.Tensor:
        # Asynchronous from pinned memory: safe to refill the host buffer next step, since
        # both decoders read the chosen tokens back (a device sync) before they refill.
        return bitmask.to(self._device, non_blocking=True)

    def accept(self, rows: Sequence[int], tokens: Sequence[int]) -> None:
        if not rows:
            return
        accepted = xgr.BatchGrammarMatcher.batch_accept_token(
            [self.matcher(r) for r in rows], list(tokens)
        )
        if not all(accepted):
            bad = [(r, t) for r, t, ok in zip(rows, tokens, accepted, strict=True) if not ok]
            raise GrammarRejectedError(f"grammar rejected (row, token) {bad}")

    def terminated(self, row: int) -> bool:
        return bool(self.matcher(row).is_terminated())


class GrammarLogitsProcessor(LogitsProcessor):
    """Constrains ``generate`` to the grammar and records each chosen token's log-probability.

    ``generate`` must start from the decoder prefix that precedes the grammar (for
    Florence-2, ``</s><s>``); every token after it is masked. A fresh instance per call.
    """

    def __init__(self, grammar: SchemaGrammar, rows: int, device: torch.device) -> None:
        self.rows = RowMatchers(grammar, rows, device)
        self._count = rows
        self._prefix_len: int | None = None
        self._last_logprobs: torch.Tensor | None = None
        self.logprobs: list[list[float]] = [[] for _ in range(rows)]

    def _record(self, tokens: torch.Tensor) -> list[int]:
        """Accept the tokens chosen at the previous step and keep their log-probabilities."""
        assert self._last_logprobs is not None
        chosen = tokens.tolist()
        values = self._last_logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
        live = [r for r in range(self._count) if not self.rows.terminated(r)]
        for row in live:
            self.logprobs[row].append(values[row])
        self.rows.accept(live, [chosen[r] for r in live])
        return [r for r in live if not self.rows.terminated(r)]  # minus rows that just stopped

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._prefix_len is None:
            self._prefix_len = input_ids.shape[1]
            live = list(range(self._count))
        else:
            live = self._record(input_ids[:, -1])
        bitmask = self.rows.bitmask(self._count)
        self.rows.fill(live, live, bitmask)
        device_mask = self.rows.on_device(bitmask)
        # Finished rows are padded by generate whatever their scores; mask only live ones
        # (a terminated matcher has no next-token mask to give).
        scores = scores.float()
        if len(live) == self._count:
            apply_bitmask(scores, device_mask)
        elif live:
            index = torch.tensor(live, device=scores.device)
            sub = scores.index_select(0, index)
            apply_bitmask(sub, device_mask.index_select(0, index))
            scores.index_copy_(0, index, sub)
        self._last_logprobs = torch.log_softmax(scores, dim=-1)
        return scores

    def finish(self, sequences: torch.Tensor) -> None:
        """Record the last step (``generate`` does not call processors after it)."""
        if self._prefix_len is not None and sequences.shape[1] > self._prefix_len:
            self._record(sequences[:, -1])
