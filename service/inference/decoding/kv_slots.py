"""A self-attention KV cache preallocated per batch, where each row writes at its own slots.

The jump-forward loop appends blocks of different lengths per row, right-padded to the
widest, and the model may reject part of a row's draft. Appending every block to a
growing cache (``DynamicCache``) keeps the padding and the rejected entries forever, hidden
by a key mask, and copies every layer's whole cache at every step (``torch.cat``). Here
each row's entries are compact: a row that has ``c`` valid entries writes its next block at
slots ``c, c + 1, ...``, so rejected entries are simply overwritten by the next block, and
padding goes to one spare slot that no query ever sees. Memory is allocated once per
batch: ``capacity`` entries per row, never more.

Which slots a block writes is set once per step (:meth:`place`), before the decoder call;
every layer's :meth:`update` then scatters its new keys and values there (on the device,
no host sync) and returns the first ``length`` entries of every row.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache


class SlotCache(Cache):
    """``capacity`` self-attention entries per row and layer, the last one a padding sink."""

    def __init__(self, batch: int, capacity: int) -> None:
        super().__init__(layers=[])
        self.capacity = capacity
        self._batch = batch
        self._keys: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []
        self._rows: torch.Tensor | None = None  # (B, 1) batch index of each written entry
        self._slots: torch.Tensor | None = None  # (B, W) slot of each written entry
        self._length = 0

    @property
    def sink(self) -> int:
        """The slot padding is written to; beyond every row's valid entries."""
        return self.capacity - 1

    def place(self, slots: torch.Tensor, length: int) -> None:
        """This step's block goes to ``slots`` (B, W, on the cache's device); attention then
        reads the first ``length`` entries of every row."""
        if not 0 < length < self.capacity:
            raise ValueError(f"a block reaching entry {length} overflows {self.capacity}")
        if self._rows is None or self._rows.shape[0] != slots.shape[0]:
            self._rows = torch.arange(slots.shape[0], device=slots.device).unsqueeze(1)
        self._slots = slots
        self._length = length

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        if self._slots is None or self._rows is None:
            raise RuntimeError("SlotCache.place() must run before the decoder call")
        while len(self._keys) <= layer_idx:
            batch, heads, _, dim = key_states.shape
            shape = (batch, heads, self.capacity, dim)
            # Zeros, not empty: unwritten entries are read (and masked out), never NaN.
            self._keys.append(key_states.new_zeros(shape))
            self._values.append(value_states.new_zeros(shape))
        keys, values = self._keys[layer_idx], self._values[layer_idx]
        # (B, H, W, D) -> entries [b, :, slots[b, w]]: advanced indexing puts (B, W) first.
        keys[self._rows, :, self._slots] = key_states.transpose(1, 2)
        values[self._rows, :, self._slots] = value_states.transpose(1, 2)
        return keys[:, :, : self._length], values[:, :, : self._length]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._length

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._batch = int(indices.shape[0])
        self._keys = [k.index_select(0, indices) for k in self._keys]
        self._values = [v.index_select(0, indices) for v in self._values]
        self._rows = None

    def add_rows(self, count: int) -> None:
        """``count`` new rows after the others (rows joining between steps), empty."""
        self._batch += count
        for layer, (keys, values) in enumerate(zip(self._keys, self._values, strict=True)):
            self._keys[layer] = torch.cat((keys, keys.new_zeros((count, *keys.shape[1:]))))
            self._values[layer] = torch.cat((values, values.new_zeros((count, *values.shape[1:]))))
        self._rows = None

    def reserved_bytes(self) -> int:
        """Bytes held by the preallocated entries (every layer, keys and values)."""
        return sum(t.numel() * t.element_size() for t in (*self._keys, *self._values))
