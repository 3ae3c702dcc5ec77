"""decode_image's limits and fast paths: bombs, header checks, draft(), EXIF, failures."""

from __future__ import annotations

import io
import subprocess
import sys
import time
import tracemalloc
import zlib

import pytest
from PIL import Image, ImageFile

from fashion_florence_client.problems import ErrorCode
from service.intake.decode import decode_image
from tests.service.intake.imagegen import (
    LIMITS,
    REPO_ROOT,
    decode,
    encode,
    expect_error,
    noise,
    png_chunk,
    png_declaring,
)

# --- bytes, pixels, sides ------------------------------------------------------------------


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


def test_a_side_over_the_limit_is_image_too_large() -> None:
    data = encode(Image.new("L", (300, 2)), "PNG")  # 600 pixels: only the side is too long
    error = expect_error(ErrorCode.IMAGE_TOO_LARGE, data, max_image_side_px=299)
    assert "per side" in error.detail
    assert decode(data, max_image_side_px=300).size == (300, 2)


def test_pixel_limit_is_checked_before_pixel_data_is_decoded() -> None:
    # A declared 5000x5000 image whose pixel data is garbage: if pixels were decoded first
    # this would be INVALID_IMAGE; the size check must win.
    data = png_declaring(5000, 5000, b"garbage, not zlib")
    expect_error(ErrorCode.INVALID_IMAGE, data, max_image_pixels=5000 * 5000)
    expect_error(ErrorCode.IMAGE_TOO_LARGE, data, max_image_pixels=1_000_000)


def test_tiny_png_claiming_50k_by_50k_fails_fast_in_bounded_memory() -> None:
    data = png_declaring(50_000, 50_000, zlib.compress(bytes(400_000)))
    assert len(data) < 1024
    tracemalloc.start()
    started = time.perf_counter()
    try:
        expect_error(ErrorCode.IMAGE_TOO_LARGE, data)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert time.perf_counter() - started < 0.5
    assert peak < 4 * 1024 * 1024, peak  # 2.5 GB if it were decoded


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [10_000, 20_000])  # Pillow warns at 89 MP, raises at 179 MP
def test_pillow_bomb_guard_maps_to_image_too_large(side: int) -> None:
    # Our limits set far above Pillow's, so only Pillow's guard stands: its warning must be
    # an error too (10000^2 is in the warning band), never a decode of garbage.
    before = Image.MAX_IMAGE_PIXELS
    data = png_declaring(side, side, zlib.compress(bytes(100)))
    error = expect_error(
        ErrorCode.IMAGE_TOO_LARGE, data, max_image_pixels=10**12, max_image_side_px=65_535
    )
    assert "pixels" in error.detail
    assert before == Image.MAX_IMAGE_PIXELS  # the global was not touched


_OPEN_IN_A_FRESH_PROCESS = """
import io, sys
from PIL import Image
import service.intake.decode
try:
    Image.open(io.BytesIO(sys.stdin.buffer.read()))
except Image.DecompressionBombWarning:
    print("raised")
"""


def test_importing_the_decoder_makes_the_bomb_warning_an_error() -> None:
    # pytest resets warning filters around each test, so this is checked where nothing does.
    data = png_declaring(10_000, 10_000, zlib.compress(bytes(100)))
    result = subprocess.run(
        [sys.executable, "-c", _OPEN_IN_A_FRESH_PROCESS],
        input=data, capture_output=True, cwd=REPO_ROOT, timeout=60, check=True,
    )  # fmt: skip
    assert result.stdout.strip() == b"raised", result.stderr.decode()


# --- JPEG draft(): decode large photos at reduced scale -------------------------------------


def gradient_jpeg(size: tuple[int, int], **params: object) -> bytes:
    image = Image.linear_gradient("L").resize(size).convert("RGB")
    return encode(image, "JPEG", quality=85, **params)


@pytest.mark.parametrize(
    ("target", "expected"),
    [(None, (1600, 1200)), (1000, (1600, 1200)), (600, (800, 600)), (200, (400, 300))],
)
def test_draft_picks_the_smallest_scale_still_covering_the_target(
    target: int | None, expected: tuple[int, int]
) -> None:
    image = decode_image(gradient_jpeg((1600, 1200)), target_size=target, **LIMITS)
    assert image.size == expected
    assert image.mode == "RGB"
    if target is not None:
        assert min(image.size) >= target


def test_draft_keeps_the_content() -> None:
    source = Image.new("RGB", (1600, 1200), (20, 40, 220))
    source.paste((230, 20, 20), (0, 0, 800, 1200))  # left half red
    image = decode_image(encode(source, "JPEG", quality=90), target_size=200, **LIMITS)
    assert image.size == (400, 300)
    left, right = image.getpixel((100, 150)), image.getpixel((300, 150))
    assert isinstance(left, tuple)
    assert isinstance(right, tuple)
    assert (left[0] > 200, left[2] < 60) == (True, True)
    assert (right[2] > 200, right[0] < 60) == (True, True)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_target_size_leaves_other_formats_at_full_size(fmt: str) -> None:
    data = encode(Image.new("RGB", (800, 600), (1, 2, 3)), fmt)
    assert decode_image(data, target_size=100, **LIMITS).size == (800, 600)


# --- EXIF orientation ----------------------------------------------------------------------

# EXIF 2.3, Orientation: which visual side the stored 0th row and 0th column lie on.
ROW0_COL0 = {
    1: ("top", "left"), 2: ("top", "right"), 3: ("bottom", "right"), 4: ("bottom", "left"),
    5: ("left", "top"), 6: ("right", "top"), 7: ("right", "bottom"), 8: ("left", "bottom"),
}  # fmt: skip
OPPOSITE = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}


def corner(sides: set[str], size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    return (2 if "left" in sides else width - 3, 2 if "top" in sides else height - 3)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_puts_pixels_the_right_way_up(fmt: str, orientation: int) -> None:
    stored = Image.new("RGB", (40, 24), (128, 128, 128))
    stored.paste((255, 0, 0), (0, 0, 6, 6))  # stored row 0, column 0: red
    stored.paste((0, 0, 255), (34, 0, 40, 6))  # stored row 0, last column: blue
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = decode(encode(stored, fmt, exif=exif, quality=95, lossless=True))
    assert image.size == ((24, 40) if orientation >= 5 else (40, 24))
    row_side, col_side = ROW0_COL0[orientation]
    red = image.getpixel(corner({row_side, col_side}, image.size))
    blue = image.getpixel(corner({row_side, OPPOSITE[col_side]}, image.size))
    assert isinstance(red, tuple)
    assert isinstance(blue, tuple)
    assert (red[0] > 200, red[2] < 60) == (True, True), (orientation, red)
    assert (blue[2] > 200, blue[0] < 60) == (True, True), (orientation, blue)


def test_orientation_applies_after_draft() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = gradient_jpeg((1600, 1200), exif=exif)
    assert decode_image(data, target_size=200, **LIMITS).size == (300, 400)


def test_large_exif_in_a_jpeg_still_orients() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "x" * 60_000  # ImageDescription: nearly a full APP1 segment
    assert decode(encode(Image.new("RGB", (40, 20)), "JPEG", exif=exif)).size == (20, 40)


def test_huge_exif_is_ignored_not_parsed() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "x" * 2_000_000
    data = encode(Image.new("RGB", (40, 20)), "PNG", exif=exif)
    started = time.perf_counter()
    image = decode(data)
    assert time.perf_counter() - started < 0.5
    assert image.size == (40, 20)  # orientation not applied: the EXIF was over the cap


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
@pytest.mark.parametrize(
    "payload",
    [b"Exif\x00\x00" + b"\xff" * 40, b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff", b"\x00" * 8],
)
def test_broken_exif_keeps_the_image(payload: bytes) -> None:
    png = encode(Image.new("RGB", (40, 20), (9, 9, 9)), "PNG")
    data = png[:33] + png_chunk(b"eXIf", payload) + png[33:]  # right after IHDR
    assert decode(data).size == (40, 20)


# --- failures that are not the image's fault ------------------------------------------------


def test_memory_error_is_answered_as_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    def exhausted(self: ImageFile.ImageFile) -> None:
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", exhausted)
    error = expect_error(ErrorCode.IMAGE_TOO_LARGE, encode(Image.new("RGB", (8, 8)), "PNG"))
    assert "memory" in error.detail


def test_a_bug_is_not_disguised_as_a_bad_image(monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(self: ImageFile.ImageFile) -> None:
        raise RuntimeError("a programming error")

    monkeypatch.setattr(ImageFile.ImageFile, "load", bug)
    with pytest.raises(RuntimeError, match="programming error"):
        decode(encode(Image.new("RGB", (8, 8)), "PNG"))


def test_large_noise_jpeg_decodes_within_limits() -> None:
    data = encode(noise((1024, 768)), "JPEG", quality=80)
    assert decode(data).size == (1024, 768)
    with Image.open(io.BytesIO(data)) as check:
        assert check.format == "JPEG"
