"""A rule-based colour labeller: the dominant colour of a garment's pixels, or no answer.

In the spirit of the paper's label collapse, a transparent rule rather than a model:

1. the image is shrunk to 64 x 64 and converted to CIE Lab (perceptual distances);
2. the backdrop is the median of a 3-pixel border; it must be nearly uniform (a product
   shot), otherwise the rule abstains: on a cluttered scene it cannot tell garment from
   floor;
3. garment pixels are those far from the backdrop (Delta E); too few, and it abstains;
4. each garment pixel takes the nearest of a set of anchor colours (several per schema
   colour: light, mid and dark shades); the colour with most pixels wins if it holds at
   least :data:`DOMINANT_SHARE` of them, two or more colours each over
   :data:`MULTI_SHARE` make ``multi``, anything else is an abstention.

It never answers ``metallic`` (a sheen is not a pixel colour) or ``unknown``. Its labels
are marked ``weak`` in the data (``Record.weak``); an abstention leaves the colour
unknown. ``agreement`` measures it against labels that exist (the synthetic garments).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from fashion_florence_client.schema import Color

VERSION: Final = "weak-color-v1"
SIDE: Final = 64
BORDER: Final = 3
#: Border pixels further than this from the border median make a cluttered backdrop.
BACKDROP_SPREAD: Final = 12.0
#: Garment pixels differ from the backdrop by more than this (Delta E 1976).
GARMENT_DISTANCE: Final = 22.0
MIN_GARMENT_SHARE: Final = 0.06
DOMINANT_SHARE: Final = 0.5
MULTI_SHARE: Final = 0.2

#: sRGB anchors per schema colour (several shades each; nearest anchor wins).
ANCHORS: Final[dict[Color, tuple[tuple[int, int, int], ...]]] = {
    "black": ((20, 20, 22), (40, 40, 45)),
    "white": ((245, 245, 242), (228, 228, 224)),
    "gray": ((128, 128, 130), (170, 170, 172), (90, 90, 94)),
    "beige": ((214, 194, 158), (225, 210, 180), (190, 170, 135)),
    "brown": ((112, 70, 40), (80, 50, 30), (150, 100, 60)),
    "blue": ((45, 105, 215), (100, 150, 220), (60, 90, 160), (150, 185, 225)),
    "navy": ((24, 34, 88), (35, 45, 70)),
    "green": ((40, 145, 60), (30, 90, 45), (120, 170, 90), (85, 107, 47)),
    "yellow": ((240, 212, 40), (245, 230, 120)),
    "orange": ((242, 130, 30), (220, 100, 40)),
    "red": ((205, 30, 38), (140, 25, 35), (230, 70, 60)),
    "pink": ((242, 150, 182), (230, 100, 150), (250, 200, 210)),
    "purple": ((122, 50, 152), (80, 40, 100), (170, 120, 200)),
}

FloatArray = npt.NDArray[np.float64]


def srgb_to_lab(rgb: npt.NDArray[np.generic]) -> FloatArray:
    """CIE Lab (D65) of sRGB values in 0-255, any leading shape."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    matrix = np.array(
        [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
    )
    xyz = linear @ matrix.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack(
        [116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])],
        axis=-1,
    )


_ANCHOR_NAMES: Final = [name for name, shades in ANCHORS.items() for _ in shades]
_ANCHOR_LAB: Final = srgb_to_lab(np.array([rgb for shades in ANCHORS.values() for rgb in shades]))


@dataclass(frozen=True, slots=True)
class WeakColor:
    """The rule's answer: a colour, or None with the reason it abstained."""

    color: Color | None
    reason: str  # "dominant", "multi", or why it abstained
    garment_share: float


def label_color(image: Image.Image) -> WeakColor:
    """The dominant colour of the garment in ``image`` (a product photo), or an abstention."""
    small = image.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    lab = srgb_to_lab(np.asarray(small))
    ring = np.ones((SIDE, SIDE), dtype=bool)
    ring[BORDER:-BORDER, BORDER:-BORDER] = False
    border = lab[ring]
    backdrop = np.median(border, axis=0)
    if np.median(np.linalg.norm(border - backdrop, axis=1)) > BACKDROP_SPREAD:
        return WeakColor(None, "cluttered_backdrop", 0.0)
    garment = lab[np.linalg.norm(lab - backdrop, axis=-1) > GARMENT_DISTANCE]
    share = len(garment) / (SIDE * SIDE)
    if share < MIN_GARMENT_SHARE:
        return WeakColor(None, "no_garment_found", share)
    distances = np.linalg.norm(garment[:, None, :] - _ANCHOR_LAB[None, :, :], axis=-1)
    votes = Counter(_ANCHOR_NAMES[i] for i in distances.argmin(axis=1).tolist())
    ranked = [(name, count / len(garment)) for name, count in votes.most_common()]
    if ranked[0][1] >= DOMINANT_SHARE:
        return WeakColor(ranked[0][0], "dominant", share)
    if sum(1 for _, part in ranked if part >= MULTI_SHARE) >= 2:
        return WeakColor("multi", "multi", share)
    return WeakColor(None, "no_dominant_colour", share)


def agreement(pairs: Iterable[tuple[Color, Color | None]]) -> dict[str, Any]:
    """Weak label against a known one: coverage, accuracy where it answered, per colour."""
    per_color: dict[str, Counter[str]] = {}
    total = answered = right = 0
    for truth, weak in pairs:
        counts = per_color.setdefault(truth, Counter())
        counts["n"] += 1
        total += 1
        if weak is None:
            continue
        counts["answered"] += 1
        answered += 1
        if weak == truth:
            counts["agree"] += 1
            right += 1
    return {
        "labeller": VERSION,
        "n": total,
        "answered": answered,
        "coverage": answered / total if total else 0.0,
        "accuracy_when_answered": right / answered if answered else 0.0,
        "per_color": {name: _rates(c) for name, c in sorted(per_color.items())},
    }


def _rates(counts: Mapping[str, int]) -> dict[str, float | int]:
    answered = counts.get("answered", 0)
    return {
        "n": counts["n"],
        "answered": answered,
        "agree": counts.get("agree", 0),
        "accuracy_when_answered": counts.get("agree", 0) / answered if answered else 0.0,
    }
