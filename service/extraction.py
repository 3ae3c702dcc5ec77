"""From untrusted bytes or a URL to attributes: decode, preprocess, batch, account.

This is the use-case layer the routes call. It owns the preprocessing thread pool, the
micro-batcher and the URL fetcher, speaks in :class:`ServiceError` codes and knows
nothing of HTTP requests or responses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from PIL import Image

from model_store.schema import FashionAttributes
from service.backend import InferenceBackend, ItemOutcome, PreparedImage
from service.batching import BatcherClosedError, MicroBatcher, QueueFullError
from service.errors import ErrorCode, ServiceError
from service.intake import ImageFetcher, decode_image
from service.metrics import ServiceMetrics
from service.settings import Settings


@dataclass(frozen=True, slots=True)
class TimedOutcome:
    outcome: ItemOutcome
    batch_started: float  # time.perf_counter()
    batch_finished: float


@dataclass(frozen=True, slots=True)
class Extraction:
    attributes: FashionAttributes
    generated_tokens: int
    queue_ms: float
    inference_ms: float


class Extractor:
    def __init__(
        self,
        backend: InferenceBackend,
        settings: Settings,
        metrics: ServiceMetrics,
        fetcher: ImageFetcher,
    ) -> None:
        self._backend = backend
        self._settings = settings
        self._metrics = metrics
        self._fetcher = fetcher
        self._pool = ThreadPoolExecutor(
            settings.preprocess_threads, thread_name_prefix="preprocess"
        )
        self.batcher: MicroBatcher[PreparedImage, TimedOutcome] = MicroBatcher(
            self._run_batch,
            max_batch_size=settings.max_batch_size,
            max_wait_ms=settings.max_wait_ms,
            queue_size=settings.queue_size,
            observer=metrics,
        )

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        """Finish everything already accepted, then release the threads."""
        await self.batcher.stop()
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=False)

    def _run_batch(self, images: list[PreparedImage]) -> list[TimedOutcome]:
        # Runs on the batcher's single engine thread.
        started = time.perf_counter()
        outcomes = self._backend.run_batch(images)
        finished = time.perf_counter()
        return [TimedOutcome(o, started, finished) for o in outcomes]

    def _decode_and_prepare(self, data: bytes) -> PreparedImage:
        image: Image.Image = decode_image(
            data,
            max_image_bytes=self._settings.max_image_bytes,
            max_image_pixels=self._settings.max_image_pixels,
        )
        return self._backend.preprocess(image)

    async def fetch(self, url: str) -> bytes:
        return await self._fetcher.fetch(url)

    async def extract(self, data: bytes) -> Extraction:
        """Decode, preprocess (thread pool), run through the batcher; raise ServiceError."""
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self._pool, self._decode_and_prepare, data)
        submitted = time.perf_counter()
        try:
            timed = await self.batcher.submit(prepared)
        except QueueFullError as exc:
            raise ServiceError(
                ErrorCode.QUEUE_FULL,
                f"{self._settings.queue_size} images already queued",
                headers={"Retry-After": str(max(1, round(exc.retry_after_s)))},
            ) from exc
        except BatcherClosedError as exc:
            raise ServiceError(ErrorCode.NOT_READY, "the engine is not accepting work") from exc
        except ServiceError:
            raise
        except Exception as exc:
            raise ServiceError(
                ErrorCode.ENGINE_ERROR, f"inference failed: {type(exc).__name__}"
            ) from exc
        return self._account(timed, submitted)

    def _account(self, timed: TimedOutcome, submitted: float) -> Extraction:
        outcome = timed.outcome
        self._metrics.generated_tokens.observe(outcome.generated_tokens)
        if outcome.attributes is None:
            code = ErrorCode(outcome.error_code or ErrorCode.ENGINE_ERROR)
            raise ServiceError(code, outcome.error_detail or "the engine returned no attributes")
        return Extraction(
            attributes=outcome.attributes,
            generated_tokens=outcome.generated_tokens,
            queue_ms=max(0.0, timed.batch_started - submitted) * 1000.0,
            inference_ms=(timed.batch_finished - timed.batch_started) * 1000.0,
        )

    async def extract_many(
        self, payloads: Sequence[bytes | str]
    ) -> list[Extraction | ServiceError]:
        """Per-item results in input order; bytes are images, strings are URLs."""
        return list(await asyncio.gather(*(self._one(p) for p in payloads)))

    async def _one(self, payload: bytes | str) -> Extraction | ServiceError:
        try:
            data = await self.fetch(payload) if isinstance(payload, str) else payload
            return await self.extract(data)
        except ServiceError as exc:
            return exc
