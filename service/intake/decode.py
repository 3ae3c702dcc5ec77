"""Turn untrusted image bytes into a fully decoded RGB :class:`PIL.Image.Image`.

The order of checks is the defence, cheapest first, and no pixel is decoded before the
header has passed:

1. byte size; 2. format by magic bytes against the allowlist (JPEG, PNG, WebP, GIF), and
Pillow is then told to try only that one plugin, so a polyglot cannot be read as anything
else; 3. width, height, total pixels and declared frame count from the header, against our
own limits (far below Pillow's global ones); 4. for a large JPEG, ``draft()`` so libjpeg
decodes straight at the smallest 1/2, 1/4 or 1/8 scale still covering the model's input
size (several times faster than decoding 12 MP and resizing); 5. decode the first frame
only; 6. EXIF orientation, guarded; 7. one RGB mode, alpha composited on white.

Errors: not an allowed format -> 415 ``unsupported_image_format``; over a limit -> 413
``image_too_large``; anything Pillow raises on corrupt or truncated data (``OSError``,
``SyntaxError``, ``ValueError``, ``struct.error``, ...) -> 422 ``invalid_image``.
``LOAD_TRUNCATED_IMAGES`` stays off. ``MemoryError`` is logged on its own and answered as
too large. Other exception types are bugs and propagate (a 500 with a traceback); the fuzz
harness in ``tests/service/intake`` looks for exactly those.

Pure CPU work with no shared state: safe to call from a thread pool (see
:mod:`service.intake.worker` for the time budget).
"""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib
from typing import Final

from PIL import Image

from fashion_florence_client.problems import ErrorCode
from service.errors import ServiceError

__all__ = [
    "DEFAULT_MAX_FRAMES",
    "DEFAULT_MAX_SIDE_PX",
    "SUPPORTED_FORMATS",
    "decode_image",
    "sniff_format",
]

log = logging.getLogger(__name__)

#: Pillow format names accepted. HEIC/AVIF would need a plugin added deliberately.
SUPPORTED_FORMATS: Final = ("JPEG", "PNG", "WEBP", "GIF")
DEFAULT_MAX_SIDE_PX: Final = 16_384
DEFAULT_MAX_FRAMES: Final = 1_000

# Pillow warns (not raises) between MAX_IMAGE_PIXELS and twice that. The warning must be an
# error; `warnings.catch_warnings()` per call is not thread-safe before Python 3.14 and
# decoding runs on a thread pool, so the filter is installed once, process-wide, here.
# Anyone may reset warning filters later (test runners do, per test), so _check_header
# also holds every image to Pillow's limit itself: the outcome never depends on the filter.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

#: What Pillow raises on hostile or broken input (its decoders use all of these).
_PILLOW_ERRORS: Final = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    SyntaxError,  # Pillow's "not a PNG/GIF file" and broken chunk structure
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    EOFError,
    struct.error,
    zlib.error,
    ZeroDivisionError,
    OverflowError,
)
_WHITE: Final = (255, 255, 255, 255)
# Modes that carry an alpha channel and must be composited on white.
_ALPHA_MODES: Final = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_ORIENTATION: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG: Final = 0x0112
# A JPEG APP1 segment holds at most 64 KiB; more EXIF than this is not a camera's, and
# parsing it is work an attacker chooses. Orientation is then ignored, not an error.
_MAX_EXIF_BYTES: Final = 256 * 1024
# Only these containers declare their frame count in the header (APNG acTL, WebP ANIM).
# Counting GIF frames means parsing the whole file, so GIFs are never read past frame 0.
_DECLARED_FRAMES: Final = frozenset({"PNG", "WEBP"})


def sniff_format(data: bytes) -> str | None:
    """The supported format ``data`` claims to be by its magic bytes, or ``None``."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return None


def decode_image(
    data: bytes,
    *,
    max_image_bytes: int,
    max_image_pixels: int,
    max_image_side_px: int = DEFAULT_MAX_SIDE_PX,
    max_image_frames: int = DEFAULT_MAX_FRAMES,
    target_size: int | None = None,
) -> Image.Image:
    """Decode ``data`` into a loaded, upright RGB image, or raise :class:`ServiceError`.

    ``target_size`` is the model's square input side: a JPEG at least twice as large in
    both directions is decoded at a reduced scale that still covers it (JPEG ``draft``).
    Without it the image is decoded at full size.
    """
    if not data:
        raise ServiceError(ErrorCode.INVALID_IMAGE, "The image is empty (0 bytes).")
    if len(data) > max_image_bytes:
        raise ServiceError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"The image is {len(data)} bytes; the limit is {max_image_bytes} bytes.",
        )
    fmt = sniff_format(data)
    if fmt is None:
        raise ServiceError(
            ErrorCode.UNSUPPORTED_IMAGE_FORMAT,
            "The content is not a supported image; accepted formats are JPEG, PNG, WebP and GIF.",
        )
    try:
        with Image.open(io.BytesIO(data), formats=(fmt,)) as opened:
            _check_header(opened, fmt, max_image_pixels, max_image_side_px, max_image_frames)
            if fmt == "JPEG" and target_size:
                opened.draft("RGB", (target_size, target_size))
            opened.load()
            return _to_rgb(_upright(opened))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own (global) guard fired before ours could; still a too-large image.
        raise ServiceError(
            ErrorCode.IMAGE_TOO_LARGE, f"The image has too many pixels ({exc})."
        ) from None
    except MemoryError:
        # Within the pixel limits this means the process is short of memory right now.
        log.error("out of memory decoding a %s of %d bytes", fmt, len(data))
        raise ServiceError(
            ErrorCode.IMAGE_TOO_LARGE, "The image needs more memory to decode than is available."
        ) from None
    except _PILLOW_ERRORS as exc:
        raise ServiceError(
            ErrorCode.INVALID_IMAGE,
            f"The {fmt} image could not be decoded ({type(exc).__name__}: {exc}).",
        ) from None


def _check_header(
    image: Image.Image, fmt: str, max_pixels: int, max_side: int, max_frames: int
) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ServiceError(
            ErrorCode.INVALID_IMAGE, f"The image declares an empty size {width}x{height}."
        )
    if width > max_side or height > max_side:
        raise ServiceError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"The image is {width}x{height}; the limit is {max_side} pixels per side.",
        )
    # Pillow's process-wide limit too, in case its warning was not raised as an error.
    max_pixels = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    if width * height > max_pixels:
        raise ServiceError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"The image is {width}x{height} = {width * height} pixels; "
            f"the limit is {max_pixels} pixels.",
        )
    if fmt in _DECLARED_FRAMES:
        frames = int(getattr(image, "n_frames", 1))
        if frames > max_frames:
            raise ServiceError(
                ErrorCode.IMAGE_TOO_LARGE,
                f"The image declares {frames} frames; the limit is {max_frames}.",
            )


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned by its EXIF orientation; unchanged if the EXIF is absent or odd."""
    method = _ORIENTATION.get(_orientation(image))
    return image if method is None else image.transpose(method)


def _orientation(image: Image.Image) -> int:
    raw = image.info.get("exif")
    if isinstance(raw, bytes) and len(raw) > _MAX_EXIF_BYTES:
        log.info("ignoring EXIF of %d bytes (orientation not applied)", len(raw))
        return 1
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except (*_PILLOW_ERRORS, RecursionError):  # broken EXIF does not make pixels invalid
        return 1
    return value if isinstance(value, int) else 1


def _to_rgb(image: Image.Image) -> Image.Image:
    """A loaded RGB image; transparency is composited on white."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grey: a plain convert would clip every value above 255 to white.
        image = image.convert("I").point(lambda value: value / 256).convert("L")
        mode = image.mode
    elif mode == "F":
        image = image.convert("L")
        mode = image.mode
    has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        background.alpha_composite(rgba)
        return background.convert("RGB")
    if mode == "RGB":
        # Already loaded, and leaving `with Image.open()` only drops the file object, not the
        # pixels: no copy (a 12 MP copy costs as much as resizing it).
        return image
    return image.convert("RGB")
