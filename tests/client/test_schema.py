"""Schema v1: the enumerations, the compact target text and what validation refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from fashion_florence_client.schema import (
    CATEGORIES,
    COLORS,
    FIELD_ORDER,
    MATERIALS,
    MAX_TAGS,
    OCCASION_TAGS,
    SCHEMA_VERSION,
    STYLE_TAGS,
    FashionAttributes,
)
from tests.conftest import SHARED_DATA

REFERENCE = SHARED_DATA / "imaterialist" / "reference_collapse.json"

GOOD: dict[str, Any] = {
    "category": "bottom",
    "primary_color": "navy",
    "material": "patent leather",
    "style_tags": ["classic", "streetwear", "casual", "trendy"],
    "occasion_tags": ["everyday", "wedding_guest", "going-out"],
}


@pytest.fixture(scope="module")
def reference_schema() -> dict[str, list[str]]:
    if not REFERENCE.is_file():
        pytest.fail(f"{REFERENCE} is missing: the shared data set is required")
    schema: dict[str, list[str]] = json.loads(REFERENCE.read_text(encoding="utf-8"))["schema"]
    return schema


def test_schema_version_is_one() -> None:
    assert SCHEMA_VERSION == 1


def test_enumerations_equal_the_reference_exactly(reference_schema: dict[str, list[str]]) -> None:
    ours = {
        "category": CATEGORIES,
        "primary_color": COLORS,
        "material": MATERIALS,
        "style_tags": STYLE_TAGS,
        "occasion_tags": OCCASION_TAGS,
    }
    assert list(reference_schema) == list(FIELD_ORDER)
    for field, values in ours.items():
        assert list(values) == reference_schema[field], field  # same values, same order


def test_json_schema_enums_follow_the_literals(reference_schema: dict[str, list[str]]) -> None:
    schema = FashionAttributes.model_json_schema()
    assert list(schema["properties"]) == list(FIELD_ORDER)
    assert schema["properties"]["category"]["enum"] == reference_schema["category"]
    assert schema["additionalProperties"] is False


def test_target_text_is_compact_with_fixed_key_order() -> None:
    # Keys given in a scrambled order must still come out in schema order.
    scrambled = {key: GOOD[key] for key in reversed(FIELD_ORDER)}
    text = FashionAttributes.model_validate(scrambled).to_target_text()
    assert text == (
        '{"category":"bottom","primary_color":"navy","material":"patent leather",'
        '"style_tags":["classic","streetwear","casual","trendy"],'
        '"occasion_tags":["everyday","wedding_guest","going-out"]}'
    )
    assert ", " not in text
    assert ": " not in text
    assert "\n" not in text
    assert list(json.loads(text)) == list(FIELD_ORDER)


def test_target_text_round_trips() -> None:
    attributes = FashionAttributes.model_validate(GOOD)
    text = attributes.to_target_text()
    parsed = FashionAttributes.from_model_text(text)
    assert parsed == attributes
    assert parsed.to_target_text() == text
    # Surrounding whitespace (e.g. from decoding) is tolerated.
    assert FashionAttributes.from_model_text(f"  {text}\n") == attributes


def test_material_may_be_null_and_tags_may_be_empty() -> None:
    attributes = FashionAttributes.model_validate(
        {**GOOD, "material": None, "style_tags": [], "occasion_tags": []}
    )
    assert attributes.material is None
    text = attributes.to_target_text()
    assert '"material":null' in text
    assert FashionAttributes.from_model_text(text) == attributes


def test_every_literal_is_accepted() -> None:
    for category in CATEGORIES:
        FashionAttributes.model_validate({**GOOD, "category": category})
    for color in COLORS:
        FashionAttributes.model_validate({**GOOD, "primary_color": color})
    for material in MATERIALS:
        FashionAttributes.model_validate({**GOOD, "material": material})
    for tag in STYLE_TAGS:
        FashionAttributes.model_validate({**GOOD, "style_tags": [tag]})
    for occasion in OCCASION_TAGS:
        FashionAttributes.model_validate({**GOOD, "occasion_tags": [occasion]})


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"style_tags": ["casual", "casual"]}, "unique"),
        ({"occasion_tags": ["party", "party"]}, "unique"),
        ({"style_tags": ["casual", "classic"]}, "schema order"),
        ({"occasion_tags": ["formal", "everyday"]}, "schema order"),
        ({"style_tags": ["minimalist", "classic", "edgy", "romantic", "sporty"]}, "at most"),
        ({"occasion_tags": ["everyday", "casual", "work", "dinner", "party"]}, "at most"),
        ({"category": "hat"}, "literal"),
        ({"primary_color": "Red"}, "literal"),
        ({"primary_color": "navy blue"}, "literal"),
        ({"material": "polyester blend"}, "literal"),
        ({"material": ""}, "literal"),
        ({"style_tags": ["goth"]}, "literal"),
        ({"occasion_tags": ["funeral"]}, "literal"),
        ({"style_tags": "casual"}, "list"),
        ({"brand": "acme"}, "extra"),
    ],
)
def test_invalid_attributes_are_rejected(override: dict[str, Any], reason: str) -> None:
    data = {**GOOD, **override}
    with pytest.raises(ValidationError) as caught:
        FashionAttributes.model_validate(data)
    assert reason in str(caught.value).lower()
    # The model-output path refuses the same text (ValidationError is a ValueError).
    with pytest.raises(ValueError, match=reason):
        FashionAttributes.from_model_text(json.dumps(data))


def test_max_tags_boundary() -> None:
    assert MAX_TAGS == 4
    four = list(STYLE_TAGS[:MAX_TAGS])
    assert FashionAttributes.model_validate({**GOOD, "style_tags": four}).style_tags == four


@pytest.mark.parametrize("missing", FIELD_ORDER)
def test_every_field_is_required(missing: str) -> None:
    data = {key: value for key, value in GOOD.items() if key != missing}
    with pytest.raises(ValidationError, match="Field required"):
        FashionAttributes.model_validate(data)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        '{"category":"top"',  # truncated generation
        "[]",
        '{"category":"top","primary_color":"red","material":null,"style_tags":[],'
        '"occasion_tags":[]}{"category":"top"}',  # trailing garbage
    ],
)
def test_malformed_model_text_is_rejected(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - pydantic's message varies by case
        FashionAttributes.from_model_text(text)


def test_attributes_are_immutable() -> None:
    attributes = FashionAttributes.model_validate(GOOD)
    with pytest.raises(ValidationError):
        attributes.category = "top"
