"""The weak colour labeller on drawn garments whose colours are known exactly, and (v2, v3)
on real validation photos against the human labels."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from model_store.data.human_colors import read_human_colours, score_colours
from model_store.data.weak_color import (
    WeakColor,
    agreement,
    label_color,
    label_color_v1,
    label_color_v2,
)
from model_store.evaluation.predict import open_rgb
from model_store.synthetic import SOLID_COLORS, GarmentSpec, render_garment
from tests.conftest import SHARED_DATA

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


def test_v1_abstains_where_it_cannot_tell() -> None:
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    cluttered = label_color_v1(Image.fromarray(noise))
    assert cluttered.color is None
    assert cluttered.reason == "cluttered_backdrop"
    empty = label_color_v1(Image.new("RGB", (128, 128), (240, 240, 240)))
    assert empty.color is None
    assert empty.reason == "no_garment_found"


def test_reads_the_garment_not_the_backdrop() -> None:
    image = Image.new("RGB", (100, 100), (30, 30, 30))  # a dark studio backdrop
    image.paste((240, 212, 40), (30, 20, 70, 90))
    assert label_color(image).color == "yellow"


def test_reads_a_garment_on_a_patterned_floor() -> None:
    # Tiles of two colours (v1 gives up on such a backdrop), a red garment in the middle.
    tiles = np.kron((np.indices((8, 8)).sum(axis=0) % 2)[..., None], np.ones((16, 16, 1)))
    floor = np.where(tiles > 0, [200, 190, 170], [120, 90, 60]).astype(np.uint8)
    image = Image.fromarray(floor)
    image.paste((205, 30, 38), (34, 24, 94, 110))
    assert label_color_v1(image).color is None
    assert label_color(image).color == "red"


def test_a_garment_running_off_the_frame_is_not_backdrop() -> None:
    image = Image.new("RGB", (96, 96), (236, 236, 240))
    image.paste((45, 105, 215), (34, 30, 72, 96))  # trousers cut by the bottom edge
    assert label_color(image).color == "blue"


def test_two_distant_colours_are_multi_and_two_shades_of_one_are_not() -> None:
    image = Image.new("RGB", (96, 96), (236, 236, 240))
    for row in range(20, 80, 10):  # red and navy stripes
        image.paste((205, 30, 38) if row % 20 else (24, 34, 88), (25, row, 71, row + 10))
    assert label_color(image).color == "multi"
    shades = Image.new("RGB", (96, 96), (236, 236, 240))
    shades.paste((128, 128, 130), (25, 20, 48, 80))  # gray, and a grayish blue beside it
    shades.paste((110, 130, 160), (48, 20, 71, 80))
    assert label_color_v2(shades).color is None
    # v3 lets a colour win at 0.45 of the weight (chosen on the tune half): it names one of
    # the two shades, never multi.
    assert label_color(shades).color in ("gray", "blue")


def _striped(period: int) -> Image.Image:
    """Black-and-white stripes ``period`` px wide on a wooden-brown floor, 384 px square."""
    pixels = np.full((384, 384, 3), (150, 110, 80), dtype=np.uint8)
    for row in range(96, 300):
        pixels[row, 110:274] = (25, 25, 28) if (row // period) % 2 else (245, 245, 245)
    return Image.fromarray(pixels)


def test_fine_stripes_are_multi_not_the_gray_they_blur_to() -> None:
    # At 48 px these stripes average to gray (v2's answer); a person sees stripes.
    for period in (4, 6):
        assert label_color_v2(_striped(period)).color == "gray"
        assert label_color(_striped(period)).color == "multi"
    # Wide equal stripes: the lighter colour edges past the dominant share, still multi.
    assert label_color(_striped(12)).color == "multi"
    plain = Image.new("RGB", (384, 384), (150, 110, 80))
    plain.paste((128, 128, 130), (110, 96, 274, 300))  # a plain gray garment stays gray
    assert label_color(plain).color == "gray"


def _report_half(rule: Callable[[Image.Image], WeakColor]) -> dict[str, Any]:
    photos = SHARED_DATA / "clothing-small" / "validation"
    labels = read_human_colours(part="report")
    result = score_colours(labels, lambda label: rule(open_rgb(str(photos / label.photo))).color)
    assert result["n"] == len(labels) > 150
    return result


def test_agrees_with_people_on_the_report_half() -> None:
    """The issue's bar, on the human labels' half that no setting was chosen on; v3 answers
    more photos than v2 (0.763) and confuses patterned garments with gray less often."""
    result = _report_half(label_color)
    assert result["coverage"] >= 0.8, result
    assert result["agreement_when_answered"] >= 0.75, result
    assert result["confusion"].get("multi -> gray", 0) <= 4, result  # v2: 7


def test_v2_is_kept_as_it_was() -> None:
    result = _report_half(label_color_v2)
    assert (result["answered"], result["n"]) == (129, 169)
    assert round(result["agreement_when_answered"], 3) == 0.775
