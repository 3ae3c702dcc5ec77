"""Output profiles: their validation, the paper's text and the V1 occasion rules."""

from __future__ import annotations

import pytest

from fashion_florence_client.schema import FashionAttributes
from model_store.manifest import ModelManifest
from model_store.profiles import (
    PAPER_FOUR_FIELD_PROFILE,
    PAPER_PROFILE,
    PROJECT_PROFILE,
    OutputProfile,
    ProfileError,
    parse_output,
)


def test_v1_text_gets_occasions_by_the_v1_rules_in_schema_order() -> None:
    # The example in the paper's V1 inference module: its rules give dinner, date,
    # formal-event, party, night-out; formal-event is not a schema v1 occasion.
    text = '{"category":"dress","primary_color":"red","material":"silk","style_tags":["elegant","glamorous"]}'
    attributes = parse_output(text, PAPER_FOUR_FIELD_PROFILE)
    assert attributes.occasion_tags == ["dinner", "party", "date", "night-out"]
    assert attributes.style_tags == ["elegant", "glamorous"]
    plain = '{"category":"shoes","primary_color":"red","material":null,"style_tags":[]}'
    assert parse_output(plain, PAPER_FOUR_FIELD_PROFILE).occasion_tags == ["everyday"]
    top = plain.replace("shoes", "top")
    assert parse_output(top, PAPER_FOUR_FIELD_PROFILE).occasion_tags == ["everyday", "casual"]


def test_parse_refuses_what_the_profile_model_would_not_write() -> None:
    schema_order = FashionAttributes(
        category="top", primary_color="navy", material=None,
        style_tags=["minimalist", "classic"], occasion_tags=[],
    ).to_target_text()  # fmt: skip
    with pytest.raises(ProfileError, match="sorted order"):
        parse_output(schema_order, PAPER_PROFILE)
    with pytest.raises(ProfileError, match="fields"):
        parse_output(schema_order, PAPER_FOUR_FIELD_PROFILE)
    assert parse_output(schema_order, PROJECT_PROFILE).style_tags == ["minimalist", "classic"]


def test_profiles_must_cover_the_schema() -> None:
    with pytest.raises(ValueError, match="written or derived"):
        OutputProfile(name="x", fields=("category", "primary_color"))
    with pytest.raises(ValueError, match="only occasion_tags"):
        OutputProfile(
            name="x",
            fields=("category", "primary_color", "style_tags", "occasion_tags"),
            derived={"material": "occasion_from_style_and_category"},
        )


def test_old_manifests_mean_this_projects_profile() -> None:
    old: dict[str, object] = {
        "name": "m", "base_model": "b", "adapter": None, "schema_version": 1, "prompt": "p",
        "image_size": 128, "dtype": "float32", "weights": {}, "created_at": "t",
    }  # fmt: skip
    assert ModelManifest.model_validate(old).profile == PROJECT_PROFILE
