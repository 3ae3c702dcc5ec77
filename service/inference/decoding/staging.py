"""Host buffers that feed the device without blocking: reused, grown, pinned on CUDA.

A host-to-device copy from ordinary (pageable) memory blocks the host until the copy is
done; from pinned memory, ``non_blocking=True`` only queues it. Pinned allocations are
slow, so a buffer is kept and reused across steps and batches, and grown (doubling) when
a larger one is needed. The caller must not rewrite a buffer while a copy from it may be
in flight: the jump-forward loop rewrites its buffers only after the step's
device-to-host transfer, which the device runs after every copy queued before it.
"""

from __future__ import annotations

import numpy as np
import torch


class HostBuffer:
    """One growable host buffer of ``dtype``, written through numpy, uploaded by torch."""

    def __init__(self, dtype: type[np.generic]) -> None:
        self._array: np.ndarray = np.zeros(0, dtype)
        self._tensor = torch.from_numpy(self._array)
        self._pinned = False

    def take(self, size: int, device: torch.device) -> np.ndarray:
        """The first ``size`` elements, to be written on the host (contents undefined)."""
        pin = device.type == "cuda"
        if size > self._array.size or pin != self._pinned:
            capacity = max(size, 2 * self._array.size, 1024)
            if pin:
                self._tensor = torch.empty(capacity, dtype=self._tensor.dtype, pin_memory=True)
                self._array = self._tensor.numpy()
            else:  # plain host memory: numpy's own, shared with torch
                self._array = np.empty(capacity, self._array.dtype)
                self._tensor = torch.from_numpy(self._array)
            self._pinned = pin
        return self._array[:size]

    def upload(self, size: int, device: torch.device) -> torch.Tensor:
        """The first ``size`` elements on ``device``: the buffer itself on CPU, else a
        queued copy (it has to be pinned for that, which :meth:`take` ensured)."""
        host = self._tensor[:size]
        return host if device.type == "cpu" else host.to(device, non_blocking=True)
