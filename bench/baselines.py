"""Baseline servers to set our service's figures against, and one way to measure them all.

    python -m bench.baselines paper-demo --model-dir DIR --port P [--num-beams 3] [--device auto]
    python -m bench.baselines bare --port P [--decode]
    python -m bench.baselines instant --port P [--image-size 768]

All listen on 127.0.0.1 only, under uvicorn with one worker, and answer the route our
service does, ``POST /v1/extract`` (multipart field ``image``), plus ``GET /readyz``:

* ``paper-demo``: the paper's demo style. Each request alone: PIL decode, the HF
  processor, ``model.generate(num_beams=3)``, parse. Exactly one request is in the model at
  a time (one worker thread, first come first served), which is the property that defines
  this baseline; no batching.
  ``GET /stats`` counts calls and the most requests seen in the model at once.
* ``bare``: FastAPI reads the upload and answers a constant: the floor of HTTP + multipart
  cost. It does not decode the image, while our service's intake does (magic-byte sniff,
  header checks, decode, EXIF); ``--decode`` adds a plain PIL decode, off the event loop as
  ours, so both comparisons are available.
* ``instant``: our real app and server (``create_app`` + ``build_server``) with a backend
  that costs nothing: HTTP, intake (real decode), admission, batcher and serialization,
  with no model. The result cache is off, so every request pays for its decode.

:func:`measure` drives any of them (or our service) the same way, closed loop.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import uvicorn
from fastapi import FastAPI, File, UploadFile
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import ValidationError

from bench.load import closed_loop, percentile_ms
from bench.servers import LOOPBACK, ServerHandle, free_port, spawn
from fashion_florence_client.schema import FashionAttributes
from service.backend import ItemOutcome, ModelInfo, PreparedImage
from service.settings import Settings

ROOT: Final = Path(__file__).resolve().parent.parent
LOG_LEVELS: Final = ("debug", "info", "warning", "error")  # what Settings.log_level allows
#: What bare and instant answer: a valid, fixed set of attributes.
CONSTANT: Final = FashionAttributes(
    category="top",
    primary_color="blue",
    material="cotton",
    style_tags=["casual"],
    occasion_tags=["everyday"],
)
#: The generation bound our service uses by default, so both stop at the same length.
DEFAULT_MAX_NEW_TOKENS: Final[int] = Settings.model_fields["max_new_tokens"].default
#: What PIL raises on bytes that are not a decodable image (the common cases).
_IMAGE_ERRORS: Final = (OSError, ValueError, SyntaxError)


class InvalidImageError(Exception):
    """The upload could not be decoded (paper-demo: told apart from model failures)."""


def _problem(status: int, code: str, detail: str) -> JSONResponse:
    # The same ``code`` field as our problem responses, so bench.load tallies them alike.
    return JSONResponse({"status": status, "code": code, "detail": detail}, status_code=status)


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as opened:
        return opened.convert("RGB")


def bare_app(*, decode: bool = False) -> FastAPI:
    app = FastAPI(title="bare baseline")

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/v1/extract")
    async def extract(image: UploadFile = File(...)) -> Any:  # noqa: B008
        data = await image.read()
        if decode:
            try:
                # In a worker thread, as our intake does: decoding on the loop would stall it.
                await asyncio.to_thread(_decode, data)
            except _IMAGE_ERRORS as exc:
                return _problem(422, "invalid_image", f"{type(exc).__name__}: {exc}")
        return {"attributes": CONSTANT.model_dump()}

    return app


@dataclass
class DemoStats:
    calls: int = 0
    active: int = 0
    max_active: int = 0  # most requests inside the model at once: must stay 1
    in_flight: int = 0
    max_in_flight: int = 0  # most requests in the handler at once: > 1 shows they queued


class PaperDemo:
    """The model, run for one request at a time, in the style of the paper's demo."""

    def __init__(self, model_dir: Path, num_beams: int, device: str, max_new_tokens: int) -> None:
        self._model_dir = model_dir
        self._num_beams = num_beams
        self._device_name = device
        self._max_new_tokens = max_new_tokens
        # One worker thread: requests reach the model one at a time, in arrival order (a
        # contended lock would let later requests overtake, inflating the tail), and a
        # cancelled request cannot free the model while its generate still runs.
        self.serial = ThreadPoolExecutor(1, thread_name_prefix="paper-demo")
        self._counter = threading.Lock()
        self.stats = DemoStats()
        self._loaded: Any = None

    @property
    def ready(self) -> bool:
        return self._loaded is not None

    def load(self) -> None:
        from model_store.loading import load_model
        from service.inference.engine import resolve_device, resolve_dtype

        device = resolve_device(self._device_name)
        dtype = resolve_dtype("auto", device)
        self._loaded = load_model(str(self._model_dir), device=device, dtype=dtype)

    async def predict(self, data: bytes) -> FashionAttributes:
        """Decode, generate and parse one image on the model's thread. Raises
        InvalidImageError, or ValidationError when the output is not valid attributes."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.serial, self._counted, data)

    def _counted(self, data: bytes) -> FashionAttributes:
        self._count(+1)
        try:
            return self._predict(data)
        finally:
            self._count(-1)

    def _count(self, delta: int) -> None:
        with self._counter:
            self.stats.active += delta
            self.stats.calls += max(delta, 0)
            self.stats.max_active = max(self.stats.max_active, self.stats.active)

    def _predict(self, data: bytes) -> FashionAttributes:
        import torch

        try:
            image = _decode(data)
        except _IMAGE_ERRORS as exc:
            raise InvalidImageError(f"{type(exc).__name__}: {exc}") from exc
        model, processor = self._loaded.model, self._loaded.processor
        first = next(model.parameters())
        inputs = processor(text=[self._loaded.manifest.prompt], images=[image], return_tensors="pt")
        with torch.inference_mode():
            sequences = model.generate(
                input_ids=inputs["input_ids"].to(first.device),
                pixel_values=inputs["pixel_values"].to(first.device, dtype=first.dtype),
                num_beams=self._num_beams,
                max_new_tokens=self._max_new_tokens,
                do_sample=False,
                # Florence-2 ships no_repeat_ngram_size=3, which forbids the repeated `","`
                # every JSON object needs; our models are served with 0 as well.
                no_repeat_ngram_size=0,
            )
        text = processor.tokenizer.decode(sequences[0], skip_special_tokens=True)
        return FashionAttributes.from_model_text(text)


def paper_demo_app(demo: PaperDemo) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(demo.load)  # uvicorn listens only after this
        yield
        demo.serial.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="paper-demo baseline", lifespan=lifespan)

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        return JSONResponse({"ready": demo.ready}, status_code=200 if demo.ready else 503)

    @app.get("/stats")
    async def stats() -> dict[str, int]:
        return vars(demo.stats).copy()

    @app.post("/v1/extract")
    async def extract(image: UploadFile = File(...)) -> Any:  # noqa: B008
        data = await image.read()
        demo.stats.in_flight += 1  # the event loop's thread only: no lock needed
        demo.stats.max_in_flight = max(demo.stats.max_in_flight, demo.stats.in_flight)
        try:
            attributes = await demo.predict(data)
        except ValidationError as exc:
            return _problem(422, "invalid_model_output", f"{exc.error_count()} schema error(s)")
        except InvalidImageError as exc:
            return _problem(422, "invalid_image", str(exc))
        finally:
            demo.stats.in_flight -= 1
        return {"attributes": attributes.model_dump()}

    return app


class InstantBackend:
    """An InferenceBackend with no model cost: a tiny prepared image, a fixed valid answer."""

    def __init__(self, image_size: int = 768) -> None:
        # The intake decodes large JPEGs at reduced scale for this size, as for a real model.
        self._image_size = image_size
        self._tiny: PreparedImage = np.zeros((3, 1, 1), dtype=np.float32)
        self._answer = ItemOutcome(CONSTANT.to_target_text(), 30, attributes=CONSTANT)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo("instant", "0", "cpu", "float32", self._image_size, {"name": "instant"})

    def preprocess(self, image: Image.Image) -> PreparedImage:
        return self._tiny

    def run_batch(self, images: Sequence[PreparedImage]) -> list[ItemOutcome]:
        return [self._answer] * len(images)

    def warmup(self) -> None:
        pass

    def check_device(self) -> None:
        pass

    def close(self) -> None:
        pass


def _run_uvicorn(app: FastAPI, port: int, log_level: str) -> None:
    # The options of service.http.server.build_server, so only the app differs.
    config = uvicorn.Config(
        app,
        host=LOOPBACK,
        port=port,
        log_level=log_level,
        workers=1,
        access_log=False,
        timeout_keep_alive=5,
    )
    uvicorn.Server(config).run()


def serve_instant(port: int, image_size: int, log_level: str) -> None:
    """Our real server path; other settings come from FF_* as for the service."""
    from service.http.app import create_app
    from service.http.server import build_server
    from service.telemetry.logs import configure_logging

    # log_level is one of LOG_LEVELS (argparse checked it), which mypy cannot see.
    settings = Settings(host=LOOPBACK, port=port, log_level=log_level, cache_enabled=False)  # type: ignore[arg-type]
    configure_logging(settings.log_format, settings.log_level)
    build_server(create_app(settings, backend=InstantBackend(image_size)), settings).run()


def _spawn_baseline(args: list[str], timeout_s: float) -> ServerHandle:
    port = free_port()
    argv = [sys.executable, "-m", "bench.baselines", *args, "--port", str(port)]
    # bench is not an installed package: run from the repository root.
    return spawn(argv, {}, port, timeout_s=timeout_s, cwd=ROOT)


def spawn_paper_demo(
    model_dir: Path,
    num_beams: int = 3,
    *,
    device: str = "auto",
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    timeout_s: float = 180.0,
) -> ServerHandle:
    args = ["paper-demo", "--model-dir", str(model_dir), "--num-beams", str(num_beams)]
    args += ["--device", device, "--max-new-tokens", str(max_new_tokens)]
    return _spawn_baseline(args, timeout_s)


def spawn_bare(*, decode: bool = False, timeout_s: float = 60.0) -> ServerHandle:
    return _spawn_baseline(["bare", *(["--decode"] if decode else [])], timeout_s)


def spawn_instant(*, image_size: int = 768, timeout_s: float = 60.0) -> ServerHandle:
    return _spawn_baseline(["instant", "--image-size", str(image_size)], timeout_s)


def measure(
    base_url: str,
    payloads: list[bytes],
    concurrency: int,
    requests: int,
    time_limit_s: float,
    *,
    warmup: int = 2,
) -> dict[str, Any]:
    """Closed loop: ``concurrency`` clients, at most ``requests`` requests started within
    ``time_limit_s``, after ``warmup`` uncounted sequential requests (first-call costs
    belong to cold start, measured apart). ``errors`` counts every request without a 200."""
    return asyncio.run(_measure(base_url, payloads, concurrency, requests, time_limit_s, warmup))


async def _measure(
    base_url: str,
    payloads: list[bytes],
    concurrency: int,
    requests: int,
    time_limit_s: float,
    warmup: int,
) -> dict[str, Any]:
    # A request may queue behind all the others (paper-demo serves one at a time), and the
    # loop stops starting requests at time_limit_s: allow the last ones to finish.
    timeout = time_limit_s + 300.0
    # The lean client (bench.rawhttp): httpx costs the shared cores several hundred
    # microseconds per request, which capped every server near 150-350 req/s here.
    if warmup:
        await closed_loop(base_url, payloads[:warmup], 1, warmup, timeout)
    tally = await closed_loop(
        base_url, payloads, concurrency, requests, time_limit_s, request_timeout_s=timeout
    )
    ok = tally.by_status.get(200, 0)
    return {
        "concurrency": concurrency,
        "sent": tally.sent,
        "ok": ok,
        "errors": tally.sent - ok,
        "transport_errors": tally.transport_errors,
        "by_status": dict(sorted(tally.by_status.items())),
        "by_code": dict(sorted(tally.by_code.items())),
        "wall_s": tally.wall_s,
        # Every answer, whatever its status: what a server completed. On random weights the
        # paper demo's free-running output is rarely valid JSON (422), yet the model work
        # was done; ratios against it use this, not ``img_s``.
        "answered_img_s": tally.answered / tally.wall_s if tally.wall_s else 0.0,
        "img_s": ok / tally.wall_s if tally.wall_s else 0.0,
        "p50_ms": percentile_ms(tally.latencies_ok, 0.50),
        "p90_ms": percentile_ms(tally.latencies_ok, 0.90),
        "p99_ms": percentile_ms(tally.latencies_ok, 0.99),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="server", required=True)
    demo = commands.add_parser("paper-demo", help="one request at a time, beam search")
    demo.add_argument("--model-dir", type=Path, required=True)
    demo.add_argument("--num-beams", type=int, default=3)
    demo.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    demo.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    bare = commands.add_parser("bare", help="read the upload, answer a constant")
    bare.add_argument("--decode", action="store_true", help="also decode the image with PIL")
    instant = commands.add_parser("instant", help="our app with a zero-cost backend")
    instant.add_argument("--image-size", type=int, default=768)
    for command in (demo, bare, instant):
        command.add_argument("--port", type=int, required=True)
        command.add_argument("--log-level", choices=LOG_LEVELS, default="warning")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.server == "paper-demo":
        demo = PaperDemo(args.model_dir, args.num_beams, args.device, args.max_new_tokens)
        _run_uvicorn(paper_demo_app(demo), args.port, args.log_level)
    elif args.server == "bare":
        _run_uvicorn(bare_app(decode=args.decode), args.port, args.log_level)
    else:
        serve_instant(args.port, args.image_size, args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
