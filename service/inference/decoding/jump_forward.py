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

1. host: each row's forced string from its matcher, its draft (memoized), the mask-slot
   layout; the block's inputs written into one pinned host buffer;
2. one non-blocking host-to-device copy of that buffer; the decoder block is queued;
3. host, **while the device runs the block**: xgrammar fills the verification masks (one
   per draft position, batched across rows), walking each matcher through its draft;
4. one non-blocking copy of the masks; LM head on the verified positions, mask, argmax
   and log-probabilities queued;
5. **the step's one device-to-host transfer**: every verified position's choice and
   log-probability in one tensor. The host then commits (accepts up to the first
   mismatch, rolls the matchers back) and drops finished rows.

Step ``t + 1``'s masks cannot be filled during step ``t``: they depend on the tokens step
``t`` chooses. Pinned buffers are rewritten only after the step's transfer, which orders
after every copy queued from them, so one buffer of each kind suffices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from service.inference.decoding.constrained import RowMatchers, masked_scores
from service.inference.decoding.drafting import FRONTIER_TOKENS, Drafter
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


@dataclass(slots=True)
class _Plan:
    """One row's part of a step: its draft and the mask slots that verify it."""

    row: _Row
    draft: list[int]
    first: int  # mask/logit slot of the first verified position; len(draft) + 1 follow
    ends: bool = False  # the draft ends with the (forced) stop token


class JumpForwardDecoder:
    """Batched constrained greedy decoding over Florence-2 with forced-run skipping.

    One decoder serves one thread at a time (the engine's): it keeps its host buffers
    and its draft memo across calls.
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
        self.last_steps = 0  # forward passes of the last decode() call, for benchmarks

    @torch.inference_mode()
    def decode(
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
            bitmask = self._verification_masks(matchers, plans, device)  # overlaps the block
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
        """Each row's draft, within its token budget, and its mask slots (row-major)."""
        plans: list[_Plan] = []
        first = 0
        for row in live:
            room = self._max_new_tokens - len(row.tokens) - 1  # leave room for the model's pick
            forced = matchers.matchers[row.index].find_jump_forward_string() if room > 0 else ""
            draft: list[int] = []
            if forced:
                frontier = tuple(row.tokens[max(1, len(row.tokens) - FRONTIER_TOKENS) :])
                draft = list(self._drafter.draft(frontier, str(forced))[:room])
            plans.append(_Plan(row, draft, first))
            first += len(draft) + 1
        return plans

    def _block(
        self, plans: list[_Plan], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """This step's inputs, assembled on the host and copied once, without blocking.

        Tokens (B, W) right-padded; the cache slot of each (the row's next slots, the
        sink for padding); each row's offset; the flat (B * W) index of every verified
        position in mask-slot order; and how many cache entries the block reaches.
        """
        batch = len(plans)
        blocks = [p.row.pending + p.draft for p in plans]  # drafts hold no stop token yet
        width = max(len(b) for b in blocks)
        checks = sum(len(p.draft) + 1 for p in plans)
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
            gather[plan.first : plan.first + len(plan.draft) + 1] = np.arange(
                head, head + len(plan.draft) + 1
            )
            length = max(length, cached + fed)
        moved = self._inputs.upload(size, device)
        return (
            moved[: batch * width].view(batch, width),
            moved[batch * width : 2 * batch * width].view(batch, width),
            moved[2 * batch * width : 2 * batch * width + batch],
            moved[2 * batch * width + batch :],
            length,
        )

    def _verification_masks(
        self, matchers: RowMatchers, plans: list[_Plan], device: torch.device
    ) -> torch.Tensor:
        """Fill one mask per verified position (batched across rows, depth by depth) and
        copy them to the device without blocking.

        Each matcher walks its draft while its masks are filled; :meth:`_commit` rolls
        back what the model rejects. A draft whose end completes the grammar gets the stop
        token appended, as the mask there allows nothing else.
        """
        total = sum(len(p.draft) + 1 for p in plans)
        words = self._stop_only.shape[0]
        host = self._masks.take(total * words, device).reshape(total, words)
        bitmask = torch.from_numpy(host)
        walking = list(plans)
        depth = 0
        while walking:
            matchers.fill([p.row.index for p in walking], [p.first + depth for p in walking],
                          bitmask)  # fmt: skip
            advancing = [p for p in walking if depth < len(p.draft)]
            matchers.accept([p.row.index for p in advancing], [p.draft[depth] for p in advancing])
            walking = advancing
            depth += 1
        for plan in plans:
            room = self._max_new_tokens - len(plan.row.tokens) - len(plan.draft)
            matcher = matchers.matchers[plan.row.index]
            last = host[plan.first + len(plan.draft)]
            if room > 0 and matcher.is_completed() and np.array_equal(last, self._stop_only):
                matchers.accept([plan.row.index], [self._stop])
                plan.draft.append(self._stop)
                plan.ends = True
        return self._masks.upload(total * words, device).view(total, words)

    def _commit(
        self,
        matchers: RowMatchers,
        plans: list[_Plan],
        choices: list[float],
        logprobs: list[float],
    ) -> None:
        """Accept each draft up to its first mismatch, take the model's pick there."""
        picks: list[tuple[int, int]] = []
        for plan in plans:
            row, draft, base = plan.row, plan.draft, plan.first
            accepted = 0
            while accepted < len(draft) and choices[base + accepted] == draft[accepted]:
                accepted += 1
            row.passes += 1
            fed = accepted - 1 if plan.ends and accepted == len(draft) else accepted
            row.cached += len(row.pending) + fed  # the stop token is verified, never fed
            row.tokens.extend(draft[:accepted])
            row.logprobs.extend(logprobs[base : base + accepted])
            matchers.matchers[row.index].rollback(len(draft) - accepted)
            if plan.ends and accepted == len(draft):
                row.done = True
                continue
            pick = int(choices[base + accepted])
            row.tokens.append(pick)
            row.logprobs.append(logprobs[base + accepted])
            row.pending = [pick]
            picks.append((row.index, pick))
            row.done = pick == self._stop or len(row.tokens) >= self._max_new_tokens
        matchers.accept([r for r, _ in picks], [t for _, t in picks])
