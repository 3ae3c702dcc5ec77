"""The jump-forward loop's host side: the batch-64 oracle, one device read per step,
drafts that never re-tokenize a prefix, a KV cache that does not grow, the packed mask.

The oracle and the read count run the real loop on the random-weight demo model (drafts
are rejected mid-way there, so backing off is covered); the reference is transformers'
``generate`` with xgrammar's own logits processor, in float32.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import xgrammar as xgr
from torch.overrides import TorchFunctionMode

from model_store.loading import LoadedModel
from service.inference.decoding.constrained import (
    allowed_ids,
    allowed_scores,
    apply_bitmask,
    masked_scores,
)
from service.inference.decoding.drafting import StepPlan
from service.inference.decoding.florence import EncoderState, Florence2Stepper
from service.inference.decoding.jump_forward import JumpForwardDecoder, block_width
from service.inference.decoding.kv_slots import SlotCache
from tests.service.inference.decoding.test_jump_forward import MAX_NEW_TOKENS, Case
from tests.service.inference.decoding.test_property import random_image

#: Tensor methods that read a tensor's values back to the host (a device sync on CUDA).
HOST_READS = frozenset(
    {"tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__",
     "equal", "nonzero", "all", "any"}
)  # fmt: skip


@pytest.fixture(scope="module")
def case_64(demo_loaded: LoadedModel) -> Case:
    return Case(demo_loaded, [random_image(7000 + i, i % 3) for i in range(64)])


def decoder_for(case: Case, stepper: Any = None) -> JumpForwardDecoder:
    return JumpForwardDecoder(
        stepper or Florence2Stepper(case.model), case.grammar, case.tokenizer,
        start_id=2, bos_id=0, pad_id=1, max_new_tokens=MAX_NEW_TOKENS,
    )  # fmt: skip


@pytest.mark.slow
def test_batch_of_64_matches_constrained_generate(case_64: Case) -> None:
    everything = slice(0, 64)
    expected, logprobs = case_64.constrained(everything)
    decoder = decoder_for(case_64)
    got = decoder.decode(*case_64.rows(everything))
    assert len({len(r) for r in expected}) >= 3, "rows must finish at different steps"
    assert decoder.last_cuts > 0, "some steps must cut long drafts to a narrower block"
    assert [row.tokens for row in got] == expected
    for row, reference in zip(got, logprobs, strict=True):
        np.testing.assert_allclose(row.logprobs, reference[: len(row.tokens) - 1], atol=1e-6)


class HostReadCounter(TorchFunctionMode):
    """Counts tensor reads back to the host, except while ``paused``."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []
        self.paused = False

    def __torch_function__(
        self, func: Any, types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:  # fmt: skip
        name = getattr(func, "__name__", "")
        if not self.paused and name in HOST_READS:
            self.reads.append(name)
        return func(*args, **(kwargs or {}))


class EncoderUncounted:
    """The real stepper; the encoder (the vision tower, run once per batch) is not counted."""

    def __init__(self, inner: Florence2Stepper, counter: HostReadCounter) -> None:
        self._inner, self._counter = inner, counter

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def encode(self, *args: Any) -> EncoderState:
        self._counter.paused = True
        try:
            return self._inner.encode(*args)
        finally:
            self._counter.paused = False


@pytest.mark.slow
def test_one_host_read_per_step_and_drafts_from_frontier_and_memo(
    case_64: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = HostReadCounter()
    decoder = decoder_for(case_64, EncoderUncounted(Florence2Stepper(case_64.model), counter))
    lengths: list[int] = []
    real_encode = case_64.tokenizer.backend_tokenizer.encode

    def encode(text: str, **kwargs: Any) -> Any:
        lengths.append(len(text))
        return real_encode(text, **kwargs)

    decoder._drafter._encode = encode  # observe the tokenizer calls of this decoder only
    decoder.decode(*case_64.rows(slice(0, 4)))  # host buffers are allocated once per decoder
    misses = decoder._memo.misses
    inputs = case_64.rows(slice(24, 32))  # rows of three different lengths
    with counter:  # other images: step plans are mostly computed, not found in the memo
        first = decoder.decode(*inputs)
    assert decoder._memo.misses > misses + 8
    assert decoder.last_steps > 5
    assert len({len(r.tokens) for r in first}) >= 2  # rows left the batch on the way
    assert len(counter.reads) <= decoder.last_steps, counter.reads
    vocab = case_64.grammar.tokenizer_info.decoded_vocab
    longest_text = max(len(b"".join(vocab[t] for t in r.tokens[1:-1])) for r in first)
    assert lengths
    assert max(lengths) < 60 < longest_text  # drafts never re-tokenize the whole prefix
    calls, misses = len(lengths), decoder._memo.misses
    built: list[object] = []

    class CountedMatcher(xgr.GrammarMatcher):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(xgr, "GrammarMatcher", CountedMatcher)
    again = decoder.decode(*inputs)
    assert [r.tokens for r in again] == [r.tokens for r in first]
    # The same rows again: every step plan from the memo, no tokenizer or grammar work,
    # not even a grammar matcher built.
    assert len(lengths) == calls
    assert decoder._memo.misses == misses
    assert not built
    decoder._memo = type(decoder._memo)()  # a cold memo: the loop needs its matchers again
    assert [r.tokens for r in decoder.decode(*inputs)] == [r.tokens for r in first]
    assert len(built) == len(first)


def test_slot_cache_overwrites_rejected_entries_and_sinks_padding() -> None:
    cache = SlotCache(batch=2, capacity=6)
    keys = torch.arange(2 * 3, dtype=torch.float32).view(2, 1, 3, 1)  # (B, H, W, D)
    # Row 0 writes 3 entries at 0..2; row 1 writes 1 entry at 0, its padding to the sink.
    cache.place(torch.tensor([[0, 1, 2], [0, 5, 5]]), length=3)
    got, _ = cache.update(keys, keys, 0)
    assert got.shape == (2, 1, 3, 1)
    assert got[0, 0, :, 0].tolist() == [0.0, 1.0, 2.0]
    assert got[1, 0, :1, 0].tolist() == [3.0]
    # Row 0 kept only one of them: its next block overwrites slots 1 and 2.
    cache.place(torch.tensor([[1, 2, 5], [1, 2, 3]]), length=4)
    got, _ = cache.update(keys + 10, keys + 10, 0)
    assert got[0, 0, :3, 0].tolist() == [0.0, 10.0, 11.0]
    assert got[1, 0, :4, 0].tolist() == [3.0, 13.0, 14.0, 15.0]
    before = cache.reserved_bytes()
    assert before == 2 * (2 * 1 * 6 * 1) * 4  # keys and values, preallocated once
    with pytest.raises(ValueError, match="overflows"):
        cache.place(torch.tensor([[5]]), length=6)
    cache.batch_select_indices(torch.tensor([1]))  # row 0 finished
    cache.place(torch.tensor([[4]]), length=5)
    got, _ = cache.update(keys[1:, :, :1] + 20, keys[1:, :, :1] + 20, 0)
    assert got[0, 0, :, 0].tolist() == [3.0, 13.0, 14.0, 15.0, 23.0]


def test_packed_mask_matches_the_bit_by_bit_mask() -> None:
    rng = np.random.default_rng(0)
    vocab, rows = 621, 5
    words = (vocab + 31) // 32
    bitmask = torch.from_numpy(rng.integers(-(2**31), 2**31, (rows, words), dtype=np.int64))
    bitmask = bitmask.to(torch.int32)
    logits = torch.randn(rows, vocab)
    expected = logits.clone()
    bits = [[(int(bitmask[r, t // 32]) >> (t % 32)) & 1 for t in range(vocab)] for r in range(rows)]
    expected[torch.tensor(bits) == 0] = float("-inf")
    apply_bitmask(logits, bitmask)
    assert torch.equal(logits, expected)


def test_allowed_ids_choose_and_score_as_the_vocabulary_mask() -> None:
    rng = np.random.default_rng(1)
    vocab, rows = 621, 64
    words = (vocab + 31) // 32
    bitmask = np.zeros((rows, words), dtype=np.int32)
    allowed_sets = [
        rng.choice(vocab, size=int(rng.integers(1, 40)), replace=False) for _ in range(rows)
    ]
    for row, tokens in enumerate(allowed_sets):
        for token in tokens:
            bitmask.view(np.uint32)[row, token // 32] |= np.uint32(1 << (token % 32))
    bitmask[:, -1] |= np.int32(-(2**31))  # bits past the vocabulary are never allowed ids
    ids, counts = allowed_ids(bitmask, vocab)
    assert counts.tolist() == [len(s) for s in allowed_sets]
    bounds = np.concatenate(([0], np.cumsum(counts)))
    assert all(
        ids[bounds[r] : bounds[r + 1]].tolist() == sorted(s) for r, s in enumerate(allowed_sets)
    )
    # Coarse logits make ties between allowed ids common: both must pick the lowest id.
    logits = torch.from_numpy(rng.integers(-3, 3, (rows, vocab)).astype(np.float32))
    width = int(counts.max())
    grid = np.zeros((rows, width), dtype=np.int64)
    inside = np.arange(width) < counts[:, None]
    grid[inside] = ids
    at, probability = allowed_scores(logits, torch.from_numpy(grid), torch.from_numpy(~inside))
    choice, logprob = masked_scores(logits.clone(), torch.from_numpy(bitmask))
    assert grid[np.arange(rows), at.numpy()].tolist() == choice.tolist()
    np.testing.assert_allclose(np.log(probability.double().numpy()), logprob.numpy(), atol=1e-6)


def test_block_width_keeps_padding_under_half_the_grid() -> None:
    assert block_width([3, 3, 3], least=1) == 3  # no padding: nothing to cut
    # 43 rows choose a value (1 position) while 21 feed a 7-token key: 58% padding at 7.
    assert block_width([1] * 43 + [7] * 21, least=1) == 1
    assert block_width([1] * 21 + [7] * 43, least=1) == 7  # 28% padding: kept
    assert block_width([1, 2, 2, 9], least=1) == 2  # 9 would be 61% padding, 2 is 12%
    assert block_width([2, 2, 9, 9], least=2) == 9  # exactly half
    assert block_width([2, 2, 2, 9], least=2) == 2  # never below the widest head
    for lengths in ([1] * 43 + [7] * 21, [1, 5, 5, 6], [2, 3, 9, 9, 9, 1]):
        width = block_width(lengths, least=1)
        padding = len(lengths) * width - sum(min(n, width) for n in lengths)
        assert padding <= len(lengths) * width / 2


def test_cut_step_plan_is_a_prefix_of_the_whole_one() -> None:
    counts = np.array([1, 2, 1, 3])
    allowed = np.array([5, 6, 7, 8, 9, 10, 11])
    ends = StepPlan.of((5, 7, 8, 2), allowed, counts, ends=True)  # the stop is verified only
    assert ends.fed == (5, 7, 8)
    cut = ends.cut(1)
    assert (cut.draft, cut.fed, cut.expected, cut.ends) == ((5,), (5,), (5, -1), False)
    assert cut.counts.tolist() == [1, 2]
    assert cut.allowed.tolist() == [5, 6, 7]
    assert cut.widest == 2
    assert ends.cut(3) is ends
    assert ends.cut(0).expected == (-1,)
