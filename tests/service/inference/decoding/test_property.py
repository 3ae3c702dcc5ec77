"""Property: a constrained output parses and validates, whatever the weights and sampling.

Two halves. Random logits stand in for arbitrary weights (seeds, temperatures and biases
toward short, long or closing tokens, sampled rather than greedy) and run through the
engine's own mask code, 250 cases in a few seconds. Then the real random-weight demo
model through the engine on random images, where any invalid output would be a 502.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fashion_florence_client.schema import OCCASION_TAGS, STYLE_TAGS, FashionAttributes
from model_store.loading import LoadedModel
from service.inference.decoding.constrained import (
    GrammarLogitsProcessor,
    RowMatchers,
    apply_bitmask,
)
from service.inference.decoding.decoders import DecodingMode
from service.inference.decoding.grammar import SchemaGrammar
from service.inference.engine import FlorenceEngine

Bias = Literal["none", "short", "long", "close"]
CPU = torch.device("cpu")


def assert_valid_target(text: str) -> FashionAttributes:
    attributes = FashionAttributes.from_model_text(text)
    assert attributes.to_target_text() == text  # canonical: key order, no whitespace
    for tags, vocabulary in (
        (attributes.style_tags, STYLE_TAGS),
        (attributes.occasion_tags, OCCASION_TAGS),
    ):
        positions = [vocabulary.index(t) for t in tags]
        assert positions == sorted(set(positions))  # unique, in schema order
    return attributes


def bias_vector(grammar: SchemaGrammar, bias: Bias) -> torch.Tensor:
    vocab = grammar.tokenizer_info.decoded_vocab
    lengths = torch.tensor([len(piece) for piece in vocab], dtype=torch.float32)
    if bias == "short":  # one byte per token: the longest outputs the grammar allows
        return torch.where(lengths == 1, 6.0, 0.0)
    if bias == "long":
        return lengths.clamp(max=12) * 0.5
    if bias == "close":  # end lists and values as early as possible
        return torch.tensor([6.0 if b"]" in p or b'"' in p else 0.0 for p in vocab])
    return torch.zeros(len(vocab))


@settings(max_examples=250, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**31 - 1),
    temperature=st.floats(0.05, 4.0),
    scale=st.floats(0.1, 10.0),
    bias=st.sampled_from(["none", "short", "long", "close"]),
)
def test_sampling_any_logits_under_the_mask_gives_a_valid_target(
    demo_grammar: SchemaGrammar, seed: int, temperature: float, scale: float, bias: Bias
) -> None:
    generator = torch.Generator().manual_seed(seed)
    rows = RowMatchers(demo_grammar, 1, CPU)
    offsets = bias_vector(demo_grammar, bias)
    vocab = demo_grammar.tokenizer_info.decoded_vocab
    text = b""
    for _ in range(demo_grammar.max_output_tokens + 1):  # + the stop token
        logits = torch.randn(1, demo_grammar.vocab_size, generator=generator) * scale + offsets
        bitmask = rows.bitmask(1)
        rows.fill([0], [0], bitmask)
        apply_bitmask(logits, bitmask)
        token = int(
            torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator)
        )
        rows.accept([0], [token])
        if rows.terminated(0):
            assert token in demo_grammar.stop_token_ids
            break
        text += vocab[token]
    else:
        pytest.fail(f"no stop token within the bound of {demo_grammar.max_output_tokens}")
    assert_valid_target(text.decode())


@pytest.fixture(scope="module")
def demo_engine(demo_loaded: LoadedModel) -> FlorenceEngine:
    return FlorenceEngine(demo_loaded, max_new_tokens=256, decoding=DecodingMode.JUMP_FORWARD)


def random_image(seed: int, kind: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    rng = np.random.default_rng(seed)
    if kind == 0:  # noise
        return rng.normal(0, rng.uniform(0.1, 3.0), (3, 128, 128)).astype(np.float32)
    if kind == 1:  # a flat colour, sometimes far outside the normalized range
        return np.broadcast_to(rng.normal(0, 3, (3, 1, 1)), (3, 128, 128)).astype(np.float32)
    image = np.zeros((3, 128, 128), np.float32)  # a block on a background
    x, y = rng.integers(0, 96, 2)
    image[:, y : y + 32, x : x + 32] = rng.normal(0, 2, (3, 1, 1))
    return image


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seeds=st.lists(st.integers(0, 2**31 - 1), min_size=8, max_size=8))
def test_random_weight_model_always_answers_valid_json(
    demo_engine: FlorenceEngine, seeds: list[int]
) -> None:
    """10 batches x 8 random images: invalid_model_output cannot happen any more."""
    images = [random_image(seed, index % 3) for index, seed in enumerate(seeds)]
    for outcome in demo_engine.run_batch(images):
        assert outcome.ok, outcome.error_detail
        assert outcome.attributes is not None
        assert_valid_target(outcome.text)
        assert outcome.generated_tokens <= demo_engine.grammar.max_output_tokens + 2  # type: ignore[union-attr]


def test_sampled_generate_with_the_engine_processor_validates(
    demo_loaded: LoadedModel, demo_grammar: SchemaGrammar
) -> None:
    """Sampling (not greedy) through the logits processor the constrained mode uses."""
    model, processor = demo_loaded.model, demo_loaded.processor
    images = [random_image(seed, seed % 3) for seed in range(8)]
    prompt = processor(
        text=[demo_loaded.manifest.prompt],
        images=[np.zeros((128, 128, 3), np.uint8)],
        return_tensors="pt",
    )["input_ids"]
    input_ids = prompt.expand(len(images), -1)
    for seed, temperature in ((0, 0.7), (1, 3.0)):
        torch.manual_seed(seed)
        grammar_processor = GrammarLogitsProcessor(demo_grammar, len(images), CPU)
        with torch.inference_mode():
            sequences = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                pixel_values=torch.from_numpy(np.stack(images)),
                decoder_input_ids=torch.tensor([[2, 0]]).expand(len(images), -1),
                do_sample=True,
                temperature=temperature,
                top_k=0,
                max_new_tokens=255,
                no_repeat_ngram_size=0,
                logits_processor=[grammar_processor],
            )
        decoded: Any = processor.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        for text in decoded:
            assert_valid_target(text)
