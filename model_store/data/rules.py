"""Versioned iMaterialist -> schema v1 collapse rules, and applying them to one item.

The rules are data (``collapse_rules.json``, shipped in the package); this module only
interprets them. Version 1 is the paper's reference implementation; version 2 keeps every
reference mapping and fixes its listed flaws (``fixes`` in the JSON, explained in
``docs/model_pipeline.md``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict

from fashion_florence_client.schema import (
    MAX_TAGS,
    OCCASION_TAGS,
    STYLE_TAGS,
    Category,
    Color,
    FashionAttributes,
    Material,
    OccasionTag,
    StyleTag,
)

RULES_FILE: Final = "collapse_rules.json"

DropReason = Literal[
    "no_category", "unknown_category", "excluded_category", "conflicting_categories"
]
Labels = Mapping[str, list[str]]  # iMaterialist group -> label names


class Fix(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    reference: str
    v2: str


class MinimalistRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    tag: StyleTag
    colors: list[Color]
    without_groups: list[str]


class CollapseRules(BaseModel):
    """The schema of ``collapse_rules.json``; every value is checked against schema v1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int
    about: str
    fixes: list[Fix]
    labels: dict[str, list[str]]
    category_map: dict[str, Category | None]
    color_map: dict[str, Color]
    material_map: dict[str, Material]
    category_to_style: dict[str, list[StyleTag]]
    label_to_style: dict[str, list[StyleTag]]
    category_to_occasion: dict[str, list[OccasionTag]]
    label_to_occasion: dict[str, list[OccasionTag]]
    minimalist: MinimalistRule
    max_tags: int
    attribute_groups: list[str]

    @property
    def version_tag(self) -> str:
        return f"imat-collapse-v{self.version}"

    def group_of(self) -> dict[str, str]:
        return {name: group for group, names in self.labels.items() for name in names}


@cache
def load_rules() -> CollapseRules:
    """The rules shipped with this package (parsed once)."""
    text = resources.files("model_store.data").joinpath(RULES_FILE).read_text(encoding="utf-8")
    return CollapseRules.model_validate(json.loads(text))


# --- parsing label strings (the table shape) ---------------------------------------------------

_SEPARATORS: Final = re.compile(r"[\s,;|/+]+")


def parse_labels(text: str, vocabulary: Iterable[str]) -> tuple[list[str], list[str]]:
    """Split ``text`` into known label names by longest match; returns (labels, unknown).

    "Black White" -> ["Black", "White"], "Multi Color" -> ["Multi Color"] and
    "Hosiery, Stockings, Tights" stays one label: names may hold spaces and commas, so
    splitting on separators first would break them. Case-insensitive.
    """
    names = sorted(vocabulary, key=len, reverse=True)
    lowered = text.lower()
    found: list[str] = []
    unknown: list[str] = []
    position = 0
    while position < len(text):
        gap = _SEPARATORS.match(text, position)
        if gap:
            position = gap.end()
            continue
        for name in names:
            end = position + len(name)
            if lowered.startswith(name.lower(), position) and (
                end == len(text) or _SEPARATORS.match(text, end)
            ):
                found.append(name)
                position = end
                break
        else:  # not a known name: skip one word and remember it
            word = _SEPARATORS.search(text, position)
            end = word.start() if word else len(text)
            unknown.append(text[position:end])
            position = end
    return found, unknown


# --- collapsing one item -----------------------------------------------------------------------


@dataclass(slots=True)
class Collapsed:
    """The outcome for one item: attributes, or the reason it was dropped."""

    attributes: FashionAttributes | None = None
    drop_reason: DropReason | None = None
    drop_labels: list[str] = field(default_factory=list)  # the labels that caused the drop
    warnings: list[str] = field(default_factory=list)  # kept, but something was ignored


def _ranked(candidates: Iterable[str], order: tuple[str, ...], limit: int) -> list[str]:
    """First ``limit`` unique tags by priority, then listed in schema order."""
    chosen: list[str] = []
    for tag in candidates:
        if tag not in chosen:
            chosen.append(tag)
    return sorted(chosen[:limit], key=order.index)


def _category(rules: CollapseRules, names: list[str], result: Collapsed) -> list[str]:
    """The category labels that decide the bucket (empty when the item is dropped)."""
    known = [n for n in names if n in rules.category_map]
    unknown = [n for n in names if n not in rules.category_map]
    kept = [n for n in known if rules.category_map[n] is not None]
    buckets = {rules.category_map[n] for n in kept}
    if len(buckets) > 1:
        result.drop_reason, result.drop_labels = "conflicting_categories", kept
    elif not kept and unknown:
        result.drop_reason, result.drop_labels = "unknown_category", unknown
    elif not kept and known:
        result.drop_reason, result.drop_labels = "excluded_category", known
    elif not kept:
        result.drop_reason = "no_category"
    if result.drop_reason is not None:
        return []
    if unknown:
        result.warnings.append("unknown_category_label")
    # Excluded labels beside a kept one (e.g. "Dresses" + "Maternity") do not veto it.
    return kept


def _color(rules: CollapseRules, names: list[str], result: Collapsed) -> Color:
    colors: list[Color] = []
    for name in names:
        if name not in rules.color_map:
            result.warnings.append("unknown_color_label")
        elif rules.color_map[name] not in colors:
            colors.append(rules.color_map[name])
    if len(colors) > 1 and "unknown" in colors:
        colors.remove("unknown")  # "Clear" says nothing against a real colour
    if not colors:
        return "unknown"
    if len(colors) > 1:
        return "multi"
    return colors[0]


def _material(rules: CollapseRules, names: list[str], result: Collapsed) -> Material | None:
    materials = list(dict.fromkeys(rules.material_map[n] for n in names if n in rules.material_map))
    if len(materials) > 1:
        result.warnings.append("conflicting_materials")  # one garment, one material: say none
        return None
    return materials[0] if materials else None


def collapse(labels: Labels, rules: CollapseRules | None = None) -> Collapsed:
    """Map one item's iMaterialist labels (by group) to schema v1 attributes."""
    rules = rules or load_rules()
    result = Collapsed()
    categories = _category(rules, labels.get("category", []), result)
    if not categories:
        return result
    color = _color(rules, labels.get("color", []), result)
    material = _material(rules, labels.get("material", []), result)

    attribute_labels = [n for g in rules.attribute_groups for n in labels.get(g, [])]
    styles = [t for n in categories for t in rules.category_to_style.get(n, [])]
    styles += [t for n in attribute_labels for t in rules.label_to_style.get(n, [])]
    minimal = rules.minimalist
    if color in minimal.colors and not any(labels.get(g) for g in minimal.without_groups):
        styles.append(minimal.tag)
    occasions = [t for n in categories for t in rules.category_to_occasion.get(n, [])]
    occasions += [t for n in attribute_labels for t in rules.label_to_occasion.get(n, [])]

    limit = min(rules.max_tags, MAX_TAGS)
    result.attributes = FashionAttributes.model_validate(
        {
            "category": rules.category_map[categories[0]],
            "primary_color": color,
            "material": material,
            "style_tags": _ranked(styles, STYLE_TAGS, limit),
            "occasion_tags": _ranked(occasions, OCCASION_TAGS, limit),
        }
    )
    return result
