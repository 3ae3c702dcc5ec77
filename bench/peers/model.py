"""What every peer server runs, so the servers differ only in serving.

* :class:`SameEngine`: this project's engine (constrained jump-forward decoding, the
  service's defaults), with our intake's decode and the engine's own preprocessing: what
  a peer gets when it wraps our engine.
* :class:`UsersModel`: Florence-2 as an image-to-text model is usually served: the HF
  processor, batched ``generate`` (greedy, no grammar), the text parsed afterwards.

Both count, in a file named by ``BENCH_PEER_COUNT_FILE``, each batch the model ran (images,
valid answers, seconds): the peer's worker may be another process (LitServe, BentoML, Ray
actors), so a file appended with ``O_APPEND`` is how the benchmark counts engine calls
the same way for every peer. Nothing here knows which server calls it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from PIL import Image
from pydantic import ValidationError

from fashion_florence_client.schema import FashionAttributes
from service.settings import Settings

#: Names the counter file; unset, nothing is counted.
COUNT_FILE_ENV: Final = "BENCH_PEER_COUNT_FILE"
#: Names the model directory for peers whose entry point takes no arguments (BentoML).
MODEL_DIR_ENV: Final = "BENCH_PEER_MODEL_DIR"
#: Batch size and wait every peer is configured with (ours: FF_MAX_BATCH_SIZE default).
MAX_BATCH: Final = Settings.model_construct().max_batch_size
BATCH_WAIT_S: Final = 0.01
#: The service's defaults, which the peers must match.
SETTINGS: Final = Settings.model_construct()


class BadImageError(ValueError):
    """The upload is not a decodable image (the peer maps it to its own error)."""


@dataclass(frozen=True)
class CountRecord:
    images: int
    valid: int
    seconds: float


def record_batch(images: int, valid: int, seconds: float) -> None:
    path = os.environ.get(COUNT_FILE_ENV)
    if not path:
        return
    line = f"{images} {valid} {seconds:.6f}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write of a short line: appends do not interleave
    finally:
        os.close(fd)


def read_counts(path: Path) -> list[CountRecord]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        images, valid, seconds = line.split()
        rows.append(CountRecord(int(images), int(valid), float(seconds)))
    return rows


def set_torch_threads() -> int:
    """The thread count our service gives its model (FF_TORCH_THREADS default)."""
    import torch

    from service.inference.engine import cpu_threads_for_model

    threads = cpu_threads_for_model(0, torch.device("cpu"))
    if threads is not None:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def model_dir_from_env() -> Path:
    value = os.environ.get(MODEL_DIR_ENV)
    if not value:
        raise RuntimeError(f"{MODEL_DIR_ENV} must name the model directory")
    return Path(value)


def decode(data: bytes, image_size: int) -> Image.Image:
    """Our intake's decode with the service's limits; BadImageError for any bad upload."""
    from service.errors import ServiceError
    from service.intake.decode import decode_image

    try:
        return decode_image(
            data,
            max_image_bytes=SETTINGS.max_image_bytes,
            max_image_pixels=SETTINGS.max_image_pixels,
            target_size=image_size,
        )
    except ServiceError as exc:
        raise BadImageError(str(exc)) from exc


class SameEngine:
    """Our engine, loaded the way the service loads it (same mode, bound, threads)."""

    def __init__(self, model_dir: Path) -> None:
        import torch

        from model_store.loading import load_model
        from service.inference.engine import FlorenceEngine, decoding_mode

        self.threads = set_torch_threads()
        loaded = load_model(str(model_dir), device=torch.device("cpu"), dtype=torch.float32)
        self.engine = FlorenceEngine(
            loaded, max_new_tokens=SETTINGS.max_new_tokens, decoding=decoding_mode(SETTINGS)
        )
        self.engine.warmup()

    def prepare(self, data: bytes) -> Any:
        """Bytes to the engine's input; raises BadImageError."""
        return self.engine.preprocess(decode(data, self.engine.info.image_size))

    def run(self, prepared: Sequence[Any]) -> list[dict[str, Any]]:
        """One batch; an answer per image (attributes, or the engine's failure)."""
        started = time.perf_counter()
        outcomes = self.engine.run_batch(prepared)
        valid = sum(outcome.ok for outcome in outcomes)
        record_batch(len(outcomes), valid, time.perf_counter() - started)
        return [
            {"attributes": o.attributes.model_dump()}
            if o.attributes is not None
            else {"error": {"code": "invalid_model_output", "detail": o.error_detail}}
            for o in outcomes
        ]


class UsersModel:
    """Florence-2 as its model card and the peers' image-to-text examples serve it."""

    def __init__(self, model_dir: Path) -> None:
        import torch

        from model_store.loading import load_model

        self.threads = set_torch_threads()
        self._loaded = load_model(str(model_dir), device=torch.device("cpu"), dtype=torch.float32)
        self._prompt = self._loaded.manifest.prompt
        self.run([Image.new("RGB", (64, 64), "gray")])  # warm-up, as the engine does

    def run(self, images: Sequence[Image.Image]) -> list[dict[str, Any]]:
        """processor(text, images) -> generate -> batch_decode -> parse, greedy."""
        import torch

        started = time.perf_counter()
        model, processor = self._loaded.model, self._loaded.processor
        inputs = processor(
            text=[self._prompt] * len(images), images=list(images), return_tensors="pt"
        )
        with torch.inference_mode():
            sequences = model.generate(
                **inputs,
                max_new_tokens=SETTINGS.max_new_tokens,
                do_sample=False,
                num_beams=1,
                # Florence-2's shipped no_repeat_ngram_size=3 forbids the `","` every JSON
                # object repeats; a user who got no JSON at all would turn it off too.
                no_repeat_ngram_size=0,
            )
        texts: list[str] = processor.batch_decode(sequences, skip_special_tokens=True)  # type: ignore[no-untyped-call]
        answers = [users_answer(text) for text in texts]
        valid = sum("attributes" in answer for answer in answers)
        record_batch(len(images), valid, time.perf_counter() - started)
        return answers


def users_answer(text: str) -> dict[str, Any]:
    """The text, and the attributes when it parses as schema-valid JSON."""
    try:
        return {"text": text, "attributes": FashionAttributes.from_model_text(text).model_dump()}
    except ValidationError:
        return {"text": text}


def open_image(data: bytes) -> Image.Image:
    """A user's decode: PIL, RGB; BadImageError for anything PIL cannot read."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImageError(f"{type(exc).__name__}: {exc}") from exc
