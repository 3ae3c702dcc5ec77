"""Facts about native Florence-2 that the constrained decoders build on, checked here."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_store.loading import load_model
from service.inference.decoding.decoders import DecodingMode, GenerateDecoder, SpecialIds
from service.inference.decoding.florence import Florence2Stepper
from service.inference.decoding.grammar import compile_schema_grammar
from service.inference.decoding.jump_forward import JumpForwardDecoder
from service.inference.engine import FlorenceEngine
from tests.conftest import TRAINED_CLASSES, garment_image


def test_decoder_starts_from_eos_and_trained_model_emits_bos_first(
    trained_model_dir: Path,
) -> None:
    loaded = load_model(str(trained_model_dir))
    model: Any = loaded.model
    tokenizer = loaded.processor.tokenizer
    ids = SpecialIds.of(model, tokenizer)
    assert (ids.start, ids.bos, ids.eos, ids.pad) == (2, 0, 2, 1)  # </s>, <s>, </s>, <pad>
    rng = random.Random(3)
    images = [garment_image(color, rng) for color in TRAINED_CLASSES]
    inputs = loaded.processor(text=[loaded.manifest.prompt] * 3, images=images, return_tensors="pt")
    with torch.inference_mode():
        sequences = model.generate(
            **inputs, max_new_tokens=40, num_beams=1, do_sample=False, no_repeat_ngram_size=0
        )
    # Unconstrained: </s> (decoder start), then <s> chosen by the model, then the JSON.
    assert sequences[:, 0].tolist() == [2, 2, 2]
    assert sequences[:, 1].tolist() == [0, 0, 0]
    assert all(text.startswith("{") for text in tokenizer.batch_decode(sequences[:, 2:]))


def test_forced_eos_in_a_checkpoint_does_not_reach_constrained_decoding(
    demo_model_dir: Path,
) -> None:
    loaded = load_model(str(demo_model_dir))
    model: Any = loaded.model
    # Real Florence-2 checkpoints ship forced_eos_token_id=2: generate() then forces </s>
    # at the length limit, whatever the grammar says.
    model.generation_config.forced_eos_token_id = 2
    image = np.random.default_rng(0).normal(size=(1, 3, 128, 128)).astype(np.float32)
    inputs = loaded.processor(
        text=[loaded.manifest.prompt], images=[np.zeros((8, 8, 3), np.uint8)], return_tensors="pt"
    )
    with torch.inference_mode():
        forced = model.generate(
            input_ids=inputs["input_ids"],
            pixel_values=torch.from_numpy(image),
            decoder_input_ids=torch.tensor([[2, 0]]),
            max_new_tokens=6, num_beams=1, do_sample=False, no_repeat_ngram_size=0,
        )  # fmt: skip
    assert forced[0, -1].item() == 2
    # Constrained generate must not inherit it: the grammar forbids </s> mid-object, so
    # the step would have no allowed token at all. Cut at 20 tokens (below what the
    # engine accepts, to reach the limit), it matches the jump-forward loop, which never
    # forces anything, token for token.
    tokenizer = loaded.processor.tokenizer
    grammar = compile_schema_grammar(tokenizer, int(model.config.text_config.vocab_size))
    ids = SpecialIds.of(model, tokenizer)
    args = (inputs["input_ids"], torch.ones_like(inputs["input_ids"]), torch.from_numpy(image))
    short = GenerateDecoder(model, ids, 20, grammar).decode(*args)[0]
    stepper = Florence2Stepper(model)
    loop = JumpForwardDecoder(
        stepper, grammar, tokenizer, start_id=2, bos_id=0, pad_id=1, max_new_tokens=20
    ).decode(*args)[0]
    assert short.tokens == loop.tokens
    assert len(short.tokens) == 20
    assert 2 not in short.tokens
    outcomes = {
        mode: FlorenceEngine(loaded, max_new_tokens=256, decoding=mode).run_batch([image[0]])[0]
        for mode in (DecodingMode.CONSTRAINED, DecodingMode.JUMP_FORWARD)
    }
    assert outcomes[DecodingMode.CONSTRAINED].ok
    assert outcomes[DecodingMode.CONSTRAINED].text == outcomes[DecodingMode.JUMP_FORWARD].text
