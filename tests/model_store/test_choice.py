"""Closed-set choice: the pipeline's stand-in for the service's constrained decoding."""

from __future__ import annotations

import pytest
from PIL import Image

from fashion_florence_client.schema import FashionAttributes
from model_store.demo_cache import SHIPPED_DEMO_DIR
from model_store.evaluation.choice import _prefix, choose_values
from model_store.loading import load_model
from service.inference.engine import load_engine
from service.settings import Settings
from tests.conftest import photo_paths

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def test_the_prefix_is_the_target_text_up_to_the_value() -> None:
    target = FashionAttributes(
        category="shoes", primary_color="red", material=None, style_tags=[], occasion_tags=[]
    ).to_target_text()
    category = _prefix({}, "category")
    colour = _prefix({"category": "shoes"}, "primary_color")
    assert category == '{"category":"'
    assert target.startswith(category + 'shoes"')
    assert target.startswith(colour + 'red"')


def test_only_a_leading_run_of_closed_set_fields_is_chosen() -> None:
    loaded = load_model(str(SHIPPED_DEMO_DIR))
    with pytest.raises(ValueError, match="leading run"):
        choose_values(loaded.model, loaded.processor, "p", [], fields=("primary_color",))
    with pytest.raises(ValueError, match="leading run"):
        choose_values(loaded.model, loaded.processor, "p", [], fields=("category", "material"))


def test_choices_are_what_the_engine_answers_for_real_photos() -> None:
    """The trained demo on real photos (varied answers), against the real engine with
    constrained decoding: the same category and colour for every photo."""
    photos = photo_paths()[::23][:16]
    images = [Image.open(path).convert("RGB") for path in photos]
    loaded = load_model(str(SHIPPED_DEMO_DIR))
    chosen = choose_values(loaded.model, loaded.processor, loaded.manifest.prompt, images)
    engine = load_engine(Settings(model_path=str(SHIPPED_DEMO_DIR), device="cpu"))
    outcomes = engine.run_batch([engine.preprocess(image) for image in images])
    answered = [outcome.attributes for outcome in outcomes]
    assert all(attributes is not None for attributes in answered)
    assert [a.category for a in answered if a] == [c["category"] for c in chosen]
    assert [a.primary_color for a in answered if a] == [c["primary_color"] for c in chosen]
    assert len({c["category"] for c in chosen}) > 1  # not one answer for everything
