"""Atheris (libFuzzer) harness over :func:`service.intake.decode.decode_image`.

The property: for any bytes, ``decode_image`` either returns a loaded RGB image within the
limits, or raises :class:`ServiceError`. Any other exception is a crash: a Pillow error
type the decoder does not map (a 500 in production) or a bug of ours.

A longer run, from the repository root (corpus and crash files go where you say)::

    python -m tests.service.intake.fuzz_decode -max_total_time=600 \
        -artifact_prefix=/tmp/ff-fuzz/ /tmp/ff-fuzz/corpus

The suite runs it briefly (test_fuzz_decode.py). The seed corpus is generated: one small
image per format and mode, so mutations start from inputs that reach the decoders.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["PIL", "service"]):
    from PIL import Image

    from service.errors import ServiceError
    from service.intake.decode import decode_image

MAX_BYTES = 256 * 1024
MAX_PIXELS = 1_000_000
MAX_SIDE = 2048


def one_input(data: bytes) -> None:
    # The first byte picks the model size, so draft() paths are fuzzed too.
    target = (None, 16, 64, 256)[data[0] % 4] if data else None
    try:
        image = decode_image(
            data[1:],
            max_image_bytes=MAX_BYTES,
            max_image_pixels=MAX_PIXELS,
            max_image_side_px=MAX_SIDE,
            max_image_frames=16,
            target_size=target,
        )
    except ServiceError:
        return
    width, height = image.size
    if image.mode != "RGB" or width * height > MAX_PIXELS or max(width, height) > MAX_SIDE:
        raise AssertionError(f"decode_image returned {image.mode} {image.size}")


def write_seeds(directory: Path) -> list[Path]:
    """Small valid images of every accepted format (and some modes) as corpus files."""
    directory.mkdir(parents=True, exist_ok=True)
    gradient = Image.linear_gradient("L").resize((24, 16))
    sources = {
        "rgb": gradient.convert("RGB"),
        "l": gradient,
        "rgba": gradient.convert("RGBA"),
        "p": gradient.convert("P"),
        "cmyk": gradient.convert("CMYK"),
    }
    upright_by_exif = Image.Exif()
    upright_by_exif[0x0112] = 6  # so the orientation code is exercised from the start
    written = []
    for fmt, modes in {
        "JPEG": ("rgb", "l", "cmyk"),
        "PNG": ("rgb", "l", "rgba", "p"),
        "WEBP": ("rgb", "rgba"),
        "GIF": ("p",),
    }.items():
        for mode in modes:
            buffer = io.BytesIO()
            params: dict[str, object] = {} if fmt == "GIF" else {"exif": upright_by_exif}
            sources[mode].save(buffer, fmt, **params)
            path = directory / f"seed-{fmt.lower()}-{mode}"
            path.write_bytes(b"\x01" + buffer.getvalue())  # first byte: target size 16
            written.append(path)
    return written


def main(argv: list[str]) -> None:
    corpora = [arg for arg in argv[1:] if not arg.startswith("-")]
    if corpora:
        write_seeds(Path(corpora[0]))
    # Pillow warns about every oddity the mutations produce; the output is for crashes.
    warnings.simplefilter("ignore", UserWarning)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
