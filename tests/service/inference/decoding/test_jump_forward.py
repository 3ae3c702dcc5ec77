"""The oracle: jump-forward decoding yields exactly constrained greedy ``generate``'s tokens.

The reference is transformers' ``generate`` with xgrammar's own logits processor (none of
our masking code), started after ``</s><s>`` like the engine. Models: the random-weight
demo model under two seeds, and the fine-tuned one; batches of 1 and 8 whose rows diverge
(different values, lengths and finishing steps). The random-weight models do not tokenize
forced text the way the tokenizer does, so drafts are rejected mid-way and the loop must
back off and hide what it rejected; the fine-tuned one follows the drafts.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from xgrammar.contrib.hf import LogitsProcessor as XgrammarProcessor

from model_store.build import build_model
from model_store.loading import LoadedModel, load_model
from service.inference.decoding.constrained import GrammarLogitsProcessor
from service.inference.decoding.florence import Florence2Stepper
from service.inference.decoding.grammar import compile_schema_grammar
from service.inference.decoding.jump_forward import DecodedRow, JumpForwardDecoder
from tests.conftest import TRAINED_CLASSES, garment_image
from tests.service.inference.decoding.test_property import random_image

MAX_NEW_TOKENS = 256
CPU = torch.device("cpu")


class Case:
    """A loaded model, its grammar, and a batch of inputs for it."""

    def __init__(self, loaded: LoadedModel, pixels: list[np.ndarray[Any, Any]]) -> None:
        model: Any = loaded.model
        self.model = model
        self.tokenizer = loaded.processor.tokenizer
        self.grammar = compile_schema_grammar(
            self.tokenizer, int(model.config.text_config.vocab_size)
        )
        prompt = loaded.processor(
            text=[loaded.manifest.prompt],
            images=[np.zeros((8, 8, 3), np.uint8)],
            return_tensors="pt",
        )["input_ids"]
        self.pixels = torch.from_numpy(np.stack(pixels))
        self.input_ids = prompt.expand(len(pixels), -1)

    def rows(self, index: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = self.input_ids[index]
        return ids, torch.ones_like(ids), self.pixels[index]

    def reference(self, index: slice) -> list[list[int]]:
        ids, mask, pixels = self.rows(index)
        with torch.inference_mode():
            sequences = self.model.generate(
                input_ids=ids, attention_mask=mask, pixel_values=pixels,
                decoder_input_ids=torch.tensor([[2, 0]]).expand(len(ids), -1),
                num_beams=1, do_sample=False, no_repeat_ngram_size=0,
                max_new_tokens=MAX_NEW_TOKENS - 1, forced_eos_token_id=None,
                logits_processor=[XgrammarProcessor(self.grammar.compiled)],
            )  # fmt: skip
        rows = [row[1:] for row in sequences.tolist()]
        return [row[: row.index(2) + 1] if 2 in row else row for row in rows]

    def jump_forward(self, index: slice) -> list[DecodedRow]:
        decoder = JumpForwardDecoder(
            Florence2Stepper(self.model), self.grammar, self.tokenizer,
            start_id=2, bos_id=0, pad_id=1, max_new_tokens=MAX_NEW_TOKENS,
        )  # fmt: skip
        return decoder.decode(*self.rows(index))

    def constrained(self, index: slice) -> tuple[list[list[int]], list[list[float]]]:
        """Tokens (after the decoder start, up to ``</s>``) and log-probabilities of
        constrained ``generate``, in one call."""
        ids, mask, pixels = self.rows(index)
        processor = GrammarLogitsProcessor(self.grammar, len(ids), CPU)
        with torch.inference_mode():
            sequences = self.model.generate(
                input_ids=ids, attention_mask=mask, pixel_values=pixels,
                decoder_input_ids=torch.tensor([[2, 0]]).expand(len(ids), -1),
                num_beams=1, do_sample=False, no_repeat_ngram_size=0,
                max_new_tokens=MAX_NEW_TOKENS - 1, forced_eos_token_id=None,
                logits_processor=[processor],
            )  # fmt: skip
        processor.finish(sequences)
        rows = [row[1:] for row in sequences.tolist()]
        return [row[: row.index(2) + 1] if 2 in row else row for row in rows], processor.logprobs

    def constrained_logprobs(self, index: slice) -> list[list[float]]:
        return self.constrained(index)[1]


def random_inputs(seed: int) -> list[np.ndarray[Any, Any]]:
    return [random_image(seed * 100 + i, i % 3) for i in range(8)]


@pytest.fixture(scope="module")
def demo_cases(
    demo_loaded: LoadedModel, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Case]:
    other = tmp_path_factory.mktemp("models") / "demo-seed-1"
    build_model("demo", other, seed=1)
    return {
        "demo-seed-0": Case(demo_loaded, random_inputs(0)),
        "demo-seed-1": Case(load_model(str(other)), random_inputs(1)),
    }


@pytest.fixture(scope="module")
def trained_case(trained_model_dir: Path) -> Case:
    trained = load_model(str(trained_model_dir))
    rng = random.Random(11)
    garments = [
        trained.processor.image_processor(images=[garment_image(color, rng)], return_tensors="np")[
            "pixel_values"
        ][0]
        for color in list(TRAINED_CLASSES) * 2
    ]
    # Six garments of the three trained classes, then two off-distribution inputs.
    return Case(trained, garments + random_inputs(2)[:2])


def case_named(request: pytest.FixtureRequest, name: str) -> Case:
    if name == "trained":
        case: Case = request.getfixturevalue("trained_case")
        return case
    cases: dict[str, Case] = request.getfixturevalue("demo_cases")
    return cases[name]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo-seed-0", "demo-seed-1", "trained"])
def test_batch_of_8_matches_constrained_generate(request: pytest.FixtureRequest, name: str) -> None:
    case = case_named(request, name)
    everything = slice(0, 8)
    expected = case.reference(everything)
    got = case.jump_forward(everything)
    assert len({tuple(r) for r in expected}) >= 2, "rows must diverge for the test to mean much"
    if name != "trained":  # the three trained classes happen to take 31 tokens each
        assert len({len(r) for r in expected}) >= 2, "rows must finish at different steps"
        # Random weights do not tokenize like the tokenizer: drafts are rejected mid-way,
        # so this also covers backing off and hiding rejected entries from later steps.
        vocab = case.grammar.tokenizer_info.decoded_vocab
        encode = case.tokenizer.backend_tokenizer.encode
        canonical = [
            encode(b"".join(vocab[t] for t in row[1:-1]).decode(), add_special_tokens=False).ids
            for row in expected
        ]
        assert any(row[1:-1] != ids for row, ids in zip(expected, canonical, strict=True))
    assert [row.tokens for row in got] == expected
    for row, reference in zip(got, case.constrained_logprobs(everything), strict=True):
        np.testing.assert_allclose(row.logprobs, reference, atol=1e-4)
        assert row.forward_passes < len(row.tokens) - 1  # forced runs were skipped


@pytest.mark.slow
@pytest.mark.parametrize("name", ["demo-seed-0", "trained"])
def test_batch_of_1_matches_constrained_generate(request: pytest.FixtureRequest, name: str) -> None:
    case = case_named(request, name)
    for index in (0, 4):
        single = slice(index, index + 1)
        assert [row.tokens for row in case.jump_forward(single)] == case.reference(single)


@pytest.mark.slow
def test_trained_model_needs_few_passes_per_token(trained_case: Case) -> None:
    rows = trained_case.jump_forward(slice(0, 6))
    ratio = sum(r.forward_passes for r in rows) / sum(len(r.tokens) for r in rows)
    assert ratio < 0.6, ratio  # measured ~0.42 with the demo tokenizer
