"""Output profiles: the exact text a model was trained to write, and how it maps to schema v1.

Models trained elsewhere write the same attributes differently. This project's models
write every field in schema order with tags in schema order. The paper's training code
writes ``json.dumps(labels, separators=(",", ":"))`` with its tag lists sorted
alphabetically (``paper``: the five fields the paper describes); its V1 inference code
reads four fields and derives the occasion from the style tags and category
(``paper-v1``). The V2 adapter's card shows eight fields (``secondary_colors``, ``fit``,
``season_tags`` too), which schema v1 cannot hold: no built-in profile claims it.
Constraining a model to another text than its own would fight it, so the grammar, the
parser and the confidence follow the model's profile; the API answer is schema v1 for
every profile (tags back in schema order, derived values with ``confidence: null``).

Pure Python (no torch): the manifest carries a profile, and the service layer reads it.
"""

from __future__ import annotations

import json
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fashion_florence_client.schema import (
    FIELD_ORDER,
    MAX_TAGS,
    OCCASION_TAGS,
    STYLE_TAGS,
    FashionAttributes,
)

PAPER_PROMPT: Final = "Analyze this clothing item image and return structured fashion tags as JSON."
TagOrder = Literal["schema", "sorted"]
Derivation = Literal["occasion_from_style_and_category"]
TAG_VOCABULARIES: Final[dict[str, tuple[str, ...]]] = {
    "style_tags": STYLE_TAGS,
    "occasion_tags": OCCASION_TAGS,
}
#: The paper's V1 inference rules (``training/inference.py`` of the paper's code): occasions
#: are the union over the predicted style tags, else a default per category. Restated as
#: data; its ``formal-event`` is not a schema v1 occasion and is left out.
OCCASION_BY_STYLE: Final[dict[str, tuple[str, ...]]] = {
    "sporty": ("gym", "workout"),
    "athletic": ("gym", "workout"),
    "activewear": ("gym", "workout"),
    "sexy": ("party", "night-out"),
    "glamorous": ("party", "night-out"),
    "edgy": ("going-out", "night-out"),
    "elegant": ("dinner", "date"),
    "classic": ("work", "everyday"),
    "workwear": ("work",),
    "preppy": ("work", "everyday"),
    "bohemian": ("vacation", "casual"),
    "streetwear": ("everyday", "casual"),
    "minimalist": ("everyday", "work"),
    "casual": ("everyday", "casual"),
    "trendy": ("everyday", "going-out"),
    "chic": ("everyday", "date"),
    "vintage": ("everyday", "casual"),
    "statement": ("party", "going-out"),
}
OCCASION_BY_CATEGORY: Final[dict[str, tuple[str, ...]]] = {
    "shoes": ("everyday",),
    "accessory": ("everyday",),
    "layer": ("everyday", "casual"),
}
DEFAULT_OCCASIONS: Final = ("everyday", "casual")


class ProfileError(ValueError):
    """A model's output does not follow its profile (or a profile is malformed)."""


class OutputProfile(BaseModel):
    """What text a model writes: which fields, in what order, tags in what order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    #: The prompt its training code used; None = the manifest's prompt (this project's).
    prompt: str | None = None
    fields: tuple[str, ...] = Field(description="the fields the model writes, in its order")
    tag_order: TagOrder = "schema"
    material_nullable: bool = True
    #: Fields the model does not write, and how they are filled.
    derived: dict[str, Derivation] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _covers_schema(self) -> OutputProfile:
        unknown = set(self.fields) - set(FIELD_ORDER)
        if unknown or len(set(self.fields)) != len(self.fields):
            raise ValueError(f"fields {self.fields} must be distinct schema v1 fields")
        if set(self.fields) | set(self.derived) != set(FIELD_ORDER) or (
            set(self.fields) & set(self.derived)
        ):
            raise ValueError("every schema field must be either written or derived, not both")
        if set(self.derived) - {"occasion_tags"}:
            raise ValueError("only occasion_tags can be derived (from style and category)")
        return self

    def tag_values(self, name: str) -> tuple[str, ...]:
        """A tag vocabulary in the order this profile lists tags."""
        values = TAG_VOCABULARIES[name]
        return tuple(sorted(values)) if self.tag_order == "sorted" else values


PROJECT_PROFILE: Final = OutputProfile(name="fashion-florence", fields=FIELD_ORDER)
PAPER_PROFILE: Final = OutputProfile(
    name="paper", prompt=PAPER_PROMPT, fields=FIELD_ORDER, tag_order="sorted"
)
PAPER_FOUR_FIELD_PROFILE: Final = OutputProfile(
    name="paper-v1",
    prompt=PAPER_PROMPT,
    fields=FIELD_ORDER[:4],
    tag_order="sorted",
    derived={"occasion_tags": "occasion_from_style_and_category"},
)
BUILTIN_PROFILES: Final[dict[str, OutputProfile]] = {
    p.name: p for p in (PROJECT_PROFILE, PAPER_PROFILE, PAPER_FOUR_FIELD_PROFILE)
}


def builtin_profile(name: str) -> OutputProfile:
    if name not in BUILTIN_PROFILES:
        raise ProfileError(f"unknown output profile {name!r}; built in: {sorted(BUILTIN_PROFILES)}")
    return BUILTIN_PROFILES[name]


def labels(attributes: FashionAttributes, profile: OutputProfile) -> dict[str, Any]:
    """The written fields, in the profile's order and tag order."""
    values = attributes.model_dump()
    out: dict[str, Any] = {}
    for name in profile.fields:
        value = values[name]
        if isinstance(value, list):
            order = profile.tag_values(name)
            value = sorted(value, key=order.index)
        out[name] = value
    return out


def target_text(attributes: FashionAttributes, profile: OutputProfile) -> str:
    """The text the profile's training code writes for ``attributes``."""
    return json.dumps(labels(attributes, profile), separators=(",", ":"), ensure_ascii=False)


def derive(name: str, how: Derivation, written: dict[str, Any]) -> list[str]:
    """A field the model does not write, from the ones it does (schema order, at most the
    schema's maximum: the V1 rules can name more occasions than schema v1 allows)."""
    if how != "occasion_from_style_and_category":
        raise ProfileError(f"unknown derivation {how!r} for {name}")
    styles = written.get("style_tags") or []
    found = {tag for style in styles for tag in OCCASION_BY_STYLE.get(str(style), ())}
    if not found:
        found = set(OCCASION_BY_CATEGORY.get(str(written.get("category")), DEFAULT_OCCASIONS))
    ordered: list[str] = [tag for tag in OCCASION_TAGS if tag in found]
    return ordered[:MAX_TAGS]


def parse_output(text: str, profile: OutputProfile) -> FashionAttributes:
    """A model's text, checked against its profile, as schema v1 attributes."""
    try:
        written = json.loads(text.strip())
    except ValueError as exc:
        raise ProfileError(f"not JSON: {exc}") from exc
    if not isinstance(written, dict) or tuple(written) != profile.fields:
        keys = tuple(written) if isinstance(written, dict) else type(written).__name__
        raise ProfileError(f"expected the fields {profile.fields} in order, got {keys}")
    if not profile.material_nullable and written.get("material", "") is None:
        raise ProfileError("this profile's model never writes a null material")
    for name, tags in written.items():
        if name in TAG_VOCABULARIES and isinstance(tags, list):
            order = profile.tag_values(name)
            if not all(t in order for t in tags) or [order.index(t) for t in tags] != sorted(
                {order.index(t) for t in tags}
            ):
                raise ProfileError(f"{name} {tags} are not unique and in {profile.tag_order} order")
    full = dict(written)
    for name, how in profile.derived.items():
        full[name] = derive(name, how, written)
    for name, vocabulary in TAG_VOCABULARIES.items():
        if isinstance(full.get(name), list):
            full[name] = sorted(full[name], key=vocabulary.index)
    try:
        return FashionAttributes.model_validate(full)
    except ValueError as exc:
        raise ProfileError(str(exc)) from exc
