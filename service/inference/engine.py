"""The Florence-2 engine: batched greedy generation on one device. Synchronous by design.

It knows nothing of asyncio or HTTP: the batcher calls :meth:`FlorenceEngine.run_batch`
from one dedicated thread, and image preprocessing runs in a thread pool before that.
Decoding is schema-constrained by default (see :mod:`service.inference.decoding`): every output
validates, and each value comes with its confidence.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from model_store.demo_cache import ensure_demo_model
from model_store.loading import LoadedModel, load_model
from model_store.profiles import parse_output
from service.backend import (
    DeviceFatalError,
    DeviceOutOfMemoryError,
    ItemFailure,
    ItemOutcome,
    ModelInfo,
    PreparedImage,
)
from service.inference.decoding.confidence import attribute_confidence
from service.inference.decoding.decoders import DecodingMode, build_decoder
from service.inference.decoding.grammar import SchemaGrammar
from service.inference.decoding.jump_forward import JumpForwardDecoder
from service.inference.preprocessing import DeviceStager, PlainTransform, stack_on_device
from service.settings import DtypeName, Settings

__all__ = ["FlorenceEngine", "PlainTransform", "decoding_mode", "load_engine"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DTYPES: Final = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OUTPUT_PREVIEW_CHARS: Final = 200


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("FF_DEVICE=cuda but no CUDA device is available")
    return torch.device(name)


def resolve_dtype(name: DtypeName, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and name != "float32":
        log.warning("FF_DTYPE=%s on CPU is slow or unsupported; consider float32", name)
    return DTYPES[name]


#: Errors after which the CUDA context is corrupt: every later kernel fails too, so the
#: only recovery is a new process (Kubernetes restarts the pod when liveness fails).
STICKY_CUDA_ERRORS: Final = (
    "device-side assert",
    "illegal memory access",
    "unspecified launch failure",
    "misaligned address",
    "an illegal instruction",
    "uncorrectable ECC error",
    "CUDA error: unknown error",
    "device not ready",
    "CUDA driver version is insufficient",
)


def is_sticky_cuda_error(exc: BaseException) -> bool:
    message = str(exc)
    return any(marker in message for marker in STICKY_CUDA_ERRORS)


#: Allocation failures that CUDA libraries report as a plain RuntimeError rather than
#: torch.OutOfMemoryError: near the memory limit cuBLAS/cuDNN cannot get their workspace
#: or handle. They leave the context usable, so a smaller batch can still succeed.
DEVICE_ALLOCATION_ERRORS: Final = (
    "CUBLAS_STATUS_ALLOC_FAILED",
    # cublasCreate fails this way when there is no memory left for the handle.
    "CUBLAS_STATUS_NOT_INITIALIZED",
    "CUDNN_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_NOT_ENOUGH_WORKSPACE",
    "CUSOLVER_STATUS_ALLOC_FAILED",
    "CUFFT_ALLOC_FAILED",
    "CUDA error: out of memory",
)


def is_device_allocation_error(exc: BaseException) -> bool:
    """True for any device out-of-memory, also one that arrives as a plain RuntimeError."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    message = str(exc)
    return any(marker in message for marker in DEVICE_ALLOCATION_ERRORS)


class FlorenceEngine:
    """Implements :class:`service.backend.InferenceBackend` on a real Florence-2."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        max_new_tokens: int,
        decoding: DecodingMode = DecodingMode.JUMP_FORWARD,
        normalize_on_device: bool | None = None,
    ) -> None:
        """``normalize_on_device`` (default: on CUDA) makes preprocessing ship uint8 pixels,
        staged on the GPU by the pool threads, and normalizes each batch on the device; off,
        the pool normalizes on the host. See :mod:`service.inference.preprocessing`."""
        self._model = loaded.model
        self._processor = loaded.processor
        self._manifest = loaded.manifest
        self._max_new_tokens = max_new_tokens
        first = next(self._model.parameters())
        self._device = first.device
        self._dtype = first.dtype
        self._image_size = int(self._processor.image_processor.size["height"])
        self._transform = PlainTransform.from_processor(self._processor.image_processor)
        if normalize_on_device is None:
            normalize_on_device = self._device.type == "cuda"
        # Needs the plain transform: the batch normalization is its arithmetic.
        self._uint8_pixels = normalize_on_device and self._transform is not None
        self._stager = (
            DeviceStager(self._device)
            if self._uint8_pixels and self._device.type == "cuda"
            else None
        )
        # The prompt never changes, so tokenize it once (with the processor, which lays
        # out the <image> placeholders) and reuse the ids for every batch.
        blank = Image.new("RGB", (self._image_size, self._image_size))
        encoded = self._processor(
            text=[loaded.manifest.prompt], images=[blank], return_tensors="pt"
        )
        self._prompt_ids = encoded["input_ids"][0].to(self._device)
        tokenizer = self._processor.tokenizer
        self._eos_id = int(tokenizer.eos_token_id)
        self._pad_id = int(tokenizer.pad_token_id)
        # Constrained modes compile the schema grammar here, once per loaded model.
        self._profile = loaded.manifest.profile
        self._decoder = build_decoder(
            self._model, tokenizer, decoding, max_new_tokens=max_new_tokens, profile=self._profile
        )
        grammar = self._decoder.grammar
        self._token_bytes = list(grammar.tokenizer_info.decoded_vocab) if grammar else []

    @property
    def decoding_mode(self) -> DecodingMode:
        """The mode actually in use (jump-forward falls back to constrained if unsupported)."""
        return self._decoder.mode

    @property
    def grammar(self) -> SchemaGrammar | None:
        return self._decoder.grammar

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            name=self._manifest.name,
            revision=next(iter(self._manifest.weights.values()), "unknown")[:12],
            device=str(self._device),
            dtype=str(self._dtype).removeprefix("torch."),
            image_size=self._image_size,
            manifest=self._manifest.model_dump(mode="json"),
        )

    def preprocess(self, image: Image.Image) -> PreparedImage:
        """Runs on the preprocessing pool, concurrently with the batch in the engine."""
        if self._uint8_pixels:
            assert self._transform is not None
            pixels = self._transform.resize(image)
            if self._stager is not None:
                return self._stager.stage(pixels)
            return torch.from_numpy(pixels.copy())  # PIL's arrays are read-only
        if self._transform is not None:
            return self._transform(image)
        pixels = self._processor.image_processor(images=[image], return_tensors="np")
        return np.ascontiguousarray(pixels["pixel_values"][0], dtype=np.float32)

    def warmup(self) -> None:
        blank = self.preprocess(Image.new("RGB", (self._image_size, self._image_size), "gray"))
        self.run_batch([blank, blank])

    def check_device(self) -> None:
        if self._device.type != "cuda":
            return
        try:
            # A one-element round trip: raises if the context hit a sticky error.
            torch.ones(1, device=self._device).add_(1).item()
        except RuntimeError as exc:
            # Only a sticky error is fatal. Anything else (an OOM for this one element
            # while a batch fills the device and is being split) says the device is busy:
            # raised as is, so the caller can tell it from a dead device.
            if is_sticky_cuda_error(exc):
                raise DeviceFatalError(f"device check failed: {exc}") from exc
            raise

    def close(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def resize_spec(self) -> tuple[int, int] | None:
        """(side, PIL resampling filter) of the plain transform, or None when the processor
        is not plain: what another process needs to resize images for :meth:`run_pixels`."""
        if self._transform is None:
            return None
        return self._transform.size, int(self._transform.resample)

    def run_batch(self, images: Sequence[PreparedImage]) -> list[ItemOutcome]:
        """One batch. Device OOM is raised as DeviceOutOfMemoryError (the service splits and
        retries); an error that leaves the CUDA context unusable as DeviceFatalError."""
        if not images:
            return []
        return self._guarded(len(images), lambda: self._generate(self.pixel_values(images)))

    def run_pixels(self, pixels: npt.NDArray[np.uint8]) -> list[ItemOutcome]:
        """One batch of resized RGB pixels (B x H x W x 3 uint8, e.g. a view of memory another
        process wrote), normalized here; errors as :meth:`run_batch`. Needs ``resize_spec``."""
        if self._transform is None:
            raise ValueError("run_pixels needs a plain image processor (see resize_spec)")
        if not len(pixels):
            return []
        return self._guarded(len(pixels), lambda: self._generate(self.normalize_pixels(pixels)))

    def normalize_pixels(self, pixels: npt.NDArray[np.uint8]) -> torch.Tensor:
        """``pixel_values`` from B x H x W x 3 uint8 (read in place: no copy on CPU)."""
        if self._transform is None:
            raise ValueError("normalize_pixels needs a plain image processor (see resize_spec)")
        batch = torch.from_numpy(pixels)
        if self._device.type == "cuda":
            batch = batch.to(self._device)
        return self._transform.normalize_batch(batch, self._dtype)

    # What the iteration-level runner (service.inference.iteration) builds on.
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def jump_forward_decoder(self) -> JumpForwardDecoder | None:
        decoder = getattr(self._decoder, "decoder", None)
        return decoder if isinstance(decoder, JumpForwardDecoder) else None

    def prompt_ids(self, rows: int) -> torch.Tensor:
        ids: torch.Tensor = self._prompt_ids.unsqueeze(0).expand(rows, -1)
        return ids

    def outcome(self, tokens: list[int], logprobs: list[float] | None) -> ItemOutcome:
        return self._outcome(tokens, logprobs)

    def guarded_call(self, size: int, run: Callable[[], T]) -> T:
        """``run()`` with device errors classified as :meth:`run_batch` does."""
        return self._guarded(size, run)

    def _guarded(self, size: int, run: Callable[[], T]) -> T:
        try:
            return run()
        except RuntimeError as exc:  # torch.OutOfMemoryError is one too
            if self._device.type == "cuda" and is_sticky_cuda_error(exc):
                raise DeviceFatalError(str(exc)) from exc
            if not is_device_allocation_error(exc):
                raise
        # Only an out-of-memory gets here. Release outside the except block: a live
        # traceback would pin the batch's tensors and the retry would run out of memory again.
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
        raise DeviceOutOfMemoryError(f"a batch of {size} did not fit on {self._device}")

    def pixel_values(self, images: Sequence[PreparedImage]) -> torch.Tensor:
        """The model's ``pixel_values`` (B x 3 x H x W, model dtype, on the device)."""
        if self._uint8_pixels:
            assert self._transform is not None
            batch = stack_on_device(
                images, self._device, staged_on_side_stream=self._stager is not None
            )
            return self._transform.normalize_batch(batch, self._dtype)
        batch = torch.from_numpy(np.stack(images))
        if self._device.type == "cuda":
            # Pinned host memory lets the copy overlap with work already on the stream.
            return batch.pin_memory().to(self._device, dtype=self._dtype, non_blocking=True)
        return batch.to(dtype=self._dtype)

    @torch.inference_mode()
    def _generate(self, pixel_values: torch.Tensor) -> list[ItemOutcome]:
        input_ids = self._prompt_ids.unsqueeze(0).expand(len(pixel_values), -1)
        decoded = self._decoder.decode(input_ids, torch.ones_like(input_ids), pixel_values)
        return [self._outcome(d.tokens, d.logprobs) for d in decoded]

    def _outcome(self, generated: list[int], logprobs: list[float] | None = None) -> ItemOutcome:
        """Judge one row: ``generated`` starts after the decoder start token; ``logprobs``
        (constrained modes) follow ``<s>``, one per token."""
        if self._eos_id in generated:
            generated = generated[: generated.index(self._eos_id) + 1]
        steps = len([t for t in generated if t != self._pad_id])
        text = self._processor.tokenizer.decode(generated, skip_special_tokens=True)
        try:
            attributes = parse_output(text, self._profile)
        except ValueError as exc:  # ProfileError, or pydantic's ValidationError inside it
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid"
            detail = f"schema error: {reason}; output began {text[:OUTPUT_PREVIEW_CHARS]!r}"
            return ItemOutcome(text, steps, failure=ItemFailure.INVALID_OUTPUT, error_detail=detail)
        confidence = None
        if logprobs is not None:
            body = generated[1:-1] if generated[-1] == self._eos_id else generated[1:]
            confidence = attribute_confidence(
                attributes,
                [self._token_bytes[t] for t in body],
                logprobs[: len(body)],
                self._profile,
            )
        return ItemOutcome(text, steps, attributes=attributes, confidence=confidence)


def cpu_threads_for_model(configured: int, device: torch.device) -> int | None:
    """How many intra-op threads torch should use, or None to leave torch's choice.

    On CPU the model shares the cores with HTTP, decoding and preprocessing. Measured on
    2 cores (docs/BENCHMARKS.md), the service served 36% more images/s with one
    torch thread than with torch's default of one per core, while the engine alone was
    faster with two: a model that takes every core starves the work that feeds it.
    """
    if configured:
        return configured
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, len(os.sched_getaffinity(0)) // 2)


def load_engine(settings: Settings) -> FlorenceEngine:
    """Resolve the configured model (or the demo model), load it and wrap it."""
    source = settings.model_path or str(
        ensure_demo_model(settings.demo_model_dir, trained=settings.demo_model == "trained")
    )
    device = resolve_device(settings.device)
    threads = cpu_threads_for_model(settings.torch_threads, device)
    if threads is not None:
        torch.set_num_threads(threads)
    dtype = resolve_dtype(settings.dtype, device)
    loaded = load_model(
        source,
        adapter=settings.adapter_path,
        device=device,
        dtype=dtype,
        verify_checksums=settings.verify_checksums,
    )
    log.info(
        "loaded %s on %s as %s, %d torch threads",
        loaded.manifest.name, device, dtype, torch.get_num_threads(),
    )  # fmt: skip
    return FlorenceEngine(
        loaded, max_new_tokens=settings.max_new_tokens, decoding=decoding_mode(settings)
    )


def decoding_mode(settings: Settings) -> DecodingMode:
    """Constrained unless switched off; jump-forward (same tokens, fewer passes) by default."""
    if not settings.constrained_decoding:
        return DecodingMode.PLAIN
    return DecodingMode.JUMP_FORWARD if settings.jump_forward else DecodingMode.CONSTRAINED
