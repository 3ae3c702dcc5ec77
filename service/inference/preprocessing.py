"""Florence-2 preprocessing, and getting pixels onto the device before their batch runs.

Two layouts of a prepared image, chosen by the engine per device:

* **CPU**: the preprocessing pool resizes *and* normalizes (float32, 3 x H x W), because
  on CPU the engine thread is the bottleneck and every cycle taken off it is throughput.
* **CUDA**: the pool only resizes (uint8, H x W x 3: a quarter of the bytes), copies the
  pixels through pinned host memory to the GPU on a side stream, and waits for that copy
  *in the pool thread*. The item is resident on the device before it is even queued, so
  the copy overlaps with the batch that is running. The engine then stacks the batch on
  the device and normalizes it there in one vectorized kernel.

Both layouts give the same pixel values as the transformers image processor (tested).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

log = logging.getLogger(__name__)


class PlainTransform:
    """Florence-2's preprocessing (resize, rescale, normalize) in PIL + numpy/torch.

    Identical output to the transformers image processor (tests check it) at a quarter
    less CPU per image, which matters because preprocessing shares the host's cores with
    the HTTP loop. Used only when the processor's configuration is exactly this pipeline.
    """

    def __init__(
        self, size: int, resample: int, scale: float, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        self.size = size
        self.resample = Image.Resampling(resample)
        self._scale = np.float32(scale)
        self._mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
        self._device_stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @classmethod
    def from_processor(cls, processor: Any) -> PlainTransform | None:
        size = getattr(processor, "size", None) or {}
        plain = (
            getattr(processor, "do_resize", False)
            and not getattr(processor, "do_center_crop", False)
            and getattr(processor, "do_rescale", False)
            and getattr(processor, "do_normalize", False)
            and size.get("height") is not None
            and size.get("height") == size.get("width")
        )
        if not plain:
            return None
        return cls(
            int(size["height"]),
            int(processor.resample),
            float(processor.rescale_factor),
            processor.image_mean,
            processor.image_std,
        )

    def resize(self, image: Image.Image) -> npt.NDArray[np.uint8]:
        """The resized RGB pixels, H x W x 3 uint8: what the CUDA path ships to the GPU."""
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return np.asarray(rgb.resize((self.size, self.size), self.resample), dtype=np.uint8)

    def __call__(self, image: Image.Image) -> npt.NDArray[np.float32]:
        """Resized and normalized, 3 x H x W float32: the CPU path's prepared image."""
        pixels = self.resize(image).astype(np.float32).transpose(2, 0, 1) * self._scale
        return np.ascontiguousarray((pixels - self._mean) / self._std, dtype=np.float32)

    def normalize_batch(self, batch: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """B x H x W x 3 uint8 (any device) -> B x 3 x H x W normalized, in ``dtype``.

        The arithmetic runs in float32 on the batch's device, so the values match the CPU
        path before the single cast to the model's dtype.
        """
        mean, std = self._stats_on(batch.device)
        pixels = batch.permute(0, 3, 1, 2).to(torch.float32) * float(self._scale)
        return ((pixels - mean) / std).to(dtype).contiguous(memory_format=torch.contiguous_format)

    def _stats_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Uploaded once per device, not once per batch (only the engine thread calls this).
        if device not in self._device_stats:
            self._device_stats[device] = (
                torch.from_numpy(self._mean).to(device),
                torch.from_numpy(self._std).to(device),
            )
        return self._device_stats[device]


class DeviceStager:
    """Copies prepared pixels to a CUDA device from the preprocessing threads.

    One side stream carries every upload so copies overlap with the compute stream; each
    call waits for its own copy only (an event), which blocks the calling pool thread and
    not the engine. If the device is out of memory the pixels stay in pinned host memory
    and the engine uploads them with its batch: slower, never an error.
    """

    def __init__(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise ValueError("DeviceStager is for CUDA devices")
        self._device = device
        self._stream = torch.cuda.Stream(device=device)  # type: ignore[no-untyped-call]
        self._lock = threading.Lock()  # event record + copy enqueue as one step per item

    def stage(self, pixels: npt.NDArray[np.uint8]) -> torch.Tensor:
        # One copy, straight into page-locked memory (PIL's arrays are read-only anyway).
        pinned = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
        pinned.numpy()[...] = pixels
        try:
            with self._lock, torch.cuda.stream(self._stream):
                on_device = pinned.to(self._device, non_blocking=True)
                done = torch.cuda.Event()  # type: ignore[no-untyped-call]
                done.record(self._stream)
            done.synchronize()  # the pinned buffer must outlive the copy
        except torch.cuda.OutOfMemoryError:
            log.warning("no device memory to stage an image; it will upload with its batch")
            return pinned
        return on_device


def stack_on_device(
    images: Sequence[torch.Tensor], device: torch.device, *, staged_on_side_stream: bool
) -> torch.Tensor:
    """One batch tensor on ``device`` from per-item tensors (staged or still on the host)."""
    if device.type != "cuda":
        return torch.stack(list(images))
    current = torch.cuda.current_stream(device)
    items = []
    for image in images:
        if image.device.type == "cuda":
            if staged_on_side_stream:
                # Allocated on the side stream, read on this one: tell the caching allocator
                # so the block is not handed to a new upload while this batch still reads it.
                image.record_stream(current)
            items.append(image)
        else:
            items.append(image.to(device, non_blocking=image.is_pinned()))
    return torch.stack(items)
