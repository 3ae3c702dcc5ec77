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
   a miss, its matcher is caught up with the tokens the row appended since it was last
   used, and its forced string and draft computed; the step's block width is chosen so
   that padding fills at most half the grid (:func:`block_width`: the rows with a longer
   draft feed only its start, and the rest next step); the block's inputs are written
   into one pinned host buffer (numpy over all rows at once, no per-row copies);
2. one non-blocking host-to-device copy of that buffer; the decoder block is queued;
3. host, **while the device runs the block**: for memo misses, xgrammar fills the
   verification masks (one per draft position, batched across rows), walking each
   matcher through its draft and back, and the masks become lists of allowed ids; every
   row's allowed ids go into one pinned buffer, where they are padding into another;
4. two non-blocking copies (ids, padding); LM head on the verified positions, then the
   allowed logits gathered, their argmax and softmax queued;
5. **the step's one device-to-host transfer**: every verified position's choice (its
   place among the allowed ids) and probability in one tensor; the host maps places to
   ids and takes the logarithms. It then commits (the first mismatch of every
   row at once, in numpy), extends each row's tokens and path, and drops finished rows
   (one more non-blocking copy: the survivors' index).

A memo hit costs no grammar work at all: its plan already holds what the matcher would
say, and the chosen tokens come from the plan's allowed ids, so they need no check by
the matcher either; the matcher is advanced only when its row next misses the memo.
Step ``t + 1``'s masks cannot be filled during step ``t``: they depend on the tokens step
``t`` chooses. Pinned buffers are rewritten only after the step's transfer, which orders
after every copy queued from them, so one buffer of each kind suffices.
"""

from __future__ import annotations

import threading
from itertools import chain
from typing import Any

import numpy as np
import torch

from service.inference.decoding.blocks import assemble_block, block_width
from service.inference.decoding.constrained import RowMatchers, allowed_ids, allowed_scores
from service.inference.decoding.drafting import FRONTIER_TOKENS, Drafter, StepMemo, StepPlan
from service.inference.decoding.florence import Florence2Stepper
from service.inference.decoding.grammar import SchemaGrammar
from service.inference.decoding.rows import Block, DecodedRow, Plan, Row, RunningSet
from service.inference.decoding.staging import HostBuffer

__all__ = ["DecodedRow", "JumpForwardDecoder", "RunningSet", "block_width"]


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
        self._columns = np.arange(max(self._capacity, grammar.vocab_size))
        self._inputs = HostBuffer(np.int64)
        self._allowed = HostBuffer(np.int64)
        self._padding = HostBuffer(np.bool_)
        self._survivors = HostBuffer(np.int64)
        # Reentrant: decode() runs the same join and step that the scheduler calls alone.
        self._lock = threading.RLock()
        # Of the last decode() call, for tests and benchmarks: its forward passes, the
        # positions they fed (rows x block width, padding included), the drafts cut.
        self.last_steps = self.last_positions = self.last_cuts = 0

    def decode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> list[DecodedRow]:
        with self._lock, torch.inference_mode():
            return self._decode(input_ids, attention_mask, pixel_values)

    def _decode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> list[DecodedRow]:
        run = self.running_set(input_ids.device)
        rows = self._join(run, input_ids, attention_mask, pixel_values)
        self.last_steps = self.last_positions = self.last_cuts = 0
        while run.live:
            self._step(run)
        return [DecodedRow(r.tokens, r.logprobs, r.passes) for r in rows]

    def running_set(self, device: torch.device) -> RunningSet:
        """An empty set of running rows, which rows join and leave between steps."""
        return RunningSet(RowMatchers(self._grammar, 0, device), device)

    def join(
        self,
        run: RunningSet,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
    ) -> list[Row]:
        """Encode new rows and add them to ``run``: they feed ``</s><s>`` at the next step,
        beside the rows already decoding (each row has its own slots and positions)."""
        with self._lock, torch.inference_mode():
            return self._join(run, input_ids, attention_mask, pixel_values)

    def _join(
        self,
        run: RunningSet,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
    ) -> list[Row]:
        encoder = self._stepper.encode(input_ids, attention_mask, pixel_values)
        batch = input_ids.shape[0]
        rows = [Row(i, [self._bos], [self._start, self._bos]) for i in run.matchers.grow(batch)]
        if run.cache is None or run.encoder is None:
            run.cache = self._stepper.new_cache(batch, self._capacity)
            run.encoder = encoder
        else:
            run.cache = self._stepper.add_rows(run.cache, batch)
            run.encoder = run.encoder.extend(encoder)
        run.live.extend(rows)
        return rows

    def leave(self, run: RunningSet, rows: list[Row]) -> None:
        """Drop ``rows`` (finished, cancelled, expired) from ``run`` before the next step."""
        with self._lock, torch.inference_mode():
            self._leave(run, rows)

    def _leave(self, run: RunningSet, rows: list[Row]) -> None:
        gone = {id(row) for row in rows}
        keep = [slot for slot, row in enumerate(run.live) if id(row) not in gone]
        if len(keep) == len(run.live):
            return
        for row in rows:
            run.matchers.release(row.index)
        if not keep:
            run.cache = run.encoder = None
            run.live = []
            return
        assert run.cache is not None
        assert run.encoder is not None
        self._survivors.take(len(keep), run.device)[:] = keep
        selected = self._survivors.upload(len(keep), run.device)
        run.encoder = self._stepper.keep_rows(run.cache, run.encoder, selected)
        run.live = [run.live[slot] for slot in keep]

    def step(self, run: RunningSet) -> list[Row]:
        """One decoder pass for every running row; returns the rows it finished, which have
        left ``run``."""
        with self._lock, torch.inference_mode():
            return self._step(run)

    def _step(self, run: RunningSet) -> list[Row]:
        device, matchers, live = run.device, run.matchers, run.live
        assert run.cache is not None
        assert run.encoder is not None
        plans = self._plan(matchers, live)
        self._cap(plans)
        block = self._block(plans, device)
        hidden = self._stepper.decode(
            run.cache, run.encoder, block.tokens, block.slots, block.offsets, block.length
        )
        self.last_steps += 1
        self.last_positions += block.tokens.numel()
        # On CUDA the block is still running: the grammar work for memo misses overlaps it.
        self._explore(matchers, [plan for plan in plans if plan.step is None])
        for plan in plans:
            if len(plan.fed) < len(plan.draft):
                assert plan.step is not None
                plan.step = plan.step.cut(len(plan.fed))
        ids, allowed, padding = self._allowed_ids(plans, device)
        logits = self._stepper.logits(hidden.flatten(0, 1).index_select(0, block.gather))
        at, probability = allowed_scores(logits, allowed, padding)
        # The step's one device-to-host transfer; positions (< K) are exact in float32.
        picked: list[list[float]] = torch.stack((at.to(torch.float32), probability)).tolist()
        positions = np.asarray(picked[0], dtype=np.int64)
        choices = ids[np.arange(positions.shape[0]), positions]
        logprobs = np.log(np.asarray(picked[1], dtype=np.float64))
        self._commit(plans, block, choices, logprobs.tolist())
        finished = [plan.row for plan in plans if plan.row.done]
        self._leave(run, finished)
        return finished

    def _plan(self, matchers: RowMatchers, live: list[Row]) -> list[Plan]:
        """Each row's draft: from its memoized step plan, else computed from its matcher."""
        steps = [self._memo.get(row.path) for row in live]
        missing = [row for row, step in zip(live, steps, strict=True) if step is None]
        self._catch_up(matchers, missing)
        drafts = iter(self._drafts(matchers, missing))
        return [
            Plan(row, next(drafts) if step is None else step.fed, step)
            for row, step in zip(live, steps, strict=True)
        ]

    @staticmethod
    def _catch_up(matchers: RowMatchers, rows: list[Row]) -> None:
        """Advance each row's matcher by the tokens it appended since it was last used
        (batched across rows, one token depth at a time)."""
        behind = [(row.index, row.tokens[row.synced :]) for row in rows]
        for row in rows:
            row.synced = len(row.tokens)
        depth = 0
        behind = [(r, t) for r, t in behind if t]
        while behind:
            matchers.accept([r for r, _ in behind], [t[depth] for _, t in behind])
            depth += 1
            behind = [(r, t) for r, t in behind if depth < len(t)]

    def _drafts(self, matchers: RowMatchers, rows: list[Row]) -> list[tuple[int, ...]]:
        """Each row's draft within its token budget, leaving room for the model's pick."""
        drafts: list[tuple[int, ...]] = []
        for row in rows:
            room = self._max_new_tokens - len(row.tokens) - 1
            forced = matchers.matcher(row.index).find_jump_forward_string() if room > 0 else ""
            draft: tuple[int, ...] = ()
            if forced:
                frontier = tuple(row.tokens[max(1, len(row.tokens) - FRONTIER_TOKENS) :])
                draft = self._drafter.draft(frontier, str(forced))[:room]
            drafts.append(draft)
        return drafts

    def _cap(self, plans: list[Plan]) -> None:
        """Cut the drafts of rows whose block would be wider than this step's width."""
        heads = [len(p.row.pending) for p in plans]
        lengths = [head + len(p.draft) for head, p in zip(heads, plans, strict=True)]
        width = block_width(lengths, max(heads))
        if width < max(lengths):
            for plan, head, length in zip(plans, heads, lengths, strict=True):
                if length > width:
                    plan.fed = plan.draft[: width - head]
                    self.last_cuts += 1

    def _block(self, plans: list[Plan], device: torch.device) -> Block:
        return assemble_block(plans, self._inputs, self._columns, self._pad,
                              self._capacity - 1, device)  # fmt: skip

    def _explore(self, matchers: RowMatchers, plans: list[Plan]) -> None:
        """Compute and memoize the step plans of memo misses: the allowed tokens of each
        verified position, filled by xgrammar batched across rows, depth by depth, while
        each matcher walks its draft (rolled back after). A draft whose end completes the
        grammar gets the stop token appended, as its mask allows nothing else."""
        if not plans:
            return
        firsts = np.cumsum([0] + [len(p.draft) + 1 for p in plans])
        scratch = np.empty((int(firsts[-1]), self._stop_only.shape[0]), dtype=np.int32)
        bitmask = torch.from_numpy(scratch)
        walking = list(range(len(plans)))
        depth = 0
        while walking:
            matchers.fill([plans[w].row.index for w in walking],
                          [int(firsts[w]) + depth for w in walking], bitmask)  # fmt: skip
            walking = [w for w in walking if depth < len(plans[w].draft)]
            matchers.accept([plans[w].row.index for w in walking],
                            [plans[w].draft[depth] for w in walking])  # fmt: skip
            depth += 1
        ids, counts = allowed_ids(scratch, self._grammar.vocab_size)
        bounds = np.concatenate(([0], np.cumsum(counts)))
        for w, plan in enumerate(plans):
            row, draft = plan.row, plan.draft
            low, high = int(firsts[w]), int(firsts[w + 1])
            matcher = matchers.matcher(row.index)
            room = self._max_new_tokens - len(row.tokens) - len(draft)
            ends = (
                room > 0
                and matcher.is_completed()
                and np.array_equal(scratch[high - 1], self._stop_only)
            )
            matcher.rollback(len(draft))
            plan.step = StepPlan.of(
                (*draft, self._stop) if ends else draft,
                ids[bounds[low] : bounds[high]].copy(),
                counts[low:high].copy(),
                ends,
            )
            self._memo.put(row.path, plan.step)

    def _allowed_ids(
        self, plans: list[Plan], device: torch.device
    ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
        """Every verified position's allowed ids, (checks, K), and where that is padding,
        assembled in host buffers and copied to the device without blocking; the ids are
        also returned as the host array, which stays valid until the next step."""
        steps = [p.step for p in plans]
        assert all(step is not None for step in steps)  # every miss was explored
        counts = np.concatenate([s.counts for s in steps if s is not None])
        ids = np.concatenate([s.allowed for s in steps if s is not None])
        checks, width = counts.shape[0], max(s.widest for s in steps if s is not None)
        host = self._allowed.take(checks * width, device).reshape(checks, width)
        padding = self._padding.take(checks * width, device).reshape(checks, width)
        inside = self._columns[:width] < counts[:, None]
        np.logical_not(inside, out=padding)
        host.fill(0)  # any valid id: padding is masked out
        host[inside] = ids  # row-major: each position's ids in order
        return (
            host,
            self._allowed.upload(checks * width, device).view(checks, width),
            self._padding.upload(checks * width, device).view(checks, width),
        )

    def _commit(
        self, plans: list[Plan], block: Block, choices: np.ndarray, logprobs: list[float]
    ) -> None:
        """Accept each draft up to its first mismatch, take the model's pick there, and
        extend each live row's tokens and path by what it appended."""
        expected = chain.from_iterable(p.step.expected for p in plans if p.step is not None)
        checks = choices.shape[0]
        verified = np.array(block.verified)
        firsts = np.cumsum(verified) - verified
        matched = choices == np.fromiter(expected, np.int64, checks)
        # A row's first mismatch, or the end of its positions where all match.
        candidates = np.where(matched, np.repeat(firsts + verified, verified), np.arange(checks))
        accepted = (np.minimum.reduceat(candidates, firsts) - firsts).tolist()
        picks = choices.tolist()
        for plan, base, count in zip(plans, firsts.tolist(), accepted, strict=True):
            assert plan.step is not None
            row, draft = plan.row, plan.step.draft
            row.passes += 1
            finished = plan.step.ends and count == len(draft)
            row.cached += len(row.pending) + count - finished  # a stop is verified, never fed
            if finished:
                appended = draft[:count]
                row.logprobs.extend(logprobs[base : base + count])
            else:
                pick = picks[base + count]
                appended = (*draft[:count], pick)
                row.logprobs.extend(logprobs[base : base + count + 1])
                row.pending = [pick]
            row.tokens.extend(appended)
            row.done = finished or appended[-1] == self._stop
            row.done = row.done or len(row.tokens) >= self._max_new_tokens
            if not row.done:
                row.path = self._memo.child(row.path, appended)
