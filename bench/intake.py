"""Intake costs on this machine: decode + preprocess per image, and the URL fetcher's overhead.

    python -m bench.intake [--repeats N] [--fetches N]

1. Photo-like 12 MP (4000x3000) and 24 MP JPEGs, decoded and turned into the model's input
   tensor (Florence-2's resize + normalize, the engine's own ``PlainTransform``) at several
   model input sizes (768 is Florence-2's), with JPEG ``draft()`` (``target_size``) and
   without it.
2. The same for every real photo in ``../shared/data/clothing-small`` (mean per image).
3. Fetching a JPEG from a local HTTP server on 127.0.0.1: the SSRF-safe ``ImageFetcher``
   against a plain ``httpx.AsyncClient`` on the same server (its overhead per fetch).

Prints a Markdown table and writes ``bench/results/intake.json``. Single-threaded figures:
the service runs ``FF_PREPROCESS_THREADS`` of these at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageChops

from service.inference.engine import PlainTransform
from service.intake import ImageFetcher, decode_image

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "data" / "clothing-small" / "test"
RESULTS = Path(__file__).resolve().parent / "results" / "intake.json"
LIMITS = {"max_image_bytes": 20 * 1024 * 1024, "max_image_pixels": 40_000_000}
# Florence-2's processor: bicubic, rescale 1/255, ImageNet mean/std.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class PreprocessRow:
    image: str
    model_size: int
    full_ms: float  # min over repeats (least disturbed by other load), then the median
    full_median_ms: float
    draft_ms: float
    draft_median_ms: float
    decoded_full: str
    decoded_draft: str

    @property
    def speedup(self) -> float:
        return self.full_ms / self.draft_ms


def photo_jpeg(width: int, height: int, grain: float = 10.0) -> bytes:
    """A photo-like JPEG: a real photo upscaled, with sensor-like noise (realistic entropy)."""
    photos = sorted(PHOTOS.glob("*/*.jpg"))
    base = (
        Image.open(photos[0]).convert("RGB")
        if photos
        else Image.linear_gradient("L").convert("RGB")
    )
    base = base.resize((width, height), Image.Resampling.BICUBIC)
    noise = Image.merge("RGB", [Image.effect_noise((width, height), grain) for _ in range(3)])
    noisy = ImageChops.add(base, noise, scale=1.0, offset=-128)
    buffer = io.BytesIO()
    noisy.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def transform_for(size: int) -> PlainTransform:
    return PlainTransform(size, Image.Resampling.BICUBIC, 1 / 255, MEAN, STD)


def preprocess(data: bytes, transform: PlainTransform, target: int | None) -> np.ndarray:
    return transform(decode_image(data, target_size=target, **LIMITS))


def interleaved_ms(
    first: Callable[[], object], second: Callable[[], object], repeats: int
) -> tuple[list[float], list[float]]:
    """Times of ``first`` and ``second`` run alternately, so both see the same load."""
    first(), second()  # warm: first-call costs (allocator, libjpeg tables) are not per-image
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((first, times[0]), (second, times[1])):
            started = time.perf_counter()
            fn()
            out.append((time.perf_counter() - started) * 1000.0)
    return times


def measure(
    name: str, data: bytes, size: int, repeats: int, draft: int | None = None
) -> PreprocessRow:
    """``draft`` overrides the target handed to the decoder (to price other scales)."""
    transform = transform_for(size)
    target = draft or size
    assert preprocess(data, transform, None).shape == (3, size, size)
    full, drafted = interleaved_ms(
        lambda: preprocess(data, transform, None),
        lambda: preprocess(data, transform, target),
        repeats,
    )
    return PreprocessRow(
        image=name,
        model_size=size,
        full_ms=min(full),
        full_median_ms=statistics.median(full),
        draft_ms=min(drafted),
        draft_median_ms=statistics.median(drafted),
        decoded_full="x".join(map(str, decode_image(data, **LIMITS).size)),
        decoded_draft="x".join(map(str, decode_image(data, target_size=target, **LIMITS).size)),
    )


def measure_photos(size: int, passes: int = 3) -> PreprocessRow:
    """Mean per image over the real photos; min and median over ``passes`` passes."""
    photos = [p.read_bytes() for p in sorted(PHOTOS.glob("*/*.jpg"))]
    transform = transform_for(size)

    def one_pass(target: int | None) -> Callable[[], object]:
        return lambda: [preprocess(data, transform, target) for data in photos]

    full, drafted = interleaved_ms(one_pass(None), one_pass(size), passes)
    per_image = [[t / len(photos) for t in ts] for ts in (full, drafted)]
    sizes = {decode_image(d, **LIMITS).size for d in photos}
    smaller = {decode_image(d, target_size=size, **LIMITS).size for d in photos} - sizes
    return PreprocessRow(
        image=f"clothing-small ({len(photos)} photos)",
        model_size=size,
        full_ms=min(per_image[0]),
        full_median_ms=statistics.median(per_image[0]),
        draft_ms=min(per_image[1]),
        draft_median_ms=statistics.median(per_image[1]),
        decoded_full=f"{len(sizes)} sizes up to {max(w * h for w, h in sizes) / 1e6:.2f} MP",
        decoded_draft=f"{len(smaller)} sizes reduced" if smaller else "unchanged",
    )


@contextlib.contextmanager
def keepalive_server(payload: bytes) -> Iterator[str]:
    """An HTTP/1.1 server on 127.0.0.1 that keeps connections open, as a CDN would."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else delayed ACKs add ~40 ms to every response

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


async def fetch_overhead(payload: bytes, fetches: int) -> dict[str, float]:
    """Mean ms per sequential fetch: plain httpx vs. ImageFetcher, same local server."""
    with keepalive_server(payload) as base:
        url = f"{base}/p.jpg"
        timings: dict[str, float] = {}
        async with httpx.AsyncClient(trust_env=False) as plain:

            async def plain_get() -> bytes:
                return (await plain.get(url)).content

            timings["httpx_ms"] = await _mean_ms(plain_get, fetches)
        async with ImageFetcher(len(payload) + 1, 2.0, 5.0, 10.0, allow_loopback=True) as f:
            timings["fetcher_ip_ms"] = await _mean_ms(lambda: f.fetch(url), fetches)
            by_name = url.replace("127.0.0.1", "localhost")
            timings["fetcher_name_ms"] = await _mean_ms(lambda: f.fetch(by_name), fetches)
    timings["overhead_ms"] = timings["fetcher_ip_ms"] - timings["httpx_ms"]
    return timings


async def _mean_ms(fetch: Callable[[], object], count: int) -> float:
    for _ in range(5):
        await fetch()  # type: ignore[misc]
    started = time.perf_counter()
    for _ in range(count):
        await fetch()  # type: ignore[misc]
    return (time.perf_counter() - started) * 1000.0 / count


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--fetches", type=int, default=300)
    args = parser.parse_args()

    jpeg_12mp, jpeg_24mp = photo_jpeg(4000, 3000), photo_jpeg(6000, 4000)
    smooth_12mp = photo_jpeg(4000, 3000, grain=2.0)  # less noise: less to entropy-decode
    smooth = f"12 MP JPEG, low noise ({len(smooth_12mp) / 1e6:.1f} MB)"
    rows = [
        measure("12 MP JPEG 4000x3000", jpeg_12mp, 768, args.repeats),
        measure("12 MP JPEG 4000x3000", jpeg_12mp, 384, args.repeats),
        measure("12 MP JPEG 4000x3000", jpeg_12mp, 128, args.repeats),
        measure(smooth, smooth_12mp, 768, args.repeats),
        measure(smooth, smooth_12mp, 128, args.repeats),
        measure("24 MP JPEG 6000x4000", jpeg_24mp, 768, args.repeats),
        # Not what the service does: 1/4 scale leaves 750 px < 768 (priced for the record).
        measure("12 MP JPEG, 1/4 scale (750 px < 768)", jpeg_12mp, 768, args.repeats, draft=750),
        measure_photos(768),
        measure_photos(128),
    ]
    photo = next(iter(sorted(PHOTOS.glob("*/*.jpg"))), None)
    payload = photo.read_bytes() if photo else jpeg_12mp
    fetch = asyncio.run(fetch_overhead(payload, args.fetches))

    machine = " ".join(
        f"{platform.machine()} {platform.processor()} {os.cpu_count()} cores".split()
    )
    print(f"machine: {machine}; Python {platform.python_version()}")
    print(f"12 MP JPEG {len(jpeg_12mp) / 1e6:.1f} MB, 24 MP JPEG {len(jpeg_24mp) / 1e6:.1f} MB")
    print("decode + resize + normalize per image, ms: min (median) over repeats\n")
    print("| image | model size | without draft | with draft | speedup | decoded |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.image} | {r.model_size} | {r.full_ms:.1f} ({r.full_median_ms:.1f}) | "
            f"{r.draft_ms:.1f} ({r.draft_median_ms:.1f}) | {r.speedup:.1f}x | "
            f"{r.decoded_full} -> {r.decoded_draft} |"
        )
    print(
        f"\nfetch of {len(payload)} bytes ({args.fetches} sequential, keep-alive, loopback): "
        f"httpx {fetch['httpx_ms']:.3f} ms, ImageFetcher {fetch['fetcher_ip_ms']:.3f} ms by IP, "
        f"{fetch['fetcher_name_ms']:.3f} ms by name; overhead {fetch['overhead_ms']:.3f} ms"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": machine,
                "jpeg_bytes": {"12mp": len(jpeg_12mp), "24mp": len(jpeg_24mp)},
                "preprocess": [asdict(r) | {"speedup": r.speedup} for r in rows],
                "fetch": fetch,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
