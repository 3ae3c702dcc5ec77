"""decode_image on real encoders' output: formats, modes, orientation, frames, junk."""

from __future__ import annotations

import io
from typing import IO, Literal

import pytest
from PIL import Image, ImageFile

from fashion_florence_client.problems import ErrorCode
from service.intake.decode import SUPPORTED_FORMATS, sniff_format
from tests.service.intake.imagegen import (
    decode,
    encode,
    expect_error,
    gif_frames,
    noise,
    real_photo_bytes,
)

# --- supported formats -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", SUPPORTED_FORMATS)
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


# --- modes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "fmt", "value", "expected"),
    [
        ("1", "PNG", 1, (255, 255, 255)),
        ("L", "PNG", 90, (90, 90, 90)),
        ("L", "JPEG", 90, (90, 90, 90)),
        ("P", "PNG", 0, (0, 0, 0)),  # default palette: index 0 is black
        ("RGB", "WEBP", (10, 200, 30), (10, 200, 30)),
        ("I;16", "PNG", 128 * 256, (128, 128, 128)),  # scaled, not clipped to white
    ],
)
def test_every_mode_becomes_rgb(
    mode: str, fmt: str, value: int | tuple[int, ...], expected: tuple[int, int, int]
) -> None:
    image = decode(encode(Image.new(mode, (8, 8), value), fmt))
    assert image.mode == "RGB"
    assert all(abs(a - b) <= 4 for a, b in zip(image.getpixel((4, 4)), expected, strict=True))  # type: ignore[arg-type]


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


def test_palette_with_transparency_uses_white() -> None:
    source = Image.new("P", (6, 6), 1)
    source.putpalette([0, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    source.putpixel((0, 0), 0)
    image = decode(encode(source, "PNG", transparency=0))
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((3, 3)) == (0, 0, 255)


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


# --- frames -------------------------------------------------------------------------------


def test_animated_gif_gives_its_first_frame() -> None:
    first = Image.new("P", (6, 6), 1)
    first.putpalette([0, 0, 0, 0, 0, 255] + [0] * (254 * 3))
    first.putpixel((0, 0), 0)  # index 0 is the transparent one
    second = Image.new("P", (6, 6), 0)
    second.putpalette([0, 255, 0] * 256)
    data = encode(first, "GIF", save_all=True, append_images=[second], transparency=0)
    image = decode(data)
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((3, 3)) == (0, 0, 255)  # first frame, not the green second one


def test_thousand_frame_gif_is_not_read_past_frame_zero() -> None:
    data = gif_frames(1000)
    with Image.open(io.BytesIO(data)) as check:
        assert getattr(check, "n_frames", 1) == 1000
    image = decode(data, max_image_frames=10)  # GIFs are never counted, so no refusal
    assert image.getpixel((0, 0)) == (0, 255, 0)  # palette index 0 of frame 0


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_declared_frame_count_over_the_cap_is_too_large(fmt: str) -> None:
    frames = [noise((8, 8), seed) for seed in range(6)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], lossless=True)
    with Image.open(io.BytesIO(data)) as check:
        declared = int(getattr(check, "n_frames", 1))
    assert declared > 2
    error = expect_error(ErrorCode.IMAGE_TOO_LARGE, data, max_image_frames=declared - 1)
    assert "frames" in error.detail
    assert decode(data, max_image_frames=declared).size == (8, 8)


# --- refused content -----------------------------------------------------------------------


def test_empty_is_invalid_image() -> None:
    expect_error(ErrorCode.INVALID_IMAGE, b"")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(bytes(range(256)) * 8, id="random-bytes"),
        pytest.param(b"hello, this is plain text\n" * 10, id="text"),
        pytest.param(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< >>\nendobj\n", id="pdf"),
        pytest.param(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", id="eps"),
        pytest.param(b"\xc5\xd0\xd3\xc6" + bytes(28), id="eps-binary"),
        pytest.param(b"8BPS\x00\x01" + bytes(6) + b"\x00\x03" + bytes(16), id="psd"),
        pytest.param(b"<svg xmlns='http://www.w3.org/2000/svg'/>", id="svg"),
        pytest.param(b"\x00\x00\x00\x1cftypheic" + bytes(20), id="heic"),
        pytest.param(b"\x00\x00\x00\x1cftypavif" + bytes(20), id="avif"),
    ],
)
def test_non_images_are_unsupported_image_format(data: bytes) -> None:
    expect_error(ErrorCode.UNSUPPORTED_IMAGE_FORMAT, data)


@pytest.mark.parametrize("fmt", ["TIFF", "BMP", "ICO", "PPM", "TGA", "PCX"])
def test_pillow_formats_outside_the_allowlist_are_unsupported(fmt: str) -> None:
    data = encode(Image.new("RGB", (16, 16)), fmt)
    with Image.open(io.BytesIO(data)) as check:  # Pillow itself can read it
        assert check.format == fmt
    expect_error(ErrorCode.UNSUPPORTED_IMAGE_FORMAT, data)


def test_gif_polyglot_decodes_as_the_gif_only() -> None:
    # A GIF with a ZIP/HTML payload appended ("GIFAR"): only the GIF is ever read.
    gif = encode(Image.new("P", (4, 4), 0), "GIF")
    data = gif + b"PK\x03\x04" + b"<html><script>alert(1)</script></html>"
    assert decode(data).size == (4, 4)


def test_format_is_fixed_by_the_magic_bytes() -> None:
    # PNG magic, JPEG body: Pillow may try the PNG plugin only, so this is a broken PNG.
    jpeg = encode(Image.new("RGB", (8, 8)), "JPEG")
    error = expect_error(ErrorCode.INVALID_IMAGE, b"\x89PNG\r\n\x1a\n" + jpeg[3:])
    assert "PNG" in error.detail


def test_pillow_is_told_to_try_the_sniffed_plugin_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    real_open = Image.open

    def spy(fp: IO[bytes], mode: Literal["r"] = "r", formats: object = None) -> Image.Image:
        seen.append(formats)
        return real_open(fp, mode, formats)  # type: ignore[arg-type]

    monkeypatch.setattr(Image, "open", spy)
    decode(encode(Image.new("RGB", (4, 4)), "WEBP"))
    assert seen == [("WEBP",)]


def test_truncated_jpeg_is_invalid_image() -> None:
    data = encode(noise((256, 256)), "JPEG", quality=90)
    error = expect_error(ErrorCode.INVALID_IMAGE, data[: len(data) // 2])
    assert "JPEG" in error.detail
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "GIF"])
def test_truncated_images_are_invalid(fmt: str) -> None:
    data = encode(noise((128, 128)), fmt)
    expect_error(ErrorCode.INVALID_IMAGE, data[: len(data) // 2])


def test_truncated_real_photo_is_invalid_image() -> None:
    data = real_photo_bytes()
    expect_error(ErrorCode.INVALID_IMAGE, data[: len(data) * 2 // 3])


def test_corrupt_png_is_invalid_image() -> None:
    data = bytearray(encode(noise((64, 64)), "PNG"))
    data[60:200] = bytes(140)  # smash the IDAT stream
    expect_error(ErrorCode.INVALID_IMAGE, bytes(data))


@pytest.mark.parametrize(
    "data",
    [b"\xff\xd8\xff", b"\xff\xd8\xff\xe0" + b"\x00" * 20, b"\x89PNG\r\n\x1a\n", b"GIF89a"],
)
def test_magic_bytes_only_is_invalid_image(data: bytes) -> None:
    expect_error(ErrorCode.INVALID_IMAGE, data)
