"""A rule-based colour labeller: the dominant colour of a garment's pixels, or no answer.

In the spirit of the paper's label collapse, a transparent rule rather than a model.
:func:`label_color` (``weak-color-v3``) is ``weak-color-v2`` (below) changed for patterned
garments, which v2 read as ``gray`` (black-and-white stripes and checks blur to gray at
48 px):

- the garment weights still come from the 48 px image, but the pixels vote at
  :data:`VOTE_SIDE` (each 48 px cell split into 3 x 3), so a stripe's pixels stay black
  and white and the two distant colours make ``multi``; a colour wins with
  :data:`DOMINANT_SHARE_V3`, ``multi`` needs colours :data:`MULTI_DISTANCE_V3` apart, and
  two such colours each holding :data:`EVEN_SHARE_V3` are ``multi`` whatever the leader;
- a ``gray`` answer on a strongly textured garment (the garment-weighted spread of
  lightness inside each 3 x 3 cell above :data:`PATTERN_CONTRAST`) is ``multi``: a print
  too fine even for 144 px, where a person sees a pattern rather than a gray cloth.

:func:`label_color_v2` (``weak-color-v2``), for photos taken anywhere (floors, beds, carpets):

1. the image is shrunk to 48 x 48; each channel is scaled so its 99th percentile reaches
   white, by at most :data:`MAX_GAIN` (a white shirt in a dim room reads white, not gray,
   and a colour cast is partly undone; the cap keeps a dark scene dark);
2. the backdrop is up to three colours (k-means of a 3-pixel border), so a patterned
   floor is backdrop too (a colour on under a fifth of the border is a garment running
   off the frame, not backdrop); a pixel's garment weight is a centre prior (Gaussian,
   :data:`CENTRE_SIGMA` of the side) times how far it is from the nearest backdrop colour
   (ramping up to :data:`BACKDROP_DISTANCE`); where almost nothing is far from the
   backdrop, the centre prior alone decides;
3. each pixel takes the nearest anchor colour; the colour with the most weight wins if it
   holds :data:`DOMINANT_SHARE`; if the runner-up holds :data:`MULTI_SHARE` and the two
   colours' mean pixels are more than :data:`MULTI_DISTANCE` apart it is ``multi``; any
   other case (two shades of one garment split between neighbouring names) abstains,
   where a person would hesitate too.

The shares, distances, gain and the desaturated navy and denim anchors (v2), and v3's vote
side, shares and contrast were chosen on the ``tune`` half of the human labels (:mod:`model_store.data.human_colors`), never on the
``report`` half. :func:`label_color_v1` is the first rule, kept to measure against:

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

VERSION: Final = "weak-color-v3"
VERSION_V2: Final = "weak-color-v2"
VERSION_V1: Final = "weak-color-v1"
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

# weak-color-v2's settings (chosen on the human labels' tune half).
SIDE_V2: Final = 48
#: The most a channel is brightened to bring its 99th percentile to white.
MAX_GAIN: Final = 1.2
#: The centre prior's standard deviation, as a share of the side.
CENTRE_SIGMA: Final = 0.25
#: Delta E from the nearest backdrop colour at which a pixel counts fully as garment.
BACKDROP_DISTANCE: Final = 20.0
MIN_GARMENT_SHARE_V2: Final = 0.02
#: A border colour is backdrop only if it covers this share of the border.
MIN_BACKDROP_SHARE: Final = 0.2
DOMINANT_SHARE_V2: Final = 0.55
#: Two colours each this strong make ``multi`` only when their means are this far apart.
MULTI_DISTANCE: Final = 40.0
# weak-color-v3's settings (chosen on the human labels' tune half).
#: The side at which v3's pixels vote (3 x 3 per 48 px cell, so fine stripes stay apart).
VOTE_SIDE: Final = 144
DOMINANT_SHARE_V3: Final = 0.45
MULTI_DISTANCE_V3: Final = 30.0
#: Two distant colours each holding this share are ``multi`` even if one also dominates
#: (equal stripes: the lighter one gains from the white-patch scaling and edge pixels).
EVEN_SHARE_V3: Final = 0.35
#: Garment-weighted lightness spread (L*, within each 48 px cell) above which gray is a print.
PATTERN_CONTRAST: Final = 7.0
#: Faded denim and washed-out navy, which v1's saturated anchors called gray.
EXTRA_ANCHORS_V2: Final[dict[Color, tuple[tuple[int, int, int], ...]]] = {
    "navy": ((45, 50, 70),),
    "blue": ((80, 100, 135), (110, 130, 160)),
}


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
_ANCHORS_V2: Final = {name: shades + EXTRA_ANCHORS_V2.get(name, ()) for name, shades in ANCHORS.items()}  # fmt: skip
_ANCHOR_NAMES_V2: Final = np.array([name for name, shades in _ANCHORS_V2.items() for _ in shades])
_ANCHOR_LAB_V2: Final = srgb_to_lab(np.array([rgb for s in _ANCHORS_V2.values() for rgb in s]))
_COLOUR_NAMES_V2: Final[list[Color]] = list(_ANCHORS_V2)
_ANCHOR_CODES_V2: Final = np.array([_COLOUR_NAMES_V2.index(n) for n in _ANCHOR_NAMES_V2])


@dataclass(frozen=True, slots=True)
class WeakColor:
    """The rule's answer: a colour, or None with the reason it abstained."""

    color: Color | None
    reason: str  # "dominant", "multi", or why it abstained
    garment_share: float


def label_color_v1(image: Image.Image) -> WeakColor:
    """The first rule (``weak-color-v1``): product photos on a plain backdrop only."""
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


def _gain(rgb: FloatArray) -> FloatArray:
    """Per channel, what brings its 99th percentile to white, at most :data:`MAX_GAIN`."""
    top = np.percentile(rgb.reshape(-1, 3), 99, axis=0)
    return np.asarray(np.minimum(255.0 / np.maximum(top, 1.0), MAX_GAIN), dtype=np.float64)


def _rgb(image: Image.Image, side: int) -> FloatArray:
    small = image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
    return np.asarray(small, dtype=np.float64)


def _scaled_lab(image: Image.Image) -> FloatArray:
    rgb = _rgb(image, SIDE_V2)
    return srgb_to_lab(np.clip(rgb * _gain(rgb), 0, 255))


def _backdrop_colours(lab: FloatArray, k: int = 3, rounds: int = 6) -> FloatArray:
    ring = np.ones(lab.shape[:2], dtype=bool)
    ring[BORDER:-BORDER, BORDER:-BORDER] = False
    border = lab[ring]
    centres = border[np.linspace(0, len(border) - 1, k).astype(int)]
    for _ in range(rounds):
        nearest = np.linalg.norm(border[:, None] - centres[None], axis=-1).argmin(axis=1)
        centres = np.array(
            [
                border[nearest == j].mean(axis=0) if (nearest == j).any() else c
                for j, c in enumerate(centres)
            ]
        )
    # A colour on little of the border is a garment running off the frame, not backdrop.
    share = np.bincount(nearest, minlength=k) / len(border)
    return np.asarray(centres[share >= MIN_BACKDROP_SHARE], dtype=np.float64)


def garment_weights(lab: FloatArray) -> FloatArray:
    """Each pixel's weight as garment: centre prior times distance from the backdrop."""
    side = lab.shape[0]
    yy, xx = np.mgrid[0:side, 0:side] / side - 0.5
    centre = np.exp(-(yy**2 + xx**2) / (2 * CENTRE_SIGMA**2))
    backdrop = _backdrop_colours(lab)
    distance = np.linalg.norm(lab[:, :, None] - backdrop[None, None], axis=-1).min(axis=-1)
    weights = centre * np.clip((distance - BACKDROP_DISTANCE / 2) / BACKDROP_DISTANCE, 0, 1)
    if weights.sum() < MIN_GARMENT_SHARE_V2 * side * side:
        weights = weights + 0.1 * centre  # the garment matches its backdrop: trust the centre
    return np.asarray(weights, dtype=np.float64)


def _vote(
    pixels: FloatArray, weights: FloatArray, dominant: float, distance: float, even: float = 1.0
) -> Color | None:
    """The weighted anchor vote: a colour holding ``dominant`` of the weight; ``multi`` when
    the runner-up holds :data:`MULTI_SHARE` (or ``even``, whatever the leader holds) and the
    two colours' mean pixels are more than ``distance`` apart; otherwise None (two shades of
    one garment split between names)."""
    # Squared distances as |a|^2 - 2 p.a (|p|^2 is the same for every anchor): one matmul.
    nearest = ((_ANCHOR_LAB_V2**2).sum(axis=1) - 2 * pixels @ _ANCHOR_LAB_V2.T).argmin(axis=1)
    # Integer codes and bincount: comparing names per pixel took most of v3's time.
    codes = _ANCHOR_CODES_V2[nearest]
    votes = np.bincount(codes, weights=weights, minlength=len(_COLOUR_NAMES_V2))
    order = np.argsort(-votes, kind="stable")
    leader, runner = int(order[0]), int(order[1])
    total = float(votes.sum())
    apart = bool(votes[runner] >= MULTI_SHARE * total)
    if apart:
        first, second = (
            np.average(pixels[codes == c], axis=0, weights=weights[codes == c] + 1e-9)
            for c in (leader, runner)
        )
        apart = bool(np.linalg.norm(first - second) > distance)
    if apart and votes[runner] >= even * total:
        return "multi"
    if votes[leader] >= dominant * total:
        return _COLOUR_NAMES_V2[leader]
    return "multi" if apart else None


def _answer(color: Color | None, share: float) -> WeakColor:
    if color is None:
        return WeakColor(None, "no_dominant_colour", share)
    return WeakColor(color, "multi" if color == "multi" else "dominant", share)


def label_color_v2(image: Image.Image) -> WeakColor:
    """The second rule (``weak-color-v2``): any photo, votes at 48 px."""
    lab = _scaled_lab(image)
    weights = garment_weights(lab).reshape(-1)
    share = float(weights.sum() / weights.size)
    return _answer(_vote(lab.reshape(-1, 3), weights, DOMINANT_SHARE_V2, MULTI_DISTANCE), share)


def label_color(image: Image.Image) -> WeakColor:
    """The dominant colour of the garment in ``image`` (any photo of one garment), or None."""
    rgb = _rgb(image, SIDE_V2)
    gain = _gain(rgb)
    weights = garment_weights(srgb_to_lab(np.clip(rgb * gain, 0, 255)))
    share = float(weights.sum() / weights.size)
    cell = VOTE_SIDE // SIDE_V2
    fine = srgb_to_lab(np.clip(_rgb(image, VOTE_SIDE) * gain, 0, 255))
    fine_weights = np.asarray(np.kron(weights, np.ones((cell, cell))), dtype=np.float64)
    color = _vote(
        fine.reshape(-1, 3), fine_weights.reshape(-1), DOMINANT_SHARE_V3, MULTI_DISTANCE_V3,
        even=EVEN_SHARE_V3,
    )  # fmt: skip
    if color == "gray":
        # Lightness spread inside each 48 px cell: a fine print, not a plain gray cloth.
        spread = fine[..., 0].reshape(SIDE_V2, cell, SIDE_V2, cell).std(axis=(1, 3))
        if float((spread * weights).sum() / max(weights.sum(), 1e-9)) > PATTERN_CONTRAST:
            color = "multi"
    return _answer(color, share)


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
