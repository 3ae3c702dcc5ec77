"""Output schema version 1: the single source of truth for what the model emits and the
API answers (the server, the model pipeline and this client all import it from here).

The enumerations are the paper's compact schema. Tags are unique and listed in schema
order, so a model's target text is fully determined by the attributes (constrained
decoding relies on that ordering later).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION: Final = 1

Category = Literal["top", "bottom", "dress", "layer", "shoes", "accessory"]
Color = Literal[
    "black", "white", "gray", "beige", "brown", "blue", "navy", "green",
    "yellow", "orange", "red", "pink", "purple", "metallic", "multi", "unknown",
]  # fmt: skip
Material = Literal[
    "canvas", "cashmere", "chambray", "chiffon", "corduroy", "cotton", "denim", "faux fur",
    "flannel", "fleece", "gingham", "knit", "lace", "leather", "linen", "neoprene", "nylon",
    "organza", "patent leather", "plush", "polyester", "rayon", "satin", "silk", "spandex",
    "suede", "taffeta", "tulle", "tweed", "twill", "velour", "velvet", "vinyl", "wool",
]  # fmt: skip
StyleTag = Literal[
    "minimalist", "classic", "edgy", "romantic", "sporty", "athletic", "activewear",
    "bohemian", "streetwear", "preppy", "elegant", "casual", "chic", "vintage", "statement",
    "workwear", "sexy", "glamorous", "trendy",
]  # fmt: skip
OccasionTag = Literal[
    "everyday", "casual", "work", "dinner", "party", "formal", "vacation", "lounge",
    "wedding_guest", "going-out", "clubbing", "gym", "workout", "date", "night-out", "brunch",
]  # fmt: skip

CATEGORIES: Final[tuple[Category, ...]] = get_args(Category)
COLORS: Final[tuple[Color, ...]] = get_args(Color)
MATERIALS: Final[tuple[Material, ...]] = get_args(Material)
STYLE_TAGS: Final[tuple[StyleTag, ...]] = get_args(StyleTag)
OCCASION_TAGS: Final[tuple[OccasionTag, ...]] = get_args(OccasionTag)
MAX_TAGS: Final = 4

FIELD_ORDER: Final = ("category", "primary_color", "material", "style_tags", "occasion_tags")

#: A confidence: a probability in [0, 1].
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


def _check_tags(tags: list[str], vocabulary: tuple[str, ...]) -> list[str]:
    if len(set(tags)) != len(tags):
        raise ValueError("tags must be unique")
    positions = [vocabulary.index(tag) for tag in tags]
    if positions != sorted(positions):
        raise ValueError("tags must be listed in schema order")
    return tags


class FashionAttributes(BaseModel):
    """The attributes of one garment image (schema version 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: Category
    primary_color: Color
    material: Material | None
    style_tags: list[StyleTag] = Field(max_length=MAX_TAGS)
    occasion_tags: list[OccasionTag] = Field(max_length=MAX_TAGS)

    @field_validator("style_tags")
    @classmethod
    def _style_order(cls, tags: list[str]) -> list[str]:
        return _check_tags(tags, STYLE_TAGS)

    @field_validator("occasion_tags")
    @classmethod
    def _occasion_order(cls, tags: list[str]) -> list[str]:
        return _check_tags(tags, OCCASION_TAGS)

    def to_target_text(self) -> str:
        """The compact JSON the model is trained to emit (fixed key order, no spaces)."""
        return json.dumps(self.model_dump(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_model_text(cls, text: str) -> FashionAttributes:
        """Parse and validate model output; raises ValueError on anything off-schema."""
        return cls.model_validate_json(text.strip())


class AttributeConfidence(BaseModel):
    """Confidence in [0, 1] for each value in :class:`FashionAttributes`, in the same shape."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: float = Field(ge=0.0, le=1.0)
    primary_color: float = Field(ge=0.0, le=1.0)
    material: float = Field(ge=0.0, le=1.0, description="Confidence in the value, also `null`.")
    style_tags: list[Probability] = Field(description="One number per tag, in the same order.")
    occasion_tags: list[Probability] | None = Field(
        description="One number per tag, in the same order; null when the model does not "
        "write occasions and they are derived from the category (no model probability)."
    )


def filter_tags(
    attributes: FashionAttributes, confidence: AttributeConfidence, min_tag_confidence: float
) -> tuple[FashionAttributes, AttributeConfidence]:
    """Drop every tag whose confidence is below ``min_tag_confidence`` (order is kept)."""
    kept_attributes: dict[str, list[str]] = {}
    kept_confidence: dict[str, list[float]] = {}
    for name, value in attributes.model_dump().items():
        if not isinstance(value, list):
            continue
        scores: list[float] | None = getattr(confidence, name)
        if scores is None:  # derived values have no confidence and are never dropped
            continue
        pairs = [(t, s) for t, s in zip(value, scores, strict=True) if s >= min_tag_confidence]
        kept_attributes[name] = [t for t, _ in pairs]
        kept_confidence[name] = [s for _, s in pairs]
    return (
        attributes.model_copy(update=kept_attributes),
        confidence.model_copy(update=kept_confidence),
    )


def json_schema() -> dict[str, Any]:
    return FashionAttributes.model_json_schema()
