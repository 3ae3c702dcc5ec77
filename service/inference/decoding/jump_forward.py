"""Jump-forward decoding: grammar-forced text costs no decoder pass of its own.

Each step, every row feeds one block: the token chosen last step, then a *draft*: the
canonical tokenization of the text the grammar forces next (keys, punctuation, the rest of
an unambiguous value; see :mod:`.drafting`). One forward pass scores every block position,
and the draft is verified the way greedy decoding would have produced it: position ``j``'s
grammar-masked argmax must equal draft token ``j``. The first mismatch is not wasted (the
argmax there is the row's next token), and the rejected rest is overwritten by the next
block (:class:`.kv_slots.SlotCache`). So the output is token-for-token what constrained
greedy ``generate`` produces, for any weights, including where a model tokenizes forced
text differently than the tokenizer would.

One step, in order, and what overlaps (on CUDA, where kernel launches return at once):

1. host: each row's step plan from the memo, by its token path (:class:`.StepMemo`); for
   a miss, its forced string and draft; the block's inputs written into one pinned
   host buffer;
2. one non-blocking host-to-device copy of that buffer; the decoder block is queued;
3. host, **while the device runs the block**: for memo misses, xgrammar fills the
   verification masks (one per draft position, batched across rows), walking each
   matcher through its draft and back; every row's masks go into one pinned buffer;
4. one non-blocking copy of the masks; LM head on the verified positions, mask, argmax
   and log-probabilities queued;
5. **the step's one device-to-host transfer**: every verified position's choice and
   log-probability in one tensor. The host then commits (accepts up to the first
   mismatch), advances each matcher and path by what the row appended, and drops
   finished rows (one more non-blocking copy: the survivors' index).

Step ``t + 1``'s masks cannot be filled during step ``t``: they depend on the tokens step
``t`` chooses. Pinned buffers are rewritten only after the step's transfer, which orders
after every copy queued from them, so one buffer of each kind suffices.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from service.inference.decoding.constrained import RowMatchers, masked_scores
from service.inference.decoding.drafting import FRONTIER_TOKENS, Drafter, StepMemo, StepPlan
from service.inference.decoding.florence import Florence2Stepper
from service.inference.decoding.grammar import SchemaGrammar
from service.inference.decoding.staging import HostBuffer


@dataclass(slots=True)
class DecodedRow:
    """One row's output after the decoder start token: ``<s>``, grammar tokens, ``</s>``."""

    tokens: list[int]
    logprobs: list[float]  # one per token after ``<s>``, under the grammar-masked distribution
    forward_passes: int


@dataclass(slots=True)
class _Row:
    index: int  # position in the caller's batch (and of its grammar matcher)
    tokens: list[int]
    pending: list[int]  # committed tokens not yet in the KV cache: the next block's head
    logprobs: list[float] = field(default_factory=list)
    cached: int = 0  # valid KV entries, i.e. the slot and position of the next fed token
    passes: int = 0
    done: bool = False
    path: int = StepMemo.ROOT  # the tokens so far, interned (see StepMemo)


@dataclass(slots=True)
class _Plan:
    """One row's part of a step: what it feeds, and the mask slots that verify it."""

    row: _Row
    fed: list[int]  # the draft without a forced stop token (that one is verified, not fed)
    first: int  # mask/logit slot of the first verified position; len(fed) + 1 in all
    step: StepPlan | None  # None until a memo miss is explored, after the block's launch


class JumpForwardDecoder:
    """Batched constrained greedy decoding over Florence-2 with forced-run skipping.

    It keeps its host buffers and its draft memo across calls; a lock makes concurrent
    calls (which the engine's one thread never makes) wait rather than share them.
    """

    def __init__(
        self,
        stepper: Florence2Stepper,
        grammar: SchemaGrammar,
        tokenizer: Any,
        *,
        start_id: int,
        bos_id: int,
        pad_id: int,
        max_new_tokens: int,
    ) -> None:
        self._stepper = stepper
        self._grammar = grammar
        self._drafter = Drafter(tokenizer, list(grammar.tokenizer_info.decoded_vocab))
        self._memo = StepMemo()
        self._start, self._bos, self._pad = start_id, bos_id, pad_id
        self._stop = grammar.stop_token_ids[0]
        self._max_new_tokens = max_new_tokens
        # Every fed entry has a slot below max_new_tokens + 1; the one after is the sink.
        self._capacity = max_new_tokens + 2
        self._stop_only = np.zeros((grammar.vocab_size + 31) // 32, dtype=np.int32)
        self._stop_only.view(np.uint32)[self._stop // 32] = np.uint32(1 << (self._stop % 32))
        self._inputs = HostBuffer(np.int64)
        self._masks = HostBuffer(np.int32)
        self._survivors = HostBuffer(np.int64)
        self._lock = threading.Lock()
        self.last_steps = 0  # forward passes of the last decode() call, for benchmarks

    def decode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> list[DecodedRow]:
        with self._lock, torch.inference_mode():
            return self._decode(input_ids, attention_mask, pixel_values)

    def _decode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> list[DecodedRow]:
        device = input_ids.device
        encoder = self._stepper.encode(input_ids, attention_mask, pixel_values)
        batch = input_ids.shape[0]
        cache = self._stepper.new_cache(batch, self._capacity)
        matchers = RowMatchers(self._grammar, batch, device)
        rows = [_Row(i, [self._bos], [self._start, self._bos]) for i in range(batch)]
        live = list(rows)  # the rows in KV-cache batch order; finished rows leave the cache
        self.last_steps = 0
        while live:
            plans = self._plan(matchers, live)
            tokens, slots, offsets, gather, length = self._block(plans, device)
            hidden = self._stepper.decode(cache, encoder, tokens, slots, offsets, length)
            self.last_steps += 1
            # On CUDA the block is still running: the grammar work for memo misses overlaps it.
            self._explore(matchers, [plan for plan in plans if plan.step is None])
            bitmask = self._verification_masks(plans, device)
            logits = self._stepper.logits(hidden.flatten(0, 1).index_select(0, gather))
            choices, logprobs = masked_scores(logits, bitmask)
            # The step's one device-to-host transfer: choices are exact in float64.
            picked: list[list[float]] = torch.stack(
                (choices.to(torch.float64), logprobs.to(torch.float64))
            ).tolist()
            self._commit(matchers, plans, picked[0], picked[1])
            keep = [slot for slot, plan in enumerate(plans) if not plan.row.done]
            if len(keep) < len(plans):
                self._survivors.take(len(keep), device)[:] = keep
                selected = self._survivors.upload(len(keep), device)
                encoder = self._stepper.keep_rows(cache, encoder, selected)
                live = [live[slot] for slot in keep]
        return [DecodedRow(r.tokens, r.logprobs, r.passes) for r in rows]

    def _plan(self, matchers: RowMatchers, live: list[_Row]) -> list[_Plan]:
        """Each row's draft (from its memoized step plan, else computed) and mask slots."""
        steps = [self._memo.get(row.path) for row in live]
        missing = [row for row, step in zip(live, steps, strict=True) if step is None]
        drafts = iter(self._drafts(matchers, missing))
        plans: list[_Plan] = []
        first = 0
        for row, step in zip(live, steps, strict=True):
            fed = next(drafts) if step is None else step.fed
            plans.append(_Plan(row, fed, first, step))
            first += len(fed) + 1
        return plans

    def _drafts(self, matchers: RowMatchers, rows: list[_Row]) -> list[list[int]]:
        """Each row's draft within its token budget, leaving room for the model's pick."""
        drafts: list[list[int]] = []
        for row in rows:
            room = self._max_new_tokens - len(row.tokens) - 1
            forced = matchers.matchers[row.index].find_jump_forward_string() if room > 0 else ""
            draft: list[int] = []
            if forced:
                frontier = tuple(row.tokens[max(1, len(row.tokens) - FRONTIER_TOKENS) :])
                draft = list(self._drafter.draft(frontier, str(forced))[:room])
            drafts.append(draft)
        return drafts

    def _block(
        self, plans: list[_Plan], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """This step's inputs, assembled on the host and copied once, without blocking.

        Tokens (B, W) right-padded; the cache slot of each (the row's next slots, the
        sink for padding); each row's offset; the flat (B * W) index of every verified
        position in mask-slot order; and how many cache entries the block reaches.
        """
        batch = len(plans)
        blocks = [p.row.pending + p.fed for p in plans]
        width = max(len(b) for b in blocks)
        checks = sum(len(p.fed) + 1 for p in plans)
        size = 2 * batch * width + batch + checks
        host = self._inputs.take(size, device)
        tokens = host[: batch * width].reshape(batch, width)
        slots = host[batch * width : 2 * batch * width].reshape(batch, width)
        offsets = host[2 * batch * width : 2 * batch * width + batch]
        gather = host[2 * batch * width + batch :]
        tokens.fill(self._pad)
        slots.fill(self._capacity - 1)  # the sink
        length = 0
        for index, (plan, block) in enumerate(zip(plans, blocks, strict=True)):
            cached, fed = plan.row.cached, len(block)
            tokens[index, :fed] = block
            slots[index, :fed] = np.arange(cached, cached + fed)
            offsets[index] = cached
            head = index * width + len(plan.row.pending) - 1  # predicts draft[0]
            verified = len(plan.fed) + 1
            gather[plan.first : plan.first + verified] = np.arange(head, head + verified)
            length = max(length, cached + fed)
        moved = self._inputs.upload(size, device)
        return (
            moved[: batch * width].view(batch, width),
            moved[batch * width : 2 * batch * width].view(batch, width),
            moved[2 * batch * width : 2 * batch * width + batch],
            moved[2 * batch * width + batch :],
            length,
        )

    def _explore(self, matchers: RowMatchers, plans: list[_Plan]) -> None:
        """Compute and memoize the step plans of memo misses: one mask per verified
        position, filled by xgrammar batched across rows, depth by depth, while each
        matcher walks its draft (rolled back after). A draft whose end completes the
        grammar gets the stop token appended, as its mask allows nothing else."""
        if not plans:
            return
        firsts = np.cumsum([0] + [len(p.fed) + 1 for p in plans])
        scratch = np.empty((int(firsts[-1]), self._stop_only.shape[0]), dtype=np.int32)
        bitmask = torch.from_numpy(scratch)
        walking = list(range(len(plans)))
        depth = 0
        while walking:
            matchers.fill([plans[w].row.index for w in walking],
                          [int(firsts[w]) + depth for w in walking], bitmask)  # fmt: skip
            walking = [w for w in walking if depth < len(plans[w].fed)]
            matchers.accept([plans[w].row.index for w in walking],
                            [plans[w].fed[depth] for w in walking])  # fmt: skip
            depth += 1
        for w, plan in enumerate(plans):
            row, draft = plan.row, plan.fed
            matcher = matchers.matchers[row.index]
            masks = scratch[firsts[w] : firsts[w + 1]].copy()
            room = self._max_new_tokens - len(row.tokens) - len(draft)
            ends = (
                room > 0 and matcher.is_completed() and np.array_equal(masks[-1], self._stop_only)
            )
            matcher.rollback(len(draft))
            plan.step = StepPlan((*draft, self._stop) if ends else tuple(draft), masks, ends)
            self._memo.put(row.path, plan.step)

    def _verification_masks(self, plans: list[_Plan], device: torch.device) -> torch.Tensor:
        """The step's masks, copied from the plans into one host buffer and to the device
        without blocking."""
        total = sum(len(p.fed) + 1 for p in plans)
        words = self._stop_only.shape[0]
        host = self._masks.take(total * words, device).reshape(total, words)
        for plan in plans:
            assert plan.step is not None  # every miss was explored
            host[plan.first : plan.first + len(plan.fed) + 1] = plan.step.masks
        return self._masks.upload(total * words, device).view(total, words)

    def _commit(
        self,
        matchers: RowMatchers,
        plans: list[_Plan],
        choices: list[float],
        logprobs: list[float],
    ) -> None:
        """Accept each draft up to its first mismatch, take the model's pick there, and
        advance each live row's matcher and path by what it appended."""
        advancing: list[tuple[int, list[int]]] = []
        for plan in plans:
            assert plan.step is not None
            row, draft, base = plan.row, plan.step.draft, plan.first
            accepted = 0
            while accepted < len(draft) and choices[base + accepted] == draft[accepted]:
                accepted += 1
            row.passes += 1
            finished = plan.step.ends and accepted == len(draft)
            fed = accepted - 1 if finished else accepted
            row.cached += len(row.pending) + fed  # the stop token is verified, never fed
            appended = list(draft[:accepted])
            row.logprobs.extend(logprobs[base : base + accepted])
            if not finished:
                pick = int(choices[base + accepted])
                appended.append(pick)
                row.logprobs.append(logprobs[base + accepted])
                row.pending = [pick]
            row.tokens.extend(appended)
            row.done = finished or appended[-1] == self._stop
            row.done = row.done or len(row.tokens) >= self._max_new_tokens
            if not row.done:
                row.path = self._memo.child(row.path, tuple(appended))
                advancing.append((row.index, appended))
        depth = 0
        while advancing:  # batched across rows, one token depth at a time
            matchers.accept([r for r, _ in advancing], [t[depth] for _, t in advancing])
            depth += 1
            advancing = [(r, t) for r, t in advancing if depth < len(t)]
