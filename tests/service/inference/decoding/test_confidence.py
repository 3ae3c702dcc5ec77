"""Per-value confidence: how it is computed, what it sums to, and how the API filters tags."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xgrammar as xgr
from transformers.modeling_outputs import BaseModelOutput

from fashion_florence_client.schema import AttributeConfidence, FashionAttributes, filter_tags
from model_store.loading import LoadedModel
from service.inference.decoding.confidence import attribute_confidence, value_spans
from service.inference.decoding.decoders import DecodingMode
from service.inference.decoding.grammar import SchemaGrammar
from service.inference.engine import FlorenceEngine, load_engine
from service.settings import Settings
from tests.conftest import TRAINED_CLASSES, garment_image
from tests.service.inference.decoding.test_property import random_image

ATTRIBUTES = FashionAttributes(
    category="top",
    primary_color="red",
    material=None,
    style_tags=["classic", "casual"],
    occasion_tags=[],
)


def test_value_spans_point_at_the_values() -> None:
    text, spans = value_spans(ATTRIBUTES)
    assert text == ATTRIBUTES.to_target_text()
    pieces = {(s.field, s.tag): text[s.start : s.end] for s in spans}
    assert pieces == {
        ("category", None): '"top"',
        ("primary_color", None): '"red"',
        ("material", None): "null",
        ("style_tags", 0): '"classic"',
        ("style_tags", 1): ',"casual"',  # the comma that continued the list belongs to the tag
    }


def test_a_value_multiplies_the_tokens_that_write_it() -> None:
    pieces = [
        '{"category":', '"', "top", '","', 'primary_color":"', "re", "d", '","material":',
        "null", ',"style_tags":["', "classic", '","', "casual", '"],"occasion_tags":[]}',
    ]  # fmt: skip
    probabilities = [0.9, 0.8, 0.5, 0.7, 1.0, 0.6, 0.5, 1.0, 0.25, 0.9, 0.4, 0.3, 0.2, 0.95]
    confidence = attribute_confidence(
        ATTRIBUTES, [p.encode() for p in pieces], [math.log(p) for p in probabilities]
    )
    assert confidence is not None
    expected = {
        "category": 0.8 * 0.5 * 0.7,  # '"', 'top', '","' (its closing quote)
        "primary_color": 1.0 * 0.6 * 0.5 * 1.0,
        "material": 0.25,
        # '",style_tags":["' writes the opening quote; '","' closes it and opens the next.
        "style_tags": [0.9 * 0.4 * 0.3, 0.3 * 0.2 * 0.95],
        "occasion_tags": [],
    }
    for name, value in expected.items():
        assert getattr(confidence, name) == pytest.approx(value)


def test_tokens_that_do_not_spell_the_target_give_no_confidence() -> None:
    assert attribute_confidence(ATTRIBUTES, [b"{}"], [0.0]) is None
    text = ATTRIBUTES.to_target_text().encode()
    assert attribute_confidence(ATTRIBUTES, [text], [0.0, 0.0]) is None


def test_filter_tags_drops_low_confidence_tags_in_order() -> None:
    attributes = ATTRIBUTES.model_copy(update={"occasion_tags": ["everyday", "work", "party"]})
    confidence = AttributeConfidence(
        category=0.1, primary_color=0.2, material=0.3,
        style_tags=[0.9, 0.4], occasion_tags=[0.5, 0.49, 0.7],
    )  # fmt: skip
    kept, scores = filter_tags(attributes, confidence, 0.5)
    assert kept.style_tags == ["classic"]
    assert kept.occasion_tags == ["everyday", "party"]
    assert scores.style_tags == [0.9]
    assert scores.occasion_tags == [0.5, 0.7]
    assert (kept.category, scores.category) == ("top", 0.1)  # single values are never dropped
    assert filter_tags(attributes, confidence, 0.0) == (attributes, confidence)
    assert FashionAttributes.model_validate(kept.model_dump()) == kept


def test_confidence_model_has_the_attributes_shape() -> None:
    assert tuple(AttributeConfidence.model_fields) == tuple(FashionAttributes.model_fields)
    for name, info in FashionAttributes.model_fields.items():
        is_list = str(info.annotation).startswith("list")
        assert str(AttributeConfidence.model_fields[name].annotation).startswith("list") == is_list


# --- on real models ----------------------------------------------------------------------


def assert_well_formed(confidence: AttributeConfidence | None, attributes: Any) -> None:
    assert confidence is not None
    for name, value in attributes.model_dump().items():
        score = getattr(confidence, name)
        if isinstance(value, list):
            assert len(score) == len(value)
            assert all(0.0 <= s <= 1.0 for s in score)
        else:
            assert 0.0 <= score <= 1.0


@pytest.fixture(scope="module")
def demo_engine(demo_loaded: LoadedModel) -> FlorenceEngine:
    return FlorenceEngine(demo_loaded, max_new_tokens=256, decoding=DecodingMode.JUMP_FORWARD)


def test_random_model_confidence_is_well_formed(demo_engine: FlorenceEngine) -> None:
    for outcome in demo_engine.run_batch([random_image(seed, seed % 3) for seed in range(4)]):
        assert_well_formed(outcome.confidence, outcome.attributes)


@pytest.mark.slow
def test_trained_model_is_confident_where_it_is_right(trained_model_dir: Path) -> None:
    rng = random.Random(5)
    images = [garment_image(color, rng) for color in TRAINED_CLASSES]
    by_mode = {}
    for jump_forward in (True, False):
        engine = load_engine(
            Settings(model_path=str(trained_model_dir), device="cpu", jump_forward=jump_forward)
        )
        by_mode[jump_forward] = engine.run_batch([engine.preprocess(i) for i in images])
    for fast, reference, target in zip(
        by_mode[True], by_mode[False], TRAINED_CLASSES.values(), strict=True
    ):
        assert_well_formed(fast.confidence, fast.attributes)
        assert fast.attributes == FashionAttributes.model_validate(target)
        assert fast.confidence is not None
        assert reference.confidence is not None
        assert fast.confidence.category > 0.9
        assert min(fast.confidence.style_tags + (fast.confidence.occasion_tags or [])) > 0.9
        for name, value in fast.confidence.model_dump().items():
            np.testing.assert_allclose(value, getattr(reference.confidence, name), atol=1e-4)


def test_single_choice_probabilities_sum_to_one(
    demo_loaded: LoadedModel, demo_engine: FlorenceEngine
) -> None:
    """Enumerate every token path through one value (all values, all tokenizations) with
    plain teacher-forced forward passes: the masked distribution's mass over the values
    is 1, and the reported confidence is exactly the probability of the path taken."""
    grammar = demo_engine.grammar
    assert grammar is not None
    image = random_image(3, 2)
    outcome = demo_engine.run_batch([image])[0]
    assert outcome.attributes is not None
    assert outcome.confidence is not None
    # Recover the decoded tokens by running the same decoder (the outcome holds the text).
    input_ids = demo_engine._prompt_ids.unsqueeze(0)
    decoded = demo_engine._decoder.decode(
        input_ids, torch.ones_like(input_ids), torch.from_numpy(image[None])
    )[0]
    body = decoded.tokens[1:-1]
    _, spans = value_spans(outcome.attributes)
    span = spans[0]  # category: 6 values (primary_color's 16 take ~5x longer to enumerate)
    mass, taken = value_distribution(demo_loaded, grammar, input_ids, image, body, span.start)
    assert sum(mass.values()) == pytest.approx(1.0, abs=1e-4)
    assert set(mass) == set(grammar.fields[0].values)
    assert outcome.confidence.category == pytest.approx(taken, rel=1e-4)
    assert taken <= mass[outcome.attributes.category] + 1e-6


def value_distribution(
    loaded: LoadedModel,
    grammar: SchemaGrammar,
    input_ids: torch.Tensor,
    image: np.ndarray[Any, Any],
    body: list[int],
    start: int,
) -> tuple[dict[str, float], float]:
    """Probability of each value of the string field starting at byte ``start``, summed
    over every token path the grammar allows from the token that writes that byte; and
    the probability of the path ``body`` took."""
    vocab = grammar.tokenizer_info.decoded_vocab
    offsets = np.cumsum([0] + [len(vocab[t]) for t in body])
    first = int(np.searchsorted(offsets, start, side="right")) - 1  # token writing byte `start`
    prefix = [2, 0, *body[:first]]
    prefix_bytes = b"".join(vocab[t] for t in body[:first])
    matcher = xgr.GrammarMatcher(grammar.compiled)
    for token in body[:first]:
        assert matcher.accept_token(token)
    model = loaded.model
    with torch.inference_mode():
        encoded = model(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            pixel_values=torch.from_numpy(image[None]),
            decoder_input_ids=torch.tensor([prefix]),
        )
    encoder = encoded.encoder_last_hidden_state
    mass: dict[str, float] = {}
    taken = math.nan
    frontier: list[tuple[list[int], bytes, float, xgr.GrammarMatcher]] = [([], b"", 0.0, matcher)]
    bitmask = xgr.allocate_token_bitmask(1, grammar.vocab_size)
    while frontier:
        batch = torch.tensor([prefix + path for path, *_ in frontier])
        with torch.inference_mode():
            logits = (
                model(
                    encoder_outputs=BaseModelOutput(
                        last_hidden_state=encoder.expand(len(batch), -1, -1)
                    ),
                    attention_mask=torch.ones((len(batch), encoder.shape[1]), dtype=torch.long),
                    decoder_input_ids=batch,
                )
                .logits[:, -1]
                .float()
            )
        children = []
        for (path, written, logprob, state), row in zip(frontier, logits, strict=True):
            state.fill_next_token_bitmask(bitmask)
            xgr.apply_token_bitmask_inplace(row[None], bitmask)
            logprobs = torch.log_softmax(row, -1)
            for token in torch.nonzero(torch.isfinite(logprobs)).flatten().tolist():
                text = prefix_bytes + written + vocab[token]
                total = logprob + float(logprobs[token])
                closing = text.find(b'"', start + 1)
                if closing >= 0:  # this token finishes the value
                    value = text[start + 1 : closing].decode()
                    mass[value] = mass.get(value, 0.0) + math.exp(total)
                    if [*path, token] == body[first : first + len(path) + 1]:
                        taken = math.exp(total)
                    continue
                child = state.fork()
                assert child.accept_token(token)
                children.append(([*path, token], written + vocab[token], total, child))
        frontier = children
    return mass, taken
