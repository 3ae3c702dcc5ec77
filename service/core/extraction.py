"""From untrusted bytes or a URL to attributes: admit, decode, preprocess, batch, account.

This is the serving layer the routes call: a route takes a :class:`Permit` (before it
reads the body), then makes one call here, :meth:`Extractor.extract` or
:meth:`Extractor.extract_many`, and serializes what comes back. It owns the preprocessing
thread pool, the micro-batcher, the result cache and the URL fetcher, speaks in
:class:`ServiceError` codes and knows nothing of HTTP requests or responses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Final

from PIL import Image

from fashion_florence_client.problems import ErrorCode
from fashion_florence_client.schema import AttributeConfidence, FashionAttributes, filter_tags
from service.backend import (
    DeviceFatalError,
    DeviceOutOfMemoryError,
    InferenceBackend,
    ItemFailure,
    ItemOutcome,
    PreparedImage,
)
from service.core.admission import Admission, Permit
from service.core.batching import Batched, BatcherClosedError, DeadlineExceededError, MicroBatcher
from service.core.cache import CacheKey, ResultCache, content_digest
from service.errors import ServiceError
from service.intake import ImageFetcher, decode_image, run_with_budget
from service.settings import Settings
from service.telemetry.metrics import ServiceMetrics
from service.telemetry.record import note_cache_hit, note_inference, note_item_error
from service.telemetry.tracing import Tracer

FatalHandler = Callable[[BaseException], None]

#: The public code for each way one image can fail in the engine.
FAILURE_CODES: Final[Mapping[ItemFailure | None, ErrorCode]] = {
    ItemFailure.INVALID_OUTPUT: ErrorCode.INVALID_MODEL_OUTPUT,
    ItemFailure.OUT_OF_MEMORY: ErrorCode.ENGINE_OOM,
}


def run_splitting(
    backend: InferenceBackend,
    images: Sequence[PreparedImage],
    on_split: Callable[[], object] = lambda: None,
) -> list[ItemOutcome]:
    """Run a batch; on device OOM, retry its halves, down to single images (an image that
    does not fit even alone is an ``OUT_OF_MEMORY`` outcome). ``on_split`` is told of each
    split. Shared by the service's batcher and the batch jobs (``service.jobs``)."""
    try:
        return backend.run_batch(images)
    except DeviceOutOfMemoryError:
        pass
    # Recover outside the except block: a live traceback would pin the failed batch's
    # tensors through its frames and the retry would run out of memory again.
    on_split()
    if len(images) == 1:
        detail = "the image did not fit in device memory even alone"
        return [ItemOutcome("", 0, failure=ItemFailure.OUT_OF_MEMORY, error_detail=detail)]
    middle = len(images) // 2
    return run_splitting(backend, images[:middle], on_split) + run_splitting(
        backend, images[middle:], on_split
    )


@dataclass(frozen=True, slots=True)
class Extraction:
    attributes: FashionAttributes
    generated_tokens: int
    queue_ms: float
    inference_ms: float
    confidence: AttributeConfidence | None = None


class Extractor:
    def __init__(
        self,
        backend: InferenceBackend,
        settings: Settings,
        metrics: ServiceMetrics,
        fetcher: ImageFetcher,
        on_fatal: FatalHandler | None = None,
    ) -> None:
        self._backend = backend
        self._on_fatal = on_fatal or (lambda _exc: None)
        self._settings = settings
        self._metrics = metrics
        self._fetcher = fetcher
        self._tracer = Tracer(settings.tracing_enabled)
        self.cache: ResultCache[Extraction] | None = None
        if settings.cache_enabled:
            self.cache = ResultCache(
                settings.cache_max_entries, settings.cache_max_bytes, metrics.cache
            )
        self._pool = ThreadPoolExecutor(
            settings.preprocess_threads, thread_name_prefix="preprocess"
        )
        self.batcher: MicroBatcher[PreparedImage, ItemOutcome] = MicroBatcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            # The batcher runs one batch at a time and forms the next only once the engine
            # is free, so a zero wait is exactly "dispatch at once when idle".
            max_wait_ms=settings.max_wait_ms if settings.batch_dispatch == "wait" else 0.0,
            observer=metrics,
        )
        # Capacity = the queue plus one batch in the engine: what fits is admitted at once,
        # anything more is refused before its body is even parsed.
        self.admission = Admission(
            settings.queue_size + settings.max_batch_size,
            self.batcher.retry_after_s,
            on_change=metrics.in_flight.set,
            on_reject=lambda reason: metrics.rejections.labels(reason).inc(),
        )

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        """Finish everything already accepted, then release the threads."""
        await self.batcher.stop()
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=False)

    def admit(self, images: int = 1) -> AbstractAsyncContextManager[Permit]:
        """``async with``: admission for one request holding ``images`` images (0 for a
        batch, whose items take theirs as they go); refused at once with ``queue_full`` or
        ``draining``, before the caller reads the request's body."""
        return self.admission.permit(images)

    def _run_batch(self, images: list[PreparedImage]) -> list[ItemOutcome]:
        # Runs on the batcher's single engine thread.
        try:
            return self._run_splitting(images)
        except DeviceFatalError as exc:
            self._on_fatal(exc)
            raise

    def _run_splitting(self, images: list[PreparedImage]) -> list[ItemOutcome]:
        return run_splitting(self._backend, images, on_split=self._metrics.oom_splits.inc)

    def _decode_and_prepare(self, data: bytes) -> PreparedImage:
        image: Image.Image = decode_image(
            data,
            max_image_bytes=self._settings.max_image_bytes,
            max_image_pixels=self._settings.max_image_pixels,
            max_image_side_px=self._settings.max_image_side_px,
            max_image_frames=self._settings.max_image_frames,
            target_size=self._backend.info.image_size,  # large JPEGs decode at reduced scale
        )
        return self._backend.preprocess(image)

    async def fetch(self, url: str) -> bytes:
        return await self._fetcher.fetch(url)

    def deadline_after_ms(self, timeout_ms: float | None) -> float:
        """A monotonic deadline: the configured default, shortened (never lengthened)."""
        budget = self._settings.request_timeout_ms
        if timeout_ms is not None:
            budget = min(budget, timeout_ms)
        return time.monotonic() + budget / 1000.0

    async def extract(
        self,
        payload: bytes | str,
        permit: Permit,
        deadline: float,
        min_tag_confidence: float | None = None,
    ) -> Extraction:
        """One image (bytes) or image URL (str) under ``permit``, which must hold an image.
        Tags below ``min_tag_confidence`` are dropped. Raises ServiceError."""
        if permit.images < 1:
            raise ValueError("extract() needs a permit holding one image")
        return _filtered(await self._extract(payload, deadline), min_tag_confidence)

    async def extract_many(
        self,
        payloads: Sequence[bytes | str],
        permit: Permit,
        deadline: float,
        min_tag_confidence: float | None = None,
    ) -> list[Extraction | ServiceError]:
        """Per-item results in input order; bytes are images, strings are URLs. Each item
        takes its own image from ``permit`` (and gives it back when done), so a batch larger
        than the free capacity gets per-item ``queue_full`` errors instead of being refused
        whole; a cached item takes none."""
        results = await asyncio.gather(*(self._item(p, permit, deadline) for p in payloads))
        answers: list[Extraction | ServiceError] = []
        for result in results:
            if isinstance(result, ServiceError):
                note_item_error(result.code.value)
                answers.append(result)
            else:
                answers.append(_filtered(result, min_tag_confidence))
        return answers

    async def _item(
        self, payload: bytes | str, permit: Permit, deadline: float
    ) -> Extraction | ServiceError:
        try:
            # A cached answer needs no capacity, so a hit is answered even at queue_full.
            # Peeking first keeps the hit/miss count to _extract()'s one lookup.
            if isinstance(payload, bytes) and self.cache is not None:
                key = await self._cache_key(payload)
                if key is not None and key in self.cache:
                    return await self._extract(payload, deadline)
            permit.take()
            try:
                return await self._extract(payload, deadline)
            finally:
                permit.give_back()
        except ServiceError as exc:
            return exc

    async def _extract(self, data: bytes | str, deadline: float) -> Extraction:
        """Fetch (URL) or take bytes, decode and preprocess (thread pool), run through the
        batcher. The caller holds the admission for it. Raises ServiceError."""
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                if isinstance(data, str):
                    with self._tracer.span("fetch"):
                        data = await self.fetch(data)
                key = await self._cache_key(data)
                cached = self._cached(key)
                if cached is not None:
                    return cached  # no decode, no queue, no engine
                with self._tracer.span("decode"):
                    prepared = await run_with_budget(
                        self._pool, self._decode_and_prepare, data,
                        budget_s=self._settings.decode_budget_ms / 1000.0,
                    )  # fmt: skip
        except TimeoutError as exc:
            self._metrics.deadline_drop("intake")
            raise ServiceError(
                ErrorCode.DEADLINE_EXCEEDED, "the deadline passed while fetching or decoding"
            ) from exc
        result = await self._infer(prepared, deadline)
        if self.cache is not None and key is not None:
            self.cache.put(key, result, _estimated_bytes(result))
        return result

    async def _cache_key(self, data: bytes) -> CacheKey | None:
        if self.cache is None:
            return None
        return CacheKey(await content_digest(data), self._backend.info.revision)

    def _cached(self, key: CacheKey | None) -> Extraction | None:
        if self.cache is None or key is None:
            return None
        hit = self.cache.get(key)
        if hit is None:
            return None
        note_cache_hit()
        return dataclasses.replace(hit, queue_ms=0.0, inference_ms=0.0)

    async def _infer(self, prepared: PreparedImage, deadline: float) -> Extraction:
        # Past the deadline an item still queued is dropped by the batcher; one already in
        # the engine is worth waiting for, but not past a stall (the pod is restarted then).
        guard_s = max(0.0, deadline - time.monotonic()) + self._settings.engine_stall_timeout_s
        try:
            async with asyncio.timeout(guard_s):
                timed = await self.batcher.submit_timed(prepared, deadline=deadline)
        except TimeoutError as exc:
            raise ServiceError(
                ErrorCode.DEADLINE_EXCEEDED, "the engine did not answer before the deadline"
            ) from exc
        except DeadlineExceededError as exc:
            raise ServiceError(
                ErrorCode.DEADLINE_EXCEEDED, f"the deadline passed {exc.stage}; not run"
            ) from exc
        except BatcherClosedError as exc:
            raise ServiceError(ErrorCode.NOT_READY, "the engine is not accepting work") from exc
        except ServiceError:
            raise
        except Exception as exc:
            raise ServiceError(
                ErrorCode.ENGINE_ERROR, f"inference failed: {type(exc).__name__}"
            ) from exc
        return self._account(timed)

    def _account(self, timed: Batched[ItemOutcome]) -> Extraction:
        outcome = timed.result
        self._metrics.generated_tokens.observe(outcome.generated_tokens)
        # Noted before the error check: a failed item queued and ran all the same.
        queue_ms = timed.queued_s * 1000.0
        note_inference(queue_ms, timed.batch_size)
        self._tracer.record("queue", timed.enqueued_at, timed.started_at)
        self._tracer.record(
            "inference", timed.started_at, timed.finished_at, batch_size=timed.batch_size
        )
        if outcome.attributes is None:
            code = FAILURE_CODES.get(outcome.failure, ErrorCode.ENGINE_ERROR)
            raise ServiceError(code, outcome.error_detail or "the engine returned no attributes")
        return Extraction(
            attributes=outcome.attributes,
            generated_tokens=outcome.generated_tokens,
            queue_ms=queue_ms,
            inference_ms=(timed.finished_at - timed.started_at) * 1000.0,
            confidence=outcome.confidence,
        )


def _filtered(result: Extraction, min_tag_confidence: float | None) -> Extraction:
    """Drop tags below ``min_tag_confidence``; without confidence nothing is dropped."""
    if min_tag_confidence is None or result.confidence is None:
        return result
    attributes, confidence = filter_tags(result.attributes, result.confidence, min_tag_confidence)
    return dataclasses.replace(result, attributes=attributes, confidence=confidence)


def _estimated_bytes(result: Extraction) -> int:
    """What a cached answer costs in memory, roughly: its JSON is a fair proxy."""
    size = len(result.attributes.model_dump_json())
    if result.confidence is not None:
        size += len(result.confidence.model_dump_json())
    return 2 * size  # Python objects take about twice their JSON
