"""A jump-forward step's decoder block: how wide it is, and its inputs for every row.

Each row feeds its pending head (committed tokens not yet in the KV cache) and what it
feeds of its draft; the block is the (rows x width) grid of those, right-padded, with
each token's cache slot, each row's first slot, and the flat index of every position the
step verifies. :func:`block_width` keeps a few rows' long forced runs from widening every
row's block; :func:`assemble_block` writes the grid on the host for all rows at once and
copies it to the device once, without blocking (:mod:`.jump_forward` explains the step).
"""

from __future__ import annotations

import operator
from typing import Final

import numpy as np
import torch

from service.inference.decoding.rows import Block, Plan
from service.inference.decoding.staging import HostBuffer

__all__ = ["MAX_PADDING_SHARE", "assemble_block", "block_width"]

#: The most of a step's (rows x width) grid that padding may fill: wider rows are cut.
MAX_PADDING_SHARE: Final = 0.5


def block_width(lengths: list[int], least: int) -> int:
    """This step's block width for rows that would feed ``lengths`` positions: the widest
    whose padding fills at most :data:`MAX_PADDING_SHARE` of the (rows x width) grid, and
    never below ``least`` (the widest head of committed tokens, which cannot be cut).

    A pass costs in part in proportion to the positions it computes, padding included, so
    a few rows' long forced run must not widen every row's block. A cut draft changes no
    output (drafts are guesses the model verifies) and often costs no pass: rows fall out
    of step where one value takes a token more than another, and a cut row feeds the rest
    of its run next step, beside the others' runs, which brings the batch back in step.
    """
    widest = max(lengths)
    if widest == min(lengths):
        return widest
    batch = len(lengths)
    for width in sorted({length for length in lengths if length > least}, reverse=True):
        padding = batch * width - sum(min(length, width) for length in lengths)
        if padding <= MAX_PADDING_SHARE * batch * width:
            return width
    return least


def assemble_block(
    plans: list[Plan],
    buffer: HostBuffer,
    columns: np.ndarray,
    pad: int,
    sink: int,
    device: torch.device,
) -> Block:
    """This step's inputs in ``buffer`` (pinned on CUDA), copied once without blocking.
    Each row's block is a prefix of its row of the (B, W) grid, so a (B, W) mask of those
    prefixes places every row's tokens in one assignment; padding feeds ``pad`` into the
    cache's ``sink`` slot. ``columns`` is ``arange`` at least as long as any block."""
    batch = len(plans)
    # Sizes in plain Python (numpy's reductions cost more than these short loops).
    heads = [len(p.row.pending) for p in plans]
    lengths = [head + len(p.fed) for head, p in zip(heads, plans, strict=True)]
    cached = [p.row.cached for p in plans]
    width, total = max(lengths), sum(lengths)
    checks = total - sum(heads) + batch  # len(fed) + 1 verified positions per row
    size = 2 * batch * width + batch + checks
    host = buffer.take(size, device)
    tokens = host[: batch * width].reshape(batch, width)
    slots = host[batch * width : 2 * batch * width].reshape(batch, width)
    offsets, gather = host[2 * batch * width : 2 * batch * width + batch], host[-checks:]
    columns = columns[:width]
    starts = np.array(cached)[:, None]
    inside = columns < np.array(lengths)[:, None]
    fed = [token for p in plans for part in (p.row.pending, p.fed) for token in part]
    tokens.fill(pad)
    tokens[inside] = fed  # row-major: row by row, in order
    np.add(starts, columns, out=slots)
    slots[~inside] = sink
    offsets[:] = cached
    # Row b's verified positions: its last pending token (which predicts draft[0])
    # through the end of its block; in row-major order, as the mask slots are.
    heads_at = np.array(heads)[:, None] - 1
    gather[:] = np.flatnonzero(inside & (columns >= heads_at))
    moved = buffer.upload(size, device)
    return Block(
        moved[: batch * width].view(batch, width),
        moved[batch * width : 2 * batch * width].view(batch, width),
        moved[2 * batch * width : 2 * batch * width + batch],
        moved[2 * batch * width + batch :],
        max(map(operator.add, cached, lengths)),
        [len(p.fed) + 1 for p in plans],
    )
