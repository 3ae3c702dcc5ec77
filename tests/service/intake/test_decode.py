"""decode_image on real encoders' output: formats, orientation, alpha, limits, junk."""

from __future__ import annotations

import io
import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from service.errors import ErrorCode, ServiceError
from service.intake import decode_image
from service.intake.decode import sniff_format

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


def png_declaring(width: int, height: int, idat: bytes) -> bytes:
    """A PNG header declaring ``width`` x ``height`` 8-bit grey, with the given IDAT."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def real_photo_bytes() -> bytes:
    photos = sorted(DRESS_DIR.glob("*.jpg"))
    if not photos:
        pytest.skip(f"no sample photos under {DRESS_DIR}")
    return photos[0].read_bytes()


# --- supported formats -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_each_supported_format_decodes_to_loaded_rgb(fmt: str) -> None:
    source = Image.new("RGB", (37, 23), (200, 30, 40))
    data = encode(source, fmt)
    assert sniff_format(data) == fmt
    image = decode(data)
    assert image.mode == "RGB"
    assert image.size == (37, 23)
    red, green, blue = image.getpixel((18, 11))  # type: ignore[misc]
    assert red > 150
    assert green < 80
    assert blue < 80
    assert getattr(image, "fp", None) is None  # detached from the input buffer


def test_real_photo_decodes() -> None:
    data = real_photo_bytes()
    image = decode(data)
    assert image.mode == "RGB"
    with Image.open(io.BytesIO(data)) as reference:
        width, height = reference.size
    assert sorted(image.size) == sorted((width, height))
    assert image.getcolors(maxcolors=100) is None  # real content: over 100 colours


def test_grayscale_becomes_rgb_with_equal_channels() -> None:
    image = decode(encode(Image.new("L", (8, 8), 90), "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (90, 90, 90)


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    image = decode(encode(Image.new("I;16", (4, 4), 128 * 256), "PNG"))
    assert image.getpixel((0, 0)) == (128, 128, 128)


def test_png_alpha_is_composited_on_white() -> None:
    source = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    source.putpixel((1, 0), (255, 0, 0, 255))
    source.putpixel((2, 0), (255, 0, 0, 128))
    image = decode(encode(source, "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white, not black
    assert image.getpixel((1, 0)) == (255, 0, 0)
    red, green, blue = image.getpixel((2, 0))  # type: ignore[misc]
    assert red == 255
    assert 120 <= green <= 135
    assert green == blue


def test_la_png_is_composited_on_white() -> None:
    image = decode(encode(Image.new("LA", (2, 2), (0, 0)), "PNG"))
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_palette_gif_with_transparency_uses_white_and_first_frame() -> None:
    first = Image.new("P", (6, 6), 1)
    first.putpalette([0, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    first.putpixel((0, 0), 0)  # index 0 is the transparent one
    second = Image.new("P", (6, 6), 0)
    second.putpalette([0, 255, 0] * 256)
    data = encode(first, "GIF", save_all=True, append_images=[second], transparency=0)
    image = decode(data)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((3, 3)) == (0, 0, 255)  # first frame, not the green second one


def test_webp_with_alpha_decodes() -> None:
    image = decode(encode(Image.new("RGBA", (10, 10), (0, 0, 255, 0)), "WEBP", lossless=True))
    assert image.getpixel((5, 5)) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb() -> None:
    image = decode(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG"))
    red, green, blue = image.getpixel((4, 4))  # type: ignore[misc]
    assert image.mode == "RGB"
    assert red > 200
    assert green < 60
    assert blue < 60


def test_exif_orientation_is_applied() -> None:
    source = Image.new("RGB", (40, 20), (0, 0, 255))
    source.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image = decode(encode(source, "JPEG", exif=exif, quality=95))
    assert image.size == (20, 40)
    top_red, _, top_blue = image.getpixel((10, 5))  # type: ignore[misc]
    bottom_red, _, bottom_blue = image.getpixel((10, 35))  # type: ignore[misc]
    assert (top_red > 200, top_blue < 60) == (True, True)  # the red half is now on top
    assert (bottom_red < 60, bottom_blue > 200) == (True, True)


# --- rejected content ----------------------------------------------------------------------


def test_empty_is_invalid_image() -> None:
    expect_error(ErrorCode.INVALID_IMAGE, b"")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(bytes(range(256)) * 8, id="random-bytes"),
        pytest.param(b"hello, this is plain text\n" * 10, id="text"),
        pytest.param(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< >>\nendobj\n", id="pdf"),
        pytest.param(b"<svg xmlns='http://www.w3.org/2000/svg'/>", id="svg"),
        pytest.param(b"BMW is a car, not a bitmap header\n", id="text-starting-BM"),
    ],
)
def test_non_images_are_unsupported_media_type(data: bytes) -> None:
    expect_error(ErrorCode.UNSUPPORTED_MEDIA_TYPE, data)


def test_pillow_format_outside_the_allow_list_is_unsupported() -> None:
    tiff = encode(Image.new("RGB", (4, 4)), "TIFF")
    with Image.open(io.BytesIO(tiff)) as check:  # Pillow itself can read it
        assert check.format == "TIFF"
    expect_error(ErrorCode.UNSUPPORTED_MEDIA_TYPE, tiff)


def test_truncated_jpeg_is_invalid_image() -> None:
    data = encode(noise((256, 256)), "JPEG", quality=90)
    error = expect_error(ErrorCode.INVALID_IMAGE, data[: len(data) // 2])
    assert "JPEG" in error.detail


def test_truncated_real_photo_is_invalid_image() -> None:
    data = real_photo_bytes()
    expect_error(ErrorCode.INVALID_IMAGE, data[: len(data) * 2 // 3])


def test_corrupt_png_is_invalid_image() -> None:
    data = bytearray(encode(noise((64, 64)), "PNG"))
    data[60:200] = bytes(140)  # smash the IDAT stream
    expect_error(ErrorCode.INVALID_IMAGE, bytes(data))


def test_magic_bytes_only_is_invalid_image() -> None:
    expect_error(ErrorCode.INVALID_IMAGE, b"\xff\xd8\xff\xe0" + b"\x00" * 20)


# --- limits ---------------------------------------------------------------------------------


def test_too_many_bytes_is_image_too_large() -> None:
    data = encode(Image.new("RGB", (64, 64)), "PNG")
    expect_error(ErrorCode.IMAGE_TOO_LARGE, data, max_image_bytes=len(data) - 1)
    assert decode(data, max_image_bytes=len(data)).size == (64, 64)


def test_too_many_bytes_is_checked_before_sniffing() -> None:
    expect_error(ErrorCode.IMAGE_TOO_LARGE, b"not an image at all", max_image_bytes=5)


def test_too_many_pixels_is_image_too_large() -> None:
    data = encode(Image.new("RGB", (64, 64)), "PNG")
    error = expect_error(ErrorCode.IMAGE_TOO_LARGE, data, max_image_pixels=64 * 64 - 1)
    assert "64x64" in error.detail
    assert decode(data, max_image_pixels=64 * 64).size == (64, 64)


def test_pixel_limit_is_checked_before_pixel_data_is_decoded() -> None:
    # A declared 5000x5000 image whose pixel data is garbage: if pixels were decoded first
    # this would be INVALID_IMAGE; the size check must win.
    data = png_declaring(5000, 5000, b"garbage, not zlib")
    expect_error(ErrorCode.INVALID_IMAGE, data, max_image_pixels=5000 * 5000)
    expect_error(ErrorCode.IMAGE_TOO_LARGE, data, max_image_pixels=1_000_000)


def test_compressed_pixel_bomb_is_image_too_large() -> None:
    # 20000 x 20000 declared in a ~100-byte file; must not be decoded (1.6 GB as RGBA).
    data = png_declaring(20_000, 20_000, zlib.compress(bytes(20_001 * 4)))
    assert len(data) < 200
    expect_error(ErrorCode.IMAGE_TOO_LARGE, data)


def test_pillow_global_bomb_guard_maps_to_image_too_large() -> None:
    # With a very generous limit of ours, Pillow's own DecompressionBombError still fires.
    before = Image.MAX_IMAGE_PIXELS
    data = png_declaring(20_000, 20_000, zlib.compress(bytes(100)))
    expect_error(ErrorCode.IMAGE_TOO_LARGE, data, max_image_pixels=10**12)
    assert before == Image.MAX_IMAGE_PIXELS  # the global was not touched
