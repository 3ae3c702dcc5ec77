"""From untrusted bytes or a URL to attributes: admit, decode, preprocess, batch, account.

This is the serving layer the routes call: a route takes a :class:`Permit` (before it
reads the body), then makes one call here, :meth:`Extractor.extract` or
:meth:`Extractor.extract_many`, and serializes what comes back. It runs in every API server
process: it owns the preprocessing thread pool and the URL fetcher, reaches the model (the
queue, the batches and the result cache) through :class:`service.backend.Engine`, speaks
in :class:`ServiceError` codes and knows nothing of HTTP requests or responses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Final

from PIL import Image

from fashion_florence_client.problems import ErrorCode
from fashion_florence_client.protocol import Priority
from fashion_florence_client.schema import AttributeConfidence, FashionAttributes, filter_tags
from service.backend import (
    DeadlineExceededError,
    Engine,
    EngineClosedError,
    EngineRestartingError,
    ItemFailure,
    PreparedImage,
    TimedOutcome,
)
from service.errors import ServiceError
from service.intake import ImageFetcher, decode_image, run_with_budget
from service.intake.digest import content_digest
from service.serving.admission import Admission, CapacityPool, LocalPool, Permit, class_limits
from service.settings import Settings
from service.telemetry.metrics import ServiceMetrics
from service.telemetry.record import note_cache_hit, note_inference, note_item_error
from service.telemetry.tracing import Tracer

#: The public code for each way one image can fail in the engine.
FAILURE_CODES: Final[Mapping[ItemFailure | None, ErrorCode]] = {
    ItemFailure.INVALID_OUTPUT: ErrorCode.INVALID_MODEL_OUTPUT,
    ItemFailure.OUT_OF_MEMORY: ErrorCode.ENGINE_OOM,
}


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
        engine: Engine,
        settings: Settings,
        metrics: ServiceMetrics,
        fetcher: ImageFetcher,
        pool: CapacityPool | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._metrics = metrics
        self._fetcher = fetcher
        self._tracer = Tracer(settings.tracing_enabled)
        self._cache = settings.cache_enabled
        self._pool = ThreadPoolExecutor(
            settings.preprocess_threads, thread_name_prefix="preprocess"
        )
        # Capacity = the queue plus one batch in the engine, across every API server: what
        # fits is admitted at once, anything more is refused before its body is parsed.
        # Batch-class work may hold only part of it: a backfill leaves room for a shop page.
        capacity = settings.queue_size + settings.max_batch_size
        self.admission = Admission(
            pool or LocalPool(capacity),
            engine.retry_after_s,
            on_change=metrics.in_flight.set,
            on_reject=lambda reason: metrics.rejections.labels(reason).inc(),
            limits=class_limits(capacity, settings.batch_admission_share),
        )

    async def stop(self) -> None:
        """Release the threads (the caller has waited for admitted work)."""
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=False)

    def admit(
        self, images: int = 1, priority: Priority = Priority.INTERACTIVE
    ) -> AbstractAsyncContextManager[Permit]:
        """``async with``: admission for one request holding ``images`` images (0 for a
        batch, whose items take theirs as they go) in scheduling class ``priority``; refused
        at once with ``queue_full`` or ``draining``, before the caller reads the body."""
        return self.admission.permit(images, priority)

    def _decode_and_prepare(self, data: bytes) -> PreparedImage:
        image: Image.Image = decode_image(
            data,
            max_image_bytes=self._settings.max_image_bytes,
            max_image_pixels=self._settings.max_image_pixels,
            max_image_side_px=self._settings.max_image_side_px,
            max_image_frames=self._settings.max_image_frames,
            target_size=self._engine.info.image_size,  # large JPEGs decode at reduced scale
        )
        return self._engine.prepare(image)

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
        extraction = await self._extract(payload, deadline, permit.priority)
        return _filtered(extraction, min_tag_confidence)

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
            if isinstance(payload, bytes) and self._cache:
                hit = await self._cached(await content_digest(payload))
                if hit is not None:
                    return hit
            permit.take()
            try:
                return await self._extract(payload, deadline, permit.priority)
            finally:
                permit.give_back()
        except ServiceError as exc:
            return exc

    async def _extract(self, data: bytes | str, deadline: float, priority: Priority) -> Extraction:
        """Fetch (URL) or take bytes, decode and preprocess (thread pool), run through the
        batcher. The caller holds the admission for it. Raises ServiceError."""
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                if isinstance(data, str):
                    with self._tracer.span("fetch"):
                        data = await self.fetch(data)
                key = await content_digest(data) if self._cache else None
                cached = await self._cached(key)
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
        return await self._infer(prepared, deadline, key, priority)

    async def _cached(self, key: str | None) -> Extraction | None:
        """The engine's cached answer for these bytes: no decode, no queue, no model."""
        if key is None:
            return None
        try:
            hit = await self._engine.lookup(key)
        except (EngineClosedError, EngineRestartingError):
            return None  # the lookup is an optimization; the request goes on its way
        if hit is None or hit.attributes is None:
            return None
        note_cache_hit()
        return Extraction(
            attributes=hit.attributes,
            generated_tokens=hit.generated_tokens,
            queue_ms=0.0,
            inference_ms=0.0,
            confidence=hit.confidence,
        )

    async def _infer(
        self, prepared: PreparedImage, deadline: float, key: str | None, priority: Priority
    ) -> Extraction:
        # Past the deadline an item still queued is dropped by the batcher; one already in
        # the engine is worth waiting for, but not past a stall (the pod is restarted then).
        guard_s = max(0.0, deadline - time.monotonic()) + self._settings.engine_stall_timeout_s
        try:
            async with asyncio.timeout(guard_s):
                timed = await self._engine.infer(
                    prepared, deadline=deadline, key=key, priority=priority
                )
        except TimeoutError as exc:
            raise ServiceError(
                ErrorCode.DEADLINE_EXCEEDED, "the engine did not answer before the deadline"
            ) from exc
        except DeadlineExceededError as exc:
            raise ServiceError(
                ErrorCode.DEADLINE_EXCEEDED, f"the deadline passed {exc.stage}; not run"
            ) from exc
        except EngineRestartingError as exc:
            raise restarting_error(str(exc), exc.retry_after_s) from exc
        except EngineClosedError as exc:
            raise ServiceError(ErrorCode.NOT_READY, "the engine is not accepting work") from exc
        except ServiceError:
            raise
        except Exception as exc:
            raise ServiceError(
                ErrorCode.ENGINE_ERROR, f"inference failed: {type(exc).__name__}"
            ) from exc
        return self._account(timed)

    def _account(self, timed: TimedOutcome) -> Extraction:
        outcome = timed.outcome
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


def restarting_error(detail: str, retry_after_s: float) -> ServiceError:
    """``engine_restarting``: the engine core died and a new one is starting; retry."""
    retry_after = max(1, round(retry_after_s))
    return ServiceError(
        ErrorCode.ENGINE_RESTARTING, detail, headers={"Retry-After": str(retry_after)}
    )
