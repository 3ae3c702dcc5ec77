"""The Ray job's two stages, as Ray Data runs them: plain functions and classes of pyarrow
tables, so that they know nothing of Ray and the tests can call them directly.

* :func:`intake_batch` (Ray tasks, CPU): read a file or fetch a URL with the service's
  SSRF-safe fetcher and its limits, decode with the hardened decoder under the same time
  budget, and resize to the model's input (the bulk of preprocessing; what crosses the
  object store is the model-size uint8 image, a quarter of the float32 pixels).
* :class:`ExtractStage` (one actor per model copy): the service's engine, built by the
  lifecycle's own loader, normalizes (on the device under CUDA) and decodes each batch
  with constrained jump-forward decoding, splitting a batch on device out-of-memory as the
  service does.

A failed item is a row with the HTTP API's code and detail, never an exception: one bad
image must not fail a block of good ones. Only a dead device ends the actor (Ray then
restarts it and retries its batch).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
from PIL import Image

from fashion_florence_client.problems import ErrorCode
from service.backend import DeviceFatalError, InferenceBackend, ItemOutcome
from service.engine_core.local import run_splitting
from service.errors import ServiceError
from service.intake import ImageFetcher, decode_image, fetcher_from_settings, run_with_budget
from service.jobs.output import OUTPUT_SCHEMA
from service.serving.extraction import FAILURE_CODES
from service.settings import Settings

log = logging.getLogger(__name__)

#: Between the stages: the item, and its model-size RGB pixels or why it has none.
INTAKE_SCHEMA: Final = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("pixels", pa.binary()),  # H x W x 3 uint8, row-major
        pa.field("height", pa.int32()),
        pa.field("width", pa.int32()),
        pa.field("error_code", pa.string()),
        pa.field("error_detail", pa.string()),
    ]
)
#: The client's code for a path it cannot read (the HTTP job reports the same).
INVALID_INPUT: Final = "invalid_input"


@dataclass(frozen=True, slots=True)
class Failure:
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class Resizer:
    """The model's resize, from its image processor (``PlainTransform.resize``), or None
    where the processor is not the plain pipeline: the image then travels at full size
    and the engine's own preprocessing does all of it. Either way the engine's pixels are
    exactly the service's (resizing a model-size image again is a copy)."""

    image_size: int
    resize: Any | None  # Callable[[Image], ndarray[uint8]], picklable

    def __call__(self, image: Image.Image) -> np.ndarray[Any, np.dtype[np.uint8]]:
        if self.resize is not None:
            pixels: np.ndarray[Any, np.dtype[np.uint8]] = self.resize(image)
            return pixels
        return np.asarray(image, dtype=np.uint8)


@functools.cache
def load_resizer(model_source: str) -> Resizer:
    """Once per worker process (the driver never imports transformers)."""
    from transformers import Florence2Processor

    from service.inference.preprocessing import PlainTransform

    processor = Florence2Processor.from_pretrained(model_source).image_processor
    transform = PlainTransform.from_processor(processor)
    size = int(processor.size["height"])
    return Resizer(size, transform.resize if transform is not None else None)


_pools: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    # One per worker process, reused by every task it runs: decoding needs threads for its
    # time budget (as in the service), and starting them per batch is waste.
    if threads not in _pools:
        _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="decode")
    return _pools[threads]


def _is_url(source: str) -> bool:
    return source[:8].lower().startswith(("http://", "https://"))


def _read_file(source: str, max_body_bytes: int) -> bytes | Failure:
    path = Path(source)
    try:
        size = path.stat().st_size
        if size > max_body_bytes:  # what the API answers for an upload this large
            return Failure(
                ErrorCode.PAYLOAD_TOO_LARGE.value,
                f"The file is {size} bytes; the limit is {max_body_bytes} bytes.",
            )
        return path.read_bytes()
    except OSError as exc:
        return Failure(INVALID_INPUT, f"cannot read {path}: {exc.strerror}")


def _decode(data: bytes, settings: Settings, resizer: Resizer) -> np.ndarray[Any, Any]:
    image = decode_image(
        data,
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
        max_image_side_px=settings.max_image_side_px,
        max_image_frames=settings.max_image_frames,
        target_size=resizer.image_size,  # large JPEGs decode at reduced scale
    )
    return resizer(image)


async def _intake_one(
    source: str, fetcher: ImageFetcher, settings: Settings, resizer: Resizer
) -> np.ndarray[Any, Any] | Failure:
    try:
        if _is_url(source):
            data: bytes | Failure = await fetcher.fetch(source)
        else:
            data = await asyncio.to_thread(_read_file, source, settings.max_body_bytes)
        if isinstance(data, Failure):
            return data
        return await run_with_budget(
            _pool(settings.preprocess_threads),
            functools.partial(_decode, settings=settings, resizer=resizer),
            data,
            budget_s=settings.decode_budget_ms / 1000.0,
        )
    except ServiceError as exc:
        return Failure(exc.code.value, exc.detail)


async def _intake_all(
    sources: Sequence[str], settings: Settings, resizer: Resizer
) -> list[np.ndarray[Any, Any] | Failure]:
    async with fetcher_from_settings(settings) as fetcher:
        return await asyncio.gather(
            *(_intake_one(source, fetcher, settings, resizer) for source in sources)
        )


def intake_batch(batch: pa.Table, *, settings: Settings) -> pa.Table:
    """Ray Data's CPU stage: ``id, source`` rows in, :data:`INTAKE_SCHEMA` rows out.
    ``settings.model_path`` must name the model (the driver resolves the demo model)."""
    if settings.model_path is None:
        raise ValueError("intake_batch needs settings.model_path")
    resizer = load_resizer(settings.model_path)
    ids = batch.column("id").to_pylist()
    sources = batch.column("source").to_pylist()
    results = asyncio.run(_intake_all(sources, settings, resizer))
    columns: dict[str, list[Any]] = {name: [] for name in INTAKE_SCHEMA.names}
    for item, source, result in zip(ids, sources, results, strict=True):
        columns["id"].append(item)
        columns["source"].append(source)
        if isinstance(result, Failure):
            values: tuple[Any, ...] = (None, None, None, result.code, result.detail)
        else:
            height, width = result.shape[:2]
            values = (np.ascontiguousarray(result).tobytes(), height, width, None, None)
        for name, value in zip(INTAKE_SCHEMA.names[2:], values, strict=True):
            columns[name].append(value)
    return pa.Table.from_pydict(columns, schema=INTAKE_SCHEMA)


def _pixels(row: dict[str, Any]) -> Image.Image:
    shape = (row["height"], row["width"], 3)
    return Image.fromarray(np.frombuffer(row["pixels"], dtype=np.uint8).reshape(shape))


def _answer(outcome: ItemOutcome) -> tuple[str | None, str | None, Failure | None]:
    if outcome.attributes is None:
        code = FAILURE_CODES.get(outcome.failure, ErrorCode.ENGINE_ERROR)
        return None, None, Failure(code.value, outcome.error_detail or "no attributes")
    attributes = json.dumps(outcome.attributes.model_dump(mode="json"))
    confidence = outcome.confidence
    return attributes, None if confidence is None else confidence.model_dump_json(), None


class ExtractStage:
    """Ray Data's actor stage: one engine per actor, loaded and warmed once."""

    def __init__(self, settings: Settings) -> None:
        # The lifecycle's own loader: the same model resolution, device, dtype, threads
        # and decoding mode as a server with these settings.
        from service.serving.lifecycle import load_real_engine

        self._backend: InferenceBackend = load_real_engine(settings)
        self._backend.warmup()
        info = self._backend.info
        self._model = (info.name, info.revision)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        ready = [index for index, row in enumerate(rows) if row["error_code"] is None]
        outcomes = self._run([_pixels(rows[index]) for index in ready])
        answers: dict[int, tuple[str | None, str | None, Failure | None]] = {}
        for index, outcome in zip(ready, outcomes, strict=True):
            answers[index] = _answer(outcome) if isinstance(outcome, ItemOutcome) else outcome
        columns: dict[str, list[Any]] = {name: [] for name in OUTPUT_SCHEMA.names}
        for index, row in enumerate(rows):
            intake_failure = Failure(row["error_code"], row["error_detail"])
            attributes, confidence, failure = answers.get(index, (None, None, intake_failure))
            columns["id"].append(row["id"])
            columns["source"].append(row["source"])
            columns["model_name"].append(self._model[0])
            columns["model_revision"].append(self._model[1])
            columns["attributes"].append(attributes)
            columns["confidence"].append(confidence)
            columns["error_code"].append(failure.code if failure else None)
            columns["error_detail"].append(failure.detail if failure else None)
        return pa.Table.from_pydict(columns, schema=OUTPUT_SCHEMA)

    def _run(self, images: list[Image.Image]) -> Sequence[ItemOutcome | tuple[None, None, Failure]]:
        if not images:
            return []
        try:
            return run_splitting(self._backend, [self._backend.preprocess(i) for i in images])
        except DeviceFatalError:
            # The device is gone for this process: end it, so that Ray restarts the actor
            # (a new process, a new CUDA context) and retries this batch there.
            log.exception("device lost; ending the actor so that Ray restarts it")
            os._exit(1)
        except Exception as exc:  # this batch failed, as the service's engine_error
            log.exception("inference failed on a batch of %d", len(images))
            failure = Failure(
                ErrorCode.ENGINE_ERROR.value, f"inference failed: {type(exc).__name__}"
            )
            return [(None, None, failure)] * len(images)
