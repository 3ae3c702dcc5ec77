"""Jump-forward decoding: grammar-forced text costs no decoder pass of its own.

Each step, every row feeds one block: the token chosen last step, then a *draft*: the
canonical tokenization of the text the grammar forces next (keys, punctuation, the rest of
an unambiguous value). One forward pass scores every block position, and the draft is
verified the way greedy decoding would have produced it: position ``j``'s grammar-masked
argmax must equal draft token ``j``. The first mismatch is not wasted (the argmax there
is the row's next token), and rejected draft entries are hidden from later steps. So the
output is token-for-token what constrained greedy ``generate`` produces, for any weights,
including where a model tokenizes forced text differently than the tokenizer would.

Drafts are tokenized in context (the text so far plus the forced text), because a forced
string can tokenize differently alone than after what precedes it; if the row's tokens so
far are not that canonical prefix, the forced string alone is the draft instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from service.inference.decoding.constrained import RowMatchers, masked_scores
from service.inference.decoding.florence import Florence2Stepper
from service.inference.decoding.grammar import SchemaGrammar


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
    text: bytearray = field(default_factory=bytearray)
    cached: int = 0  # valid KV entries, i.e. the position of the next fed token
    passes: int = 0
    done: bool = False


@dataclass(slots=True)
class _Plan:
    """One row's part of a step: its draft and the mask slots that verify it."""

    row: _Row
    draft: list[int]
    checks: list[int] = field(default_factory=list)  # bitmask/logit slot per verified position
    ends: bool = False  # the draft ends with the (forced) stop token


class JumpForwardDecoder:
    """Batched constrained greedy decoding over Florence-2 with forced-run skipping."""

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
        self._encode = tokenizer.backend_tokenizer.encode
        self._token_bytes: list[bytes] = list(grammar.tokenizer_info.decoded_vocab)
        self._start, self._bos, self._pad = start_id, bos_id, pad_id
        self._stop = grammar.stop_token_ids[0]
        self._max_new_tokens = max_new_tokens
        self.last_steps = 0  # forward passes of the last decode() call, for benchmarks

    @torch.inference_mode()
    def decode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> list[DecodedRow]:
        device = input_ids.device
        encoder = self._stepper.encode(input_ids, attention_mask, pixel_values)
        cache = self._stepper.new_cache()
        batch = input_ids.shape[0]
        matchers = RowMatchers(self._grammar, batch, device)
        rows = [_Row(i, [self._bos], [self._start, self._bos]) for i in range(batch)]
        live = list(rows)  # the rows in KV-cache batch order; finished rows leave the cache
        key_mask = torch.zeros((batch, 0), dtype=torch.long, device=device)
        self.last_steps = 0
        while live:
            plans = [_Plan(row, self._draft(matchers, row)) for row in live]
            bitmask = self._verification_masks(matchers, plans)
            tokens, positions, valid = self._block(plans, device)
            key_mask = torch.cat([key_mask, valid], dim=1)
            hidden = self._stepper.decode(cache, encoder, tokens, positions, key_mask)
            self.last_steps += 1
            slots, offsets = self._check_positions(plans, device)
            logits = self._stepper.logits(hidden[slots, offsets])
            choices, logprobs = masked_scores(logits, matchers.on_device(bitmask))
            kept = self._commit(matchers, plans, choices.tolist(), logprobs.tolist())
            # Padding and rejected drafts stay in the cache, hidden from every later query.
            width = tokens.shape[1]
            visible = (
                torch.arange(width, device=device) < torch.tensor(kept, device=device)[:, None]
            )
            key_mask[:, key_mask.shape[1] - width :] *= visible
            keep = [slot for slot, plan in enumerate(plans) if not plan.row.done]
            if len(keep) < len(plans):
                selected = torch.tensor(keep, dtype=torch.long, device=device)
                cache.batch_select_indices(selected)
                encoder = encoder.select(selected)
                key_mask = key_mask.index_select(0, selected)
                live = [live[slot] for slot in keep]
        return [DecodedRow(r.tokens, r.logprobs, r.passes) for r in rows]

    def _draft(self, matchers: RowMatchers, row: _Row) -> list[int]:
        """Canonical tokens of the grammar-forced text, within the row's token budget."""
        room = self._max_new_tokens - len(row.tokens) - 1  # leave room for the model's pick
        forced = str(matchers.matchers[row.index].find_jump_forward_string())
        if not forced or room <= 0:
            return []
        emitted = row.tokens[1:]
        try:
            prefix: str | None = row.text.decode()
        except UnicodeDecodeError:  # the text so far ends inside a character
            prefix = None
        if prefix is not None:
            in_context: list[int] = self._encode(prefix + forced, add_special_tokens=False).ids
            if in_context[: len(emitted)] == emitted:
                return in_context[len(emitted) :][:room]
        alone: list[int] = self._encode(forced, add_special_tokens=False).ids
        return alone[:room]

    def _verification_masks(self, matchers: RowMatchers, plans: list[_Plan]) -> torch.Tensor:
        """Fill one mask per verified position (batched across rows, position by position).

        Each matcher walks its draft while its masks are filled; :meth:`_commit` rolls
        back what the model rejects. A draft whose end completes the grammar gets the stop
        token appended, as the mask there allows nothing else.
        """
        total = sum(len(p.draft) + 1 for p in plans)
        bitmask = matchers.bitmask(total)
        next_slot = 0
        depth = 0
        walking = list(plans)
        while walking:
            slots = list(range(next_slot, next_slot + len(walking)))
            next_slot += len(walking)
            matchers.fill([p.row.index for p in walking], slots, bitmask)
            for plan, slot in zip(walking, slots, strict=True):
                plan.checks.append(slot)
            advancing = [p for p in walking if depth < len(p.draft)]
            matchers.accept([p.row.index for p in advancing], [p.draft[depth] for p in advancing])
            walking = advancing
            depth += 1
        for plan in plans:
            room = self._max_new_tokens - len(plan.row.tokens) - len(plan.draft)
            matcher = matchers.matchers[plan.row.index]
            if room > 0 and matcher.is_completed() and self._only_stop(bitmask[plan.checks[-1]]):
                matchers.accept([plan.row.index], [self._stop])
                plan.draft.append(self._stop)
                plan.ends = True
        return bitmask[:next_slot]

    def _only_stop(self, mask_row: torch.Tensor) -> bool:
        bits = np.unpackbits(mask_row.numpy().view(np.uint8), bitorder="little")
        return bool(bits.sum() == 1 and bits[self._stop] == 1)

    def _block(
        self, plans: list[_Plan], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokens, per-row positions and validity of this step's blocks, right-padded."""
        blocks = [p.row.pending + (p.draft[:-1] if p.ends else p.draft) for p in plans]
        width = max(len(b) for b in blocks)
        tokens = torch.full((len(plans), width), self._pad, dtype=torch.long)
        valid = torch.zeros((len(plans), width), dtype=torch.long)
        for slot, block in enumerate(blocks):
            tokens[slot, : len(block)] = torch.tensor(block, dtype=torch.long)
            valid[slot, : len(block)] = 1
        cached = torch.tensor([p.row.cached for p in plans], dtype=torch.long)
        positions = cached.unsqueeze(1) + torch.arange(width).unsqueeze(0)
        return tokens.to(device), positions.to(device), valid.to(device)

    @staticmethod
    def _check_positions(
        plans: list[_Plan], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch slot, block offset) of each verified position, in mask-slot order."""
        pairs: list[tuple[int, int, int]] = []
        for slot, plan in enumerate(plans):
            head = len(plan.row.pending) - 1  # the block position that predicts draft[0]
            pairs.extend((check, slot, head + j) for j, check in enumerate(plan.checks))
        pairs.sort()
        slots = torch.tensor([p[1] for p in pairs], dtype=torch.long, device=device)
        offsets = torch.tensor([p[2] for p in pairs], dtype=torch.long, device=device)
        return slots, offsets

    def _commit(
        self,
        matchers: RowMatchers,
        plans: list[_Plan],
        choices: list[int],
        logprobs: list[float],
    ) -> list[int]:
        """Accept each draft up to its first mismatch, take the model's pick there.

        Returns, per batch slot, how many block entries stay visible in the KV cache.
        """
        kept: list[int] = []
        picks: list[tuple[int, int]] = []
        for plan in plans:
            row, draft = plan.row, plan.draft
            accepted = 0
            while accepted < len(draft) and choices[plan.checks[accepted]] == draft[accepted]:
                accepted += 1
            row.passes += 1
            fed = accepted - 1 if plan.ends and accepted == len(draft) else accepted
            kept.append(len(row.pending) + fed)  # the stop token is verified, never fed
            row.cached += len(row.pending) + fed
            for j in range(accepted):
                self._append(row, draft[j], logprobs[plan.checks[j]])
            matchers.matchers[row.index].rollback(len(draft) - accepted)
            if plan.ends and accepted == len(draft):
                row.done = True
                continue
            pick = choices[plan.checks[accepted]]
            self._append(row, pick, logprobs[plan.checks[accepted]])
            row.pending = [pick]
            picks.append((row.index, pick))
            row.done = pick == self._stop or len(row.tokens) >= self._max_new_tokens
        matchers.accept([r for r, _ in picks], [t for _, t in picks])
        return kept

    def _append(self, row: _Row, token: int, logprob: float) -> None:
        row.tokens.append(token)
        row.logprobs.append(logprob)
        if token != self._stop:
            row.text += self._token_bytes[token]
