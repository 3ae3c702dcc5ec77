"""Output profiles with Florence-2's real-size vocabulary (51,290 tokens, padded to 51,328).

For each built-in profile, the text its training code writes (restated here from the
paper's code: ``json.dumps(labels, separators=(",", ":"))`` with sorted tag lists, four or
five fields) is accepted by the profile's grammar and, tokenized, is what masked greedy
decoding produces when the model prefers it; Florence-2's added tokens are never allowed.
Then a tiny model with the real vocabulary through jump-forward (against constrained
``generate``), the engine's parsing and confidence.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import Florence2ForConditionalGeneration
from xgrammar.contrib.hf import LogitsProcessor as XgrammarProcessor

from fashion_florence_client.schema import (
    CATEGORIES,
    COLORS,
    MATERIALS,
    OCCASION_TAGS,
    STYLE_TAGS,
    FashionAttributes,
)
from model_store.build import PRESETS, build_config, build_processor
from model_store.loading import LoadedModel
from model_store.manifest import ModelManifest
from model_store.profiles import (
    BUILTIN_PROFILES,
    PAPER_FOUR_FIELD_PROFILE,
    PAPER_PROFILE,
    PROJECT_PROFILE,
    OutputProfile,
    parse_output,
    target_text,
)
from model_store.vocabulary import BART_VOCAB_SIZE, native_embedding_rows
from service.inference.decoding.confidence import attribute_confidence
from service.inference.decoding.constrained import RowMatchers, masked_scores
from service.inference.decoding.decoders import DecodingMode
from service.inference.decoding.florence import Florence2Stepper
from service.inference.decoding.grammar import SchemaGrammar, compile_schema_grammar
from service.inference.decoding.jump_forward import JumpForwardDecoder
from service.inference.engine import FlorenceEngine

CPU = torch.device("cpu")
EOS = 2
MAX_NEW_TOKENS = 256


def tag_list(vocabulary: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(vocabulary), unique=True, max_size=4).map(
        lambda tags: sorted(tags, key=vocabulary.index)
    )


ATTRIBUTES = st.builds(
    FashionAttributes,
    category=st.sampled_from(CATEGORIES),
    primary_color=st.sampled_from(COLORS),
    material=st.sampled_from((*MATERIALS, None)),
    style_tags=tag_list(STYLE_TAGS),
    occasion_tags=tag_list(OCCASION_TAGS),
)


def training_text(attributes: FashionAttributes, profile: OutputProfile) -> str:
    """What each model's training code writes, restated independently of the profiles."""
    if profile is PROJECT_PROFILE:
        return attributes.to_target_text()
    labels: dict[str, Any] = {
        "category": attributes.category,
        "primary_color": attributes.primary_color,
        "material": attributes.material,
        "style_tags": sorted(attributes.style_tags),
    }
    if profile is PAPER_PROFILE:
        labels["occasion_tags"] = sorted(attributes.occasion_tags)
    return json.dumps(labels, separators=(",", ":"))


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    """Vocabulary-wide masks on a busy 2-core machine: one intra-op thread measured over
    10x faster than torch's default (conftest restores the count after each test)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vocab_rows(florence_vocab: Any) -> int:
    return native_embedding_rows(len(florence_vocab))


@pytest.fixture(scope="module")
def grammars(florence_vocab: Any, vocab_rows: int) -> dict[str, SchemaGrammar]:
    return {
        name: compile_schema_grammar(florence_vocab, vocab_rows, profile=profile)
        for name, profile in BUILTIN_PROFILES.items()
    }


@pytest.fixture(scope="module")
def token_bytes(grammars: dict[str, SchemaGrammar]) -> list[bytes]:
    # ``decoded_vocab`` rebuilds the whole list on every access (over a second here).
    return list(grammars["fashion-florence"].tokenizer_info.decoded_vocab)


def allows_added_tokens(bitmask: torch.Tensor) -> bool:
    """Any id from BART_VOCAB_SIZE on (Florence-2's added tokens, <image>, padding) allowed?"""
    first_word, first_bit = divmod(BART_VOCAB_SIZE, 32)
    head = int(bitmask[0, first_word]) >> first_bit
    return bool(head) or bool(bitmask[0, first_word + 1 :].any())


def forced_decode(grammar: SchemaGrammar, wanted: list[int]) -> tuple[list[int], list[float]]:
    """Masked greedy decoding of a model that prefers ``wanted`` (plus noise elsewhere)."""
    rows = RowMatchers(grammar, 1, CPU)
    generator = torch.Generator().manual_seed(len(wanted))
    chosen: list[int] = []
    logprobs: list[float] = []
    for target in wanted:
        bitmask = rows.bitmask(1)
        rows.fill([0], [0], bitmask)
        # Florence-2's added tokens, <image> and the padding rows: never emitted.
        assert not allows_added_tokens(bitmask)
        logits = torch.randn(1, grammar.vocab_size, generator=generator)
        logits[0, target] += 30.0
        choice, logprob = masked_scores(logits, bitmask)
        chosen.append(int(choice[0]))
        logprobs.append(float(logprob[0]))
        rows.accept([0], [chosen[-1]])
    assert rows.terminated(0)
    return chosen, logprobs


@pytest.mark.parametrize("name", sorted(BUILTIN_PROFILES))
@settings(max_examples=20, deadline=None, derandomize=True)
@given(attributes=ATTRIBUTES)
def test_training_text_is_what_constrained_decoding_writes(
    name: str,
    attributes: FashionAttributes,
    grammars: dict[str, SchemaGrammar],
    florence_vocab: Any,
    token_bytes: list[bytes],
) -> None:
    profile = BUILTIN_PROFILES[name]
    text = training_text(attributes, profile)
    assert target_text(attributes, profile) == text
    tokens = florence_vocab(text, add_special_tokens=False)["input_ids"]
    grammar = grammars[name]
    chosen, logprobs = forced_decode(grammar, [*tokens, EOS])
    assert chosen == [*tokens, EOS]
    parsed = parse_output(florence_vocab.decode(chosen, skip_special_tokens=True), profile)
    if profile.derived:
        assert parsed.model_copy(update={"occasion_tags": attributes.occasion_tags}) == attributes
    else:
        assert parsed == attributes  # schema v1: tags back in schema order
    pieces = [token_bytes[t] for t in tokens]
    confidence = attribute_confidence(parsed, pieces, logprobs[:-1], profile)
    assert confidence is not None
    assert len(confidence.style_tags) == len(parsed.style_tags)
    assert (confidence.occasion_tags is None) == bool(profile.derived)


def test_a_sorted_profile_is_never_forced_into_schema_order(
    grammars: dict[str, SchemaGrammar], florence_vocab: Any
) -> None:
    # Listed in schema order; alphabetically, classic < minimalist and dinner < work.
    attributes = FashionAttributes(
        category="top", primary_color="navy", material=None,
        style_tags=["minimalist", "classic"], occasion_tags=["work", "dinner"],
    )  # fmt: skip
    sorted_text = training_text(attributes, PAPER_PROFILE)
    schema_text = attributes.to_target_text()
    assert '"style_tags":["classic","minimalist"]' in sorted_text

    def accepts(grammar: SchemaGrammar, text: str) -> bool:
        matcher = RowMatchers(grammar, 1, CPU)
        for token in [*florence_vocab(text, add_special_tokens=False)["input_ids"], EOS]:
            if not matcher.matchers[0].accept_token(token):
                return False
        return matcher.terminated(0)

    assert accepts(grammars["paper"], sorted_text)
    assert not accepts(grammars["paper"], schema_text)
    assert accepts(grammars["fashion-florence"], schema_text)
    assert not accepts(grammars["fashion-florence"], sorted_text)
    assert parse_output(sorted_text, PAPER_PROFILE) == attributes


@pytest.fixture(scope="module")
def real_vocab_model(florence_vocab: Any, vocab_rows: int) -> tuple[Any, Any]:
    torch.manual_seed(3)
    config = build_config(PRESETS["demo"], vocab_rows, florence_vocab.image_token_id)
    model = Florence2ForConditionalGeneration(config)
    model.train(False)
    return model, build_processor(florence_vocab, PRESETS["demo"])


def _manifest(profile: OutputProfile) -> ModelManifest:
    return ModelManifest(
        name="tiny-real-vocab", base_model="random", schema_version=1,
        prompt=profile.prompt or "Extract the garment attributes as JSON.",
        image_size=128, dtype="float32", weights={}, created_at="now", profile=profile,
    )  # fmt: skip


def test_real_vocabulary_model_jump_forward_matches_generate(
    real_vocab_model: tuple[Any, Any], grammars: dict[str, SchemaGrammar]
) -> None:
    """The four-field sorted profile: the one furthest from this project's text."""
    profile = PAPER_FOUR_FIELD_PROFILE
    model, processor = real_vocab_model
    grammar = grammars[profile.name]
    engine = FlorenceEngine(
        LoadedModel(model, processor, _manifest(profile), "test"),
        max_new_tokens=MAX_NEW_TOKENS,
        decoding=DecodingMode.JUMP_FORWARD,
    )
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (128, 128, 3), dtype=np.uint8) for _ in range(2)]
    from PIL import Image

    prepared = [engine.preprocess(Image.fromarray(i)) for i in images]
    pixels = engine.pixel_values(prepared)
    prompt = processor(text=[_manifest(profile).prompt], images=[Image.fromarray(images[0])],
                       return_tensors="pt")["input_ids"].expand(2, -1)  # fmt: skip
    with torch.inference_mode():
        reference = model.generate(
            input_ids=prompt, attention_mask=torch.ones_like(prompt), pixel_values=pixels,
            decoder_input_ids=torch.tensor([[2, 0]]).expand(2, -1), num_beams=1,
            do_sample=False, no_repeat_ngram_size=0, max_new_tokens=MAX_NEW_TOKENS - 1,
            forced_eos_token_id=None, logits_processor=[XgrammarProcessor(grammar.compiled)],
        )  # fmt: skip
        decoder = JumpForwardDecoder(
            Florence2Stepper(model), grammar, processor.tokenizer,
            start_id=2, bos_id=0, pad_id=1, max_new_tokens=MAX_NEW_TOKENS,
        )  # fmt: skip
        rows = decoder.decode(prompt, torch.ones_like(prompt), pixels)
    expected = [r[1:][: r[1:].index(EOS) + 1] for r in reference.tolist()]
    assert [r.tokens for r in rows] == expected
    assert engine.info.manifest["profile"]["name"] == "paper-v1"  # what /v1/model shows
    for outcome in engine.run_batch(prepared):
        assert outcome.ok, outcome.error_detail
        assert outcome.confidence is not None
        assert (outcome.confidence.occasion_tags is None) == bool(profile.derived)
