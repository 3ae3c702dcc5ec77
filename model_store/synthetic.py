"""Synthetic garment images with exact labels, for offline tests and the demo model.

Two generators live here:

* :func:`block_garment` with :data:`COLOR_CLASSES`: a coloured block, three classes. The
  service tests' fixture model learns it in seconds.
* :func:`render_garment`: a procedural product photo: a silhouette per schema category, a
  fill colour from a palette (plus two-colour stripes for ``multi`` and a sheen for
  ``metallic``), a texture for a few materials, random position, scale, rotation,
  background and noise. The labels are exact by construction: a :class:`GarmentSpec`
  names iMaterialist-style labels, and the dataset is built from them by the same
  collapse rules as real data (see ``model_store.data.synthesize``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFilter

from fashion_florence_client.schema import Category, Color, FashionAttributes

RGB = tuple[int, int, int]
FloatImage = npt.NDArray[np.float32]

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


# --- the procedural generator -----------------------------------------------------------------

#: Schema colour -> (iMaterialist colour name, RGB). ``navy`` has no iMaterialist label; the
#: collapse rules accept the literal "Navy" (a documented extension) so it can be learned.
SOLID_COLORS: Final[dict[Color, tuple[str, RGB]]] = {
    "black": ("Black", (28, 28, 30)),
    "white": ("White", (246, 246, 244)),
    "gray": ("Gray", (128, 128, 130)),
    "beige": ("Beige", (214, 194, 158)),
    "brown": ("Brown", (112, 70, 40)),
    "blue": ("Blue", (45, 105, 215)),
    "navy": ("Navy", (24, 34, 88)),
    "green": ("Green", (40, 145, 60)),
    "yellow": ("Yellow", (240, 212, 40)),
    "orange": ("Orange", (242, 130, 30)),
    "red": ("Red", (205, 30, 38)),
    "pink": ("Pink", (242, 150, 182)),
    "purple": ("Purple", (122, 50, 152)),
}
METALS: Final[dict[str, RGB]] = {"Gold": (212, 175, 55), "Silver": (196, 198, 204)}
#: Every schema colour the generator can draw (``unknown`` is not a colour one can draw).
DRAWABLE_COLORS: Final[tuple[Color, ...]] = (*SOLID_COLORS, "metallic", "multi")

#: One silhouette per category; the iMaterialist category name it stands for ("Hats" is a
#: collapse-rule extension: iMaterialist has no hat, only shoe accessories and bra straps).
CATEGORY_LABELS: Final[dict[Category, str]] = {
    "top": "T-Shirts",
    "bottom": "Trousers",
    "dress": "Cocktail Dresses",
    "layer": "Jackets",
    "shoes": "Sneakers",
    "accessory": "Hats",
}
#: Materials drawn per category (iMaterialist names); each has a texture of its own.
CATEGORY_MATERIALS: Final[dict[Category, tuple[str, ...]]] = {
    "top": ("Cotton", "Knit", "Lace"),
    "bottom": ("Cotton", "Denim", "Corduroy"),
    "dress": ("Cotton", "Lace", "Knit"),
    "layer": ("Denim", "Leather", "Knit", "Corduroy"),
    "shoes": ("Leather", "Canvas"),
    "accessory": ("Canvas", "Knit", "Wool"),
}

#: Untextured materials, for sets where only shape and colour should vary.
PLAIN_MATERIALS: Final[dict[Category, tuple[str, ...]]] = {
    "top": ("Cotton",), "bottom": ("Cotton",), "dress": ("Cotton",),
    "layer": ("Cotton",), "shoes": ("Canvas",), "accessory": ("Canvas",),
}  # fmt: skip

_POLYGONS: Final[dict[Category, list[tuple[int, int]]]] = {
    # On a 100 x 100 canvas, garment centred; the renderer scales and places it.
    "top": [(40, 12), (60, 12), (80, 18), (94, 40), (82, 47), (71, 36), (71, 92), (29, 92),
            (29, 36), (18, 47), (6, 40), (20, 18)],
    "bottom": [(27, 6), (73, 6), (74, 16), (78, 96), (57, 96), (50, 42), (43, 96), (22, 96),
               (26, 16)],
    "dress": [(39, 6), (61, 6), (64, 34), (86, 95), (14, 95), (36, 34)],
    "layer": [(36, 6), (64, 6), (83, 13), (96, 82), (85, 86), (76, 42), (77, 97), (23, 97),
              (24, 42), (15, 86), (4, 82), (17, 13)],
    "shoes": [(8, 80), (12, 62), (22, 48), (40, 44), (52, 56), (80, 62), (92, 70), (92, 82),
              (8, 82)],
    "accessory": [(6, 70), (20, 66), (24, 46), (34, 32), (50, 28), (66, 32), (76, 46), (80, 66),
                  (94, 70), (92, 78), (8, 78)],
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class GarmentSpec:
    """What to draw, in iMaterialist terms (the dataset's labels come from these)."""

    category: Category
    color: Color
    material: str  # iMaterialist material name
    asymmetric: bool = False  # a dress with a slanted hem: the "Asymmetric" style label
    stripes: tuple[str, ...] = ()  # colour names of a ``multi`` garment's stripes
    metal: str = ""  # "Gold" / "Silver" for ``metallic``

    @property
    def color_label(self) -> str:
        """The colour string a table row carries (multi-word for striped garments)."""
        if self.color == "metallic":
            return self.metal
        if self.color == "multi":
            return " ".join(self.stripes) if len(self.stripes) == 2 else "Multi Color"
        return SOLID_COLORS[self.color][0]


def sample_spec(
    rng: random.Random,
    *,
    categories: tuple[Category, ...] | None = None,
    colors: tuple[Color, ...] | None = None,
    textured: bool = True,
) -> GarmentSpec:
    """A random garment; ``textured=False`` draws everything plain (cotton or canvas)."""
    category = rng.choice(categories or tuple(CATEGORY_LABELS))
    color = rng.choice(colors or DRAWABLE_COLORS)
    materials = CATEGORY_MATERIALS[category] if textured else PLAIN_MATERIALS[category]
    material = rng.choice(materials)
    stripes: tuple[str, ...] = ()
    if color == "multi":
        names = [name for name, _ in SOLID_COLORS.values()]
        stripes = tuple(rng.sample(names, rng.choice((2, 3))))
    metal = rng.choice(sorted(METALS)) if color == "metallic" else ""
    asymmetric = category == "dress" and rng.random() < 0.3
    return GarmentSpec(category, color, material, asymmetric, stripes, metal)


def _mask(spec: GarmentSpec, rng: random.Random, size: int) -> Image.Image:
    """The silhouette, scaled, rotated and placed at random on a ``size`` canvas."""
    points = list(_POLYGONS[spec.category])
    if spec.asymmetric:  # slant the hem: one side long, the other short
        points = [(39, 6), (61, 6), (64, 34), (88, 97), (12, 68), (36, 34)]
    scale = rng.uniform(0.5, 0.9) * size / 100
    angle = math.radians(rng.uniform(-10, 10))
    cos, sin = math.cos(angle), math.sin(angle)
    span = 100 * scale
    left = rng.uniform(0, size - span)
    top = rng.uniform(0, size - span)
    placed = []
    for x, y in points:
        dx, dy = (x - 50) * scale, (y - 50) * scale
        placed.append((left + span / 2 + dx * cos - dy * sin, top + span / 2 + dx * sin + dy * cos))
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    draw.polygon(placed, fill=255)
    if spec.category == "layer":  # the open front of a jacket
        cx = left + span / 2
        draw.line([(cx, top + 8 * scale), (cx, top + 97 * scale)], fill=0, width=max(1, size // 64))
    if spec.category == "top":  # the neckline
        cx, cy = left + span / 2, top + span / 2 + (12 - 50) * scale
        radius = 9 * scale
        draw.ellipse([cx - radius, cy - radius * 0.7, cx + radius, cy + radius * 0.7], fill=0)
    return mask


def _texture(material: str, size: int, rng: random.Random) -> FloatImage:
    """A brightness multiplier around 1.0; hue is left alone so the colour label holds."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * math.pi)
    pattern: FloatImage
    if material == "Denim":  # diagonal twill
        pattern = 1 + 0.14 * np.sin((x + y) * 2 * math.pi / 4 + phase)
    elif material == "Knit":  # ribs
        pattern = 1 + 0.16 * np.sign(np.sin(x * 2 * math.pi / 5 + phase))
    elif material == "Corduroy":  # wide wales
        pattern = 1 + 0.22 * np.sin(x * 2 * math.pi / 7 + phase)
    elif material == "Canvas":  # fine cross-hatch
        pattern = 1 + 0.08 * (np.sin(x * 2 * math.pi / 3) + np.sin(y * 2 * math.pi / 3))
    elif material == "Wool":  # coarse speckle
        noise = np.asarray(
            Image.fromarray(
                np.uint8(np.random.default_rng(rng.getrandbits(32)).integers(0, 255, (32, 32)))
            ).resize((size, size), Image.Resampling.BILINEAR),
            dtype=np.float32,
        )
        pattern = (1 + 0.18 * (noise / 255 - 0.5)).astype(np.float32)
    elif material == "Leather":  # one glossy highlight
        cx, cy = rng.uniform(0.3, 0.7) * size, rng.uniform(0.2, 0.5) * size
        spot = np.exp(-(((x - cx) ** 2) + ((y - cy) ** 2)) / (2 * (0.12 * size) ** 2))
        pattern = 0.92 + 0.45 * spot
    else:  # Cotton and anything else: plain
        pattern = np.ones((size, size), dtype=np.float32)
    return pattern


def _fill(spec: GarmentSpec, size: int, rng: random.Random) -> FloatImage:
    """The garment's colour field (H, W, 3) before texture and shading."""
    field = np.empty((size, size, 3), dtype=np.float32)
    if spec.color == "multi":
        rgbs = [rgb for name, rgb in SOLID_COLORS.values() if name in spec.stripes]
        band = rng.randint(max(4, size // 16), max(6, size // 8))
        rows = (np.arange(size) // band) % len(rgbs)
        field[:] = np.asarray(rgbs, dtype=np.float32)[rows][:, None, :]
        return field
    rgb = METALS[spec.metal] if spec.color == "metallic" else SOLID_COLORS[spec.color][1]
    jitter = np.asarray([rng.uniform(-10, 10) for _ in range(3)], dtype=np.float32)
    field[:] = np.asarray(rgb, dtype=np.float32) * rng.uniform(0.9, 1.1) + jitter
    if spec.color == "metallic":  # a metal's sheen: strong diagonal bright and dark bands
        y, x = np.mgrid[0:size, 0:size].astype(np.float32)
        sheen = 1 + 0.35 * np.sin((x * 0.6 + y) * 2 * math.pi / rng.uniform(18, 30))
        field *= sheen[:, :, None]
    return field


def _background(size: int, rng: random.Random) -> FloatImage:
    """A studio backdrop: light or dark neutral, slightly tinted, with a soft gradient."""
    level = rng.uniform(190, 250) if rng.random() < 0.8 else rng.uniform(55, 110)
    tint = np.asarray([rng.uniform(-10, 10) for _ in range(3)], dtype=np.float32)
    ramp = np.linspace(-1, 1, size, dtype=np.float32)[:, None] * rng.uniform(-14, 14)
    return np.clip(level + tint[None, None, :] + ramp[:, :, None], 0, 255) * np.ones(
        (size, size, 3), dtype=np.float32
    )


def render_garment(spec: GarmentSpec, rng: random.Random, size: int = 128) -> Image.Image:
    """Draw ``spec`` as an RGB product photo of ``size`` x ``size`` pixels."""
    mask_image = _mask(spec, rng, size)
    mask = np.asarray(mask_image, dtype=np.float32) / 255
    if spec.material == "Lace":  # holes that show the backdrop
        y, x = np.mgrid[0:size, 0:size]
        mask = mask * ~(((x % 6) < 2) & ((y % 6) < 2))
    # A soft contact shadow and a darker rim, so white on white still has an outline.
    edge = np.asarray(mask_image.filter(ImageFilter.MaxFilter(3)), dtype=np.float32) / 255
    garment = _fill(spec, size, rng) * _texture(spec.material, size, rng)[:, :, None]
    shade = np.linspace(rng.uniform(0.88, 1.0), rng.uniform(1.0, 1.08), size, dtype=np.float32)
    garment *= shade[None, :, None]
    background = _background(size, rng)
    rim = np.clip(edge - mask, 0, 1)[:, :, None]
    image = background * (1 - rim * 0.45)
    image = image * (1 - mask[:, :, None]) + garment * mask[:, :, None]
    sigma = rng.uniform(0, 7)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, sigma, image.shape)
    return Image.fromarray(np.uint8(np.clip(image + noise, 0, 255)), "RGB")
