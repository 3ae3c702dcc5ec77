"""The rows of a jump-forward decode: each one's state, the set running now, a step's parts.

A :class:`RunningSet` persists from one decoder step to the next, so rows can join (the
iteration-level scheduler encodes arrivals between steps) and leave (finished, cancelled or
expired) at any step; static batching is the special case where all rows join at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers.cache_utils import EncoderDecoderCache

from service.inference.decoding.constrained import RowMatchers
from service.inference.decoding.drafting import StepMemo, StepPlan
from service.inference.decoding.florence import EncoderState


@dataclass(slots=True)
class DecodedRow:
    """One row's output after the decoder start token: ``<s>``, grammar tokens, ``</s>``."""

    tokens: list[int]
    logprobs: list[float]  # one per token after ``<s>``, under the grammar-masked distribution
    forward_passes: int


@dataclass(slots=True)
class Row:
    index: int  # position in the caller's batch (and of its grammar matcher)
    tokens: list[int]
    pending: list[int]  # committed tokens not yet in the KV cache: the next block's head
    logprobs: list[float] = field(default_factory=list)
    cached: int = 0  # valid KV entries, i.e. the slot and position of the next fed token
    passes: int = 0
    done: bool = False
    path: int = StepMemo.ROOT  # the tokens so far, interned (see StepMemo)
    synced: int = 1  # tokens[:synced] are in the matcher (the grammar starts after <s>)


@dataclass(slots=True)
class RunningSet:
    """The rows decoding now, in KV-cache batch order, with their cache, encoder outputs
    and grammar matchers: what persists from one step to the next."""

    matchers: RowMatchers
    device: torch.device
    live: list[Row] = field(default_factory=list)
    cache: EncoderDecoderCache | None = None
    encoder: EncoderState | None = None


@dataclass(slots=True)
class Plan:
    """One row's part of a step: what it feeds (``len(fed) + 1`` positions verify it).
    The memoized plan is always the whole draft's; a cut step uses a prefix of it."""

    row: Row
    draft: tuple[int, ...]  # the draft without a forced stop token (that one is verified only)
    step: StepPlan | None  # None until a memo miss is explored, after the block's launch
    fed: tuple[int, ...] = ()  # what this step feeds of ``draft``: all of it, or a prefix

    def __post_init__(self) -> None:
        self.fed = self.draft


@dataclass(slots=True)
class Block:
    """A step's inputs on the device, and how many positions verify each row."""

    tokens: torch.Tensor  # (B, W) right-padded
    slots: torch.Tensor  # (B, W) the cache slot of each token; the sink for padding
    offsets: torch.Tensor  # (B,) each row's first slot
    gather: torch.Tensor  # (checks,) flat B * W index of every verified position
    length: int  # cache entries the block reaches
    verified: list[int]  # each row's verified positions (its rows of logits): len(fed) + 1
