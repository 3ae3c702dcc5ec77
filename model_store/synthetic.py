"""Synthetic garment images with exact labels, for offline tests and benchmarks.

A first, small generator: a coloured block at a random place on a light background, one
colour per class. It exists so a tiny model can *learn* something checkable offline.
"""

from __future__ import annotations

import random
from typing import Final

from PIL import Image, ImageDraw

from model_store.schema import FashionAttributes

#: Three garments a tiny model learns to tell apart by colour.
COLOR_CLASSES: Final[dict[tuple[int, int, int], FashionAttributes]] = {
    (200, 30, 30): FashionAttributes(
        category="top", primary_color="red", material="cotton",
        style_tags=["casual"], occasion_tags=["everyday", "casual"],
    ),
    (30, 30, 200): FashionAttributes(
        category="bottom", primary_color="blue", material="denim",
        style_tags=["classic", "streetwear"], occasion_tags=["everyday"],
    ),
    (20, 20, 20): FashionAttributes(
        category="dress", primary_color="black", material=None,
        style_tags=["elegant"], occasion_tags=["party", "formal"],
    ),
}  # fmt: skip


def block_garment(color: tuple[int, int, int], rng: random.Random, size: int = 128) -> Image.Image:
    image = Image.new("RGB", (size, size), (240, 240, 240))
    scale = size / 128
    x, y = rng.randint(0, int(40 * scale)), rng.randint(0, int(40 * scale))
    width = int((60 + rng.randint(0, 20)) * scale)
    height = int((60 + rng.randint(0, 20)) * scale)
    ImageDraw.Draw(image).rectangle([x, y, x + width, y + height], fill=color)
    return image
