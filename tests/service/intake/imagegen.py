"""Generated test images (no binary fixtures): real encoders' output and crafted headers."""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from fashion_florence_client.problems import ErrorCode
from service.errors import ServiceError
from service.intake import decode_image

REPO_ROOT = Path(__file__).resolve().parents[3]
DRESS_DIR = REPO_ROOT.parent / "shared" / "data" / "clothing-small" / "test" / "dress"

MB = 1024 * 1024
LIMITS = {"max_image_bytes": 10 * MB, "max_image_pixels": 40_000_000}


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def decode(data: bytes, **limits: int) -> Image.Image:
    return decode_image(data, **{**LIMITS, **limits})


def expect_error(code: ErrorCode, data: bytes, **limits: int) -> ServiceError:
    with pytest.raises(ServiceError) as info:
        decode(data, **limits)
    assert info.value.code is code, info.value.detail
    assert info.value.detail
    return info.value


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Incompressible RGB content, so encoded files are large enough to truncate."""
    rng = random.Random(seed)
    return Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def png_declaring(width: int, height: int, idat: bytes, extra: bytes = b"") -> bytes:
    """A PNG header declaring ``width`` x ``height`` 8-bit grey, with the given IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + extra
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def real_photo_bytes() -> bytes:
    photos = sorted(DRESS_DIR.glob("*.jpg"))
    if not photos:
        pytest.skip(f"no sample photos under {DRESS_DIR}")
    return photos[0].read_bytes()


def gif_frames(count: int, size: tuple[int, int] = (4, 4)) -> bytes:
    """An animated GIF whose frame ``i`` is palette index ``i % 256`` (frame 0 is black)."""
    palette = [v for i in range(256) for v in (i, 255 - i, 0)]
    frames = []
    for i in range(count):
        frame = Image.new("P", size, i % 256)
        frame.putpalette(palette)
        frames.append(frame)
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10)
