"""Intake preprocessing throughput per CPU core: decode + resize (+ normalize), images/s.

    python -m bench.preprocess [--images N] [--size 768] [--synthetic 3] [--passes 2]
        [--cuda-path]

The service's own path, one image after another on one thread: ``service.intake``'s
``decode_image`` with the model's input size as ``target_size`` (so a large JPEG decodes
at a reduced scale via JPEG ``draft``), then the engine's ``PlainTransform``, built with
Florence-2's constants: resize *and* normalize (float32), as the engine's pool does on
CPU. ``--cuda-path`` adds the engine's CUDA variant, resize only (uint8), since there the
GPU normalizes the whole batch.

Images: the real photos in ``../shared/data/clothing-small`` (about 400 px wide; skipped
with a note if absent) and synthetic photo-like 12 MP JPEGs, at model sizes 128 (the demo
model) and 768 (Florence-2). ``per core`` divides by the CPU time the process used, which a
busy, shared machine disturbs less than wall time; both are reported. The service runs
``FF_PREPROCESS_THREADS`` of these at once, so a host preprocesses about
``per-core x cores`` images/s at best. Writes ``bench/results/preprocess.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from PIL import Image

from bench.intake import MEAN, PHOTOS, STD, photo_jpeg
from service.inference.engine import PlainTransform
from service.intake import decode_image
from service.settings import Settings

RESULTS: Final = Path(__file__).resolve().parent / "results" / "preprocess.json"
MODEL_SIZES: Final = (128, 768)  # the demo model's input, Florence-2's input
TWELVE_MP: Final = (4000, 3000)
CPU_STEP: Final = "resize + normalize (CPU serving)"
CUDA_STEP: Final = "resize only (CUDA serving)"


@dataclass
class Row:
    images: str
    size: int  # the model's input side, px
    step: str  # what follows the decode
    count: int  # images prepared in the timed passes
    wall_s: float
    cpu_s: float

    def as_dict(self) -> dict[str, Any]:
        # img_s is per core: images per CPU-second of this (single-threaded) process.
        per_core = self.count / max(self.cpu_s, 1e-9)
        return asdict(self) | {"img_s": per_core, "img_s_wall": self.count / self.wall_s}


def _steps(size: int, cuda_path: bool) -> dict[str, Callable[[Image.Image], object]]:
    # Florence-2's image processor: bicubic, rescale 1/255, ImageNet mean/std.
    transform = PlainTransform(size, Image.Resampling.BICUBIC, 1 / 255, MEAN, STD)
    steps: dict[str, Callable[[Image.Image], object]] = {CPU_STEP: transform}
    if cuda_path:
        steps[CUDA_STEP] = transform.resize
    return steps


def _timed(
    datas: Sequence[bytes], prepare: Callable[[bytes], object], passes: int
) -> tuple[int, float, float]:
    prepare(datas[0])  # first-call costs (allocator, libjpeg tables) are not per image
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(passes):
        for data in datas:
            prepare(data)
    return passes * len(datas), time.perf_counter() - wall, time.process_time() - cpu


def _rows(
    label: str, datas: Sequence[bytes], sizes: Sequence[int], passes: int, cuda_path: bool
) -> list[Row]:
    settings = Settings()  # the service's intake limits
    limits = {
        "max_image_bytes": settings.max_image_bytes,
        "max_image_pixels": settings.max_image_pixels,
        "max_image_side_px": settings.max_image_side_px,
        "max_image_frames": settings.max_image_frames,
    }
    rows = []
    for size in sizes:
        for step_name, step in _steps(size, cuda_path).items():

            def prepare(data: bytes, size: int = size, step: Any = step) -> object:
                return step(decode_image(data, target_size=size, **limits))

            count, wall_s, cpu_s = _timed(datas, prepare, passes)
            rows.append(Row(label, size, step_name, count, wall_s, cpu_s))
    return rows


def preprocessing_per_core(
    *,
    quick: bool = False,
    photos: int | None = None,
    synthetic: int | None = None,
    sizes: Sequence[int] = MODEL_SIZES,
    passes: int | None = None,
    cuda_path: bool = False,
    photo_dir: Path = PHOTOS,
    synthetic_px: tuple[int, int] = TWELVE_MP,
) -> list[dict[str, Any]]:
    """Single-threaded preprocessing throughput, one row per (image set, size, step).

    Rows: ``images``, ``size``, ``step``, ``img_s`` (per core: images per CPU-second),
    ``img_s_wall``, ``count``, ``wall_s``, ``cpu_s``. ``photos`` limits the real photos
    (all by default; rows skipped with a printed note if there are none); ``synthetic`` is
    how many distinct synthetic JPEGs; every image is prepared ``passes`` times. ``quick``
    picks small defaults for the three. ``cuda_path`` adds the resize-only rows. Torch and
    numpy threads are left as the caller set them: this path is Pillow and element-wise
    numpy, which run on the calling thread only.
    """
    photos = photos if photos is not None else (48 if quick else None)
    synthetic = synthetic if synthetic is not None else (1 if quick else 3)
    passes = passes if passes is not None else (1 if quick else 2)
    rows: list[Row] = []
    paths = sorted(photo_dir.glob("*/*.jpg"))[:photos]
    if paths:
        datas = [p.read_bytes() for p in paths]
        label = f"clothing-small ({len(datas)} photos)"
        rows += _rows(label, datas, sizes, passes, cuda_path)
    else:
        print(f"note: no photos under {photo_dir}; the real-photo rows are skipped")
    if synthetic > 0:
        width, height = synthetic_px
        datas = [photo_jpeg(width, height) for _ in range(synthetic)]
        mb = sum(map(len, datas)) / len(datas) / 1e6
        label = f"synthetic {width * height / 1e6:.0f} MP JPEG ({synthetic}, {mb:.1f} MB each)"
        rows += _rows(label, datas, sizes, passes, cuda_path)
    return [row.as_dict() for row in rows]


def report(rows: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| images | model size px | after decode | img/s per core | img/s (wall) | ms per image |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['images']} | {r['size']} | {r['step']} | {r['img_s']:.1f} "
            f"| {r['img_s_wall']:.1f} | {1000 / r['img_s']:.2f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=None, help="real photos (default all)")
    parser.add_argument("--size", type=int, action="append", help="model size (repeatable)")
    parser.add_argument("--synthetic", type=int, default=3, help="distinct 12 MP JPEGs")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument(
        "--cuda-path", action="store_true", help="also time resize-only (the CUDA path)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # per-core figures: nothing may fan out to other cores
    rows = preprocessing_per_core(
        photos=args.images,
        synthetic=args.synthetic,
        sizes=args.size or MODEL_SIZES,
        passes=args.passes,
        cuda_path=args.cuda_path,
    )
    machine = f"{platform.machine()} {os.cpu_count()} cpu, Python {platform.python_version()}"
    print(f"machine: {machine}; one thread\n")
    print(report(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
