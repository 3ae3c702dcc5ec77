"""The weak colour labeller on drawn garments whose colours are known exactly."""

from __future__ import annotations

import random

import numpy as np
from PIL import Image

from model_store.data.weak_color import agreement, label_color
from model_store.synthetic import SOLID_COLORS, GarmentSpec, render_garment

#: What it must reach on plain drawn garments (product shots on a studio backdrop).
SOLID_AGREEMENT_FLOOR = 0.9
SOLID_COVERAGE_FLOOR = 0.7


def _garments(colors: tuple[str, ...], n: int, seed: int) -> list[tuple[str, Image.Image]]:
    rng = random.Random(seed)
    out = []
    for index in range(n):
        color = colors[index % len(colors)]
        category = ("top", "bottom", "dress", "layer", "shoes", "accessory")[index % 6]
        spec = GarmentSpec(category, color, "Cotton")  # type: ignore[arg-type]
        out.append((color, render_garment(spec, rng, 128)))
    return out


def test_agrees_with_known_solid_colours() -> None:
    garments = _garments(tuple(SOLID_COLORS), 65, seed=3)
    result = agreement((truth, label_color(image).color) for truth, image in garments)  # type: ignore[misc]
    assert result["n"] == 65
    assert result["coverage"] >= SOLID_COVERAGE_FLOOR, result
    assert result["accuracy_when_answered"] >= SOLID_AGREEMENT_FLOOR, result
    per_color = result["per_color"]
    assert isinstance(per_color, dict)
    assert per_color["red"]["agree"] >= 4  # five red garments


def test_stripes_are_multi_and_a_sheen_is_never_called_metallic() -> None:
    rng = random.Random(5)
    stripes = GarmentSpec("top", "multi", "Cotton", stripes=("Red", "Blue", "Yellow"))
    answers = [label_color(render_garment(stripes, rng, 128)).color for _ in range(10)]
    assert answers.count("multi") >= 6, answers
    gold = GarmentSpec("accessory", "metallic", "Canvas", metal="Gold")
    assert all(label_color(render_garment(gold, rng, 128)).color != "metallic" for _ in range(5))


def test_abstains_where_it_cannot_tell() -> None:
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    cluttered = label_color(Image.fromarray(noise))
    assert cluttered.color is None
    assert cluttered.reason == "cluttered_backdrop"
    empty = label_color(Image.new("RGB", (128, 128), (240, 240, 240)))
    assert empty.color is None
    assert empty.reason == "no_garment_found"


def test_reads_the_garment_not_the_backdrop() -> None:
    image = Image.new("RGB", (100, 100), (30, 30, 30))  # a dark studio backdrop
    image.paste((240, 212, 40), (30, 20, 70, 90))
    assert label_color(image).color == "yellow"
