"""Turn untrusted image bytes into a fully decoded RGB :class:`PIL.Image.Image`.

The order of checks is the defence: byte size first, then the format is sniffed from magic
bytes (so "not an image" is a 415 and "a broken image" a 422), then the declared pixel size
is checked against the limit while the image is still lazy, and only then are pixels decoded.

Pure CPU work with no shared state: safe to call from a thread pool. Pillow's process-wide
knobs (``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``, warning filters) are
neither read for our limits nor changed.
"""

from __future__ import annotations

import io
from typing import Final

from PIL import Image, ImageOps

from service.errors import ErrorCode, ServiceError

__all__ = ["SUPPORTED_FORMATS", "decode_image", "sniff_format"]

#: Pillow format names accepted, in the order they are tried.
SUPPORTED_FORMATS: Final = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

_WHITE: Final = (255, 255, 255, 255)
# BITMAPCOREHEADER, BITMAPINFOHEADER, the OS/2 and V2..V5 variants.
_BMP_DIB_HEADER_SIZES: Final = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
# Modes that carry an alpha channel and must be composited on white.
_ALPHA_MODES: Final = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


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
    if (
        data[:2] == b"BM"
        and len(data) >= 18
        and int.from_bytes(data[14:18], "little") in _BMP_DIB_HEADER_SIZES
    ):
        return "BMP"
    return None


def decode_image(data: bytes, *, max_image_bytes: int, max_image_pixels: int) -> Image.Image:
    """Decode ``data`` into a loaded RGB image, or raise :class:`ServiceError`.

    - empty -> ``INVALID_IMAGE``; more than ``max_image_bytes`` -> ``IMAGE_TOO_LARGE``
    - not JPEG/PNG/WebP/GIF/BMP by its magic bytes -> ``UNSUPPORTED_MEDIA_TYPE``
    - width * height over ``max_image_pixels`` (checked before decoding) -> ``IMAGE_TOO_LARGE``
    - a supported format that is corrupt or truncated -> ``INVALID_IMAGE``

    EXIF orientation is applied; alpha is composited on white; GIF/WebP give the first frame.
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
            ErrorCode.UNSUPPORTED_MEDIA_TYPE,
            "The content is not a supported image; accepted formats are "
            "JPEG, PNG, WebP, GIF and BMP.",
        )
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as opened:
            _check_pixels(opened.size, max_image_pixels)
            opened.load()
            return _to_rgb(_apply_orientation(opened))
    except ServiceError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own (global) guard fired before ours could; still a too-large image.
        raise ServiceError(
            ErrorCode.IMAGE_TOO_LARGE, f"The image has too many pixels ({exc})."
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # corrupt input makes Pillow raise many types
        raise ServiceError(
            ErrorCode.INVALID_IMAGE,
            f"The {fmt} image could not be decoded ({type(exc).__name__}: {exc}).",
        ) from None


def _check_pixels(size: tuple[int, int], max_image_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ServiceError(
            ErrorCode.INVALID_IMAGE, f"The image declares an empty size {width}x{height}."
        )
    if width * height > max_image_pixels:
        raise ServiceError(
            ErrorCode.IMAGE_TOO_LARGE,
            f"The image is {width}x{height} = {width * height} pixels; "
            f"the limit is {max_image_pixels} pixels.",
        )


def _apply_orientation(image: Image.Image) -> Image.Image:
    """``image`` turned upright by its EXIF orientation; unchanged if the EXIF is unreadable."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # broken EXIF does not make the pixels invalid
        return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """A new, loaded RGB image; transparency is composited on white."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grey: a plain convert would clip every value above 255 to white.
        image = image.convert("I").point(lambda value: value / 256).convert("L")
        mode = image.mode
    has_alpha = mode in _ALPHA_MODES or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        background.alpha_composite(rgba)
        return background.convert("RGB")
    rgb = image.convert("RGB")
    rgb.load()
    return rgb
