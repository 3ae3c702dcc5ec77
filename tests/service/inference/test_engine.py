"""FlorenceEngine on real tiny Florence-2 models: preprocessing, batching, decoding modes.

Plain decoding fails honestly per item on the random-weight model; constrained decoding
(the default) cannot fail that way. The decoding internals are tested in
``tests/service/inference/decoding``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from fashion_florence_client.schema import FashionAttributes
from model_store.loading import load_model
from model_store.manifest import MANIFEST_NAME, sha256_file
from service.backend import ItemFailure, ItemOutcome
from service.inference.decoding.decoders import DecodingConfigError, DecodingMode
from service.inference.decoding.grammar import compile_schema_grammar
from service.inference.engine import (
    FlorenceEngine,
    decoding_mode,
    load_engine,
)
from service.settings import Settings
from tests.conftest import TRAINED_CLASSES, TRAINED_MODEL_NAME, garment_image, photo_paths

PLAIN_MAX_NEW_TOKENS = 48  # a full target is ~30 tokens; keeps the random model's runs short


def photos(count: int) -> list[Image.Image]:
    # One photo from each of several garment folders, not four near-identical ones.
    by_folder: dict[str, Path] = {}
    for path in photo_paths():
        by_folder.setdefault(path.parent.name, path)
    chosen = list(by_folder.values())[:count]
    assert len(chosen) == count
    return [Image.open(path).convert("RGB") for path in chosen]


@pytest.fixture(scope="module")
def demo_engine(demo_model_dir: Path) -> FlorenceEngine:
    """Plain (unconstrained) decoding: the diagnosis mode."""
    return FlorenceEngine(
        load_model(str(demo_model_dir)),
        max_new_tokens=PLAIN_MAX_NEW_TOKENS,
        decoding=DecodingMode.PLAIN,
    )


@pytest.fixture(scope="module")
def constrained_demo_engine(demo_model_dir: Path) -> FlorenceEngine:
    return load_engine(Settings(model_path=str(demo_model_dir), device="cpu"))


@pytest.fixture(scope="module")
def trained_engine(trained_model_dir: Path) -> FlorenceEngine:
    return load_engine(Settings(model_path=str(trained_model_dir), device="cpu"))


def target_ids(engine: FlorenceEngine, text: str) -> list[int]:
    """What generate() yields after the decoder start token: ``<s>`` text ``</s>``, padded."""
    tokenizer = engine._processor.tokenizer
    ids: list[int] = tokenizer.encode(f"<s>{text}</s>", add_special_tokens=False)
    return ids + [tokenizer.pad_token_id] * 3


# --- demo (random-weight) model -------------------------------------------------------------


def test_preprocess_matches_the_processor(demo_engine: FlorenceEngine) -> None:
    processor = demo_engine._processor
    assert demo_engine._transform is not None  # the fast path is the one under test
    for image in photos(2):
        prepared = demo_engine.preprocess(image)
        assert prepared.dtype == np.float32
        assert prepared.shape == (3, 128, 128)
        assert prepared.flags.c_contiguous
        reference = processor(text=["x"], images=[image], return_tensors="pt")["pixel_values"][0]
        np.testing.assert_allclose(prepared, reference.numpy(), atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def uint8_engine(trained_model_dir: Path) -> FlorenceEngine:
    """The CUDA layout (uint8 pixels, normalized per batch by the engine), forced on CPU."""
    return FlorenceEngine(
        load_model(str(trained_model_dir)), max_new_tokens=256, normalize_on_device=True
    )


def test_device_normalization_matches_the_processor(uint8_engine: FlorenceEngine) -> None:
    processor = uint8_engine._processor
    images = photos(3)
    prepared = [uint8_engine.preprocess(image) for image in images]
    assert all(p.dtype == torch.uint8 and p.shape == (128, 128, 3) for p in prepared)
    pixels = uint8_engine.pixel_values(prepared)
    assert pixels.shape == (3, 3, 128, 128)
    assert pixels.dtype == torch.float32
    reference = processor(text=["x"] * 3, images=images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels, reference, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_both_pixel_layouts_give_the_same_answers(
    uint8_engine: FlorenceEngine, trained_engine: FlorenceEngine
) -> None:
    rng = random.Random(11)
    images = [garment_image(color, rng) for color in TRAINED_CLASSES]
    on_host = trained_engine.run_batch([trained_engine.preprocess(i) for i in images])
    on_device = uint8_engine.run_batch([uint8_engine.preprocess(i) for i in images])
    assert [o.text for o in on_device] == [o.text for o in on_host]


def test_preprocess_normalizes_with_imagenet_stats(demo_engine: FlorenceEngine) -> None:
    prepared = demo_engine.preprocess(Image.new("RGB", (50, 300), (255, 0, 128)))
    assert prepared.shape == (3, 128, 128)  # plain resize, no crop, any aspect ratio
    expected = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(prepared.mean(axis=(1, 2)), expected, atol=1e-3)
    grey = demo_engine.preprocess(Image.new("L", (64, 64), 128))  # converted to RGB
    assert grey.shape == (3, 128, 128)


def test_random_model_fails_honestly_per_item(demo_engine: FlorenceEngine) -> None:
    batch = [demo_engine.preprocess(image) for image in photos(4)]
    outcomes = demo_engine.run_batch(batch)
    assert len(outcomes) == 4
    for outcome in outcomes:
        assert isinstance(outcome, ItemOutcome)
        assert isinstance(outcome.text, str)
        assert 1 <= outcome.generated_tokens <= PLAIN_MAX_NEW_TOKENS
        assert not outcome.ok
        assert outcome.attributes is None
        assert outcome.failure is ItemFailure.INVALID_OUTPUT
        assert outcome.error_detail is not None
        assert "schema error" in outcome.error_detail
        assert outcome.confidence is None


def test_constrained_random_model_always_validates(
    constrained_demo_engine: FlorenceEngine,
) -> None:
    """The same random weights under the default (constrained) decoding: valid every time."""
    assert constrained_demo_engine.decoding_mode is DecodingMode.JUMP_FORWARD
    batch = [constrained_demo_engine.preprocess(image) for image in photos(4)]
    for outcome in constrained_demo_engine.run_batch(batch):
        assert outcome.ok, outcome.error_detail
        assert outcome.attributes is not None
        assert outcome.text == outcome.attributes.to_target_text()
        assert outcome.confidence is not None
        assert outcome.failure is None


@pytest.mark.parametrize("engine_name", ["demo_engine", "constrained_demo_engine"])
def test_run_batch_is_deterministic_and_batch_independent(
    engine_name: str, request: pytest.FixtureRequest
) -> None:
    engine: FlorenceEngine = request.getfixturevalue(engine_name)
    batch = [engine.preprocess(image) for image in photos(3)]
    together = engine.run_batch(batch)
    alone = [engine.run_batch([item])[0] for item in batch]
    assert [o.text for o in together] == [o.text for o in alone]
    assert [o.generated_tokens for o in together] == [o.generated_tokens for o in alone]
    for joint, single in zip(together, alone, strict=True):
        if engine.decoding_mode is DecodingMode.PLAIN:
            assert joint.confidence is single.confidence is None
            continue
        assert joint.confidence is not None
        assert single.confidence is not None
        for name, value in joint.confidence.model_dump().items():
            np.testing.assert_allclose(value, getattr(single.confidence, name), atol=1e-5)


def test_grammar_is_compiled_once_per_model_load(
    demo_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return compile_schema_grammar(*args, **kwargs)

    monkeypatch.setattr("service.inference.decoding.decoders.compile_schema_grammar", counting)
    engine = load_engine(Settings(model_path=str(demo_model_dir), device="cpu"))
    assert len(calls) == 1
    grammar = engine.grammar
    engine.warmup()
    for image in photos(2):
        engine.run_batch([engine.preprocess(image)] * 2)
    assert len(calls) == 1  # requests reuse it
    assert engine.grammar is grammar
    load_engine(Settings(model_path=str(demo_model_dir), device="cpu", jump_forward=False))
    assert len(calls) == 2  # a new load compiles its own


def test_too_small_max_new_tokens_fails_at_load(demo_model_dir: Path) -> None:
    settings = Settings(model_path=str(demo_model_dir), device="cpu", max_new_tokens=96)
    with pytest.raises(DecodingConfigError, match=r"FF_MAX_NEW_TOKENS>=216"):
        load_engine(settings)
    plain = settings.model_copy(update={"constrained_decoding": False})
    assert load_engine(plain).decoding_mode is DecodingMode.PLAIN


def test_decoding_mode_follows_settings() -> None:
    assert decoding_mode(Settings()) is DecodingMode.JUMP_FORWARD
    assert decoding_mode(Settings(jump_forward=False)) is DecodingMode.CONSTRAINED
    assert decoding_mode(Settings(constrained_decoding=False)) is DecodingMode.PLAIN
    assert decoding_mode(Settings(constrained_decoding=False, jump_forward=False)) is (
        DecodingMode.PLAIN
    )


def test_empty_batch(demo_engine: FlorenceEngine) -> None:
    assert demo_engine.run_batch([]) == []


def test_warmup_runs(demo_engine: FlorenceEngine) -> None:
    demo_engine.warmup()
    demo_engine.close()  # a no-op on CPU; the engine stays usable
    assert len(demo_engine.run_batch([demo_engine.preprocess(photos(1)[0])])) == 1


def test_info(demo_engine: FlorenceEngine, demo_model_dir: Path) -> None:
    info = demo_engine.info
    assert info.device == "cpu"
    assert info.dtype == "float32"
    assert info.image_size == 128
    assert info.name == "fashion-florence-demo"
    assert info.revision == sha256_file(demo_model_dir / "model.safetensors")[:12]
    manifest = json.loads((demo_model_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert dict(info.manifest) == manifest


def test_outcome_isolates_each_item(demo_engine: FlorenceEngine) -> None:
    """One bad sequence in a batch does not affect the others: each is judged on its own."""
    good_attributes = [FashionAttributes.model_validate(t) for t in TRAINED_CLASSES.values()]
    good = [target_ids(demo_engine, a.to_target_text()) for a in good_attributes]
    tokenizer = demo_engine._processor.tokenizer
    garbage = tokenizer.encode('<s>{"category":"hat",,</s>', add_special_tokens=False)
    truncated = good[0][:10]  # max_new_tokens ran out: no </s>
    sequences = [good[0], garbage, good[1], truncated, good[2]]
    outcomes = [demo_engine._outcome(row) for row in sequences]

    assert [o.ok for o in outcomes] == [True, False, True, False, True]
    for outcome, expected in zip(
        (outcomes[0], outcomes[2], outcomes[4]), good_attributes, strict=True
    ):
        assert outcome.attributes == expected
        assert outcome.failure is None
        assert outcome.text == expected.to_target_text()
        # <s> + the JSON + </s>; the padding after </s> is not counted.
        assert outcome.generated_tokens == len(
            tokenizer.encode(expected.to_target_text(), add_special_tokens=True)
        )
    for outcome in (outcomes[1], outcomes[3]):
        assert outcome.attributes is None
        assert outcome.failure is ItemFailure.INVALID_OUTPUT
    assert outcomes[1].text == '{"category":"hat",,'
    assert outcomes[3].generated_tokens == 10


def test_outcome_stops_at_the_first_end_of_sequence(demo_engine: FlorenceEngine) -> None:
    text = FashionAttributes.model_validate(TRAINED_CLASSES[(20, 20, 20)]).to_target_text()
    ids = target_ids(demo_engine, text)
    tokenizer = demo_engine._processor.tokenizer
    trailing = ids + tokenizer.encode("garbage after eos", add_special_tokens=False)
    outcome = demo_engine._outcome(trailing)
    assert outcome.ok
    assert outcome.text == text


# --- trained model --------------------------------------------------------------------------


@pytest.mark.slow
def test_trained_model_extracts_the_expected_attributes(trained_engine: FlorenceEngine) -> None:
    rng = random.Random(20240917)  # different placements from the training images
    cases = [(color, target) for color, target in TRAINED_CLASSES.items() for _ in range(2)]
    batch = [trained_engine.preprocess(garment_image(color, rng)) for color, _ in cases]
    outcomes = trained_engine.run_batch(batch)
    assert len(outcomes) == len(cases)
    correct = 0
    for outcome, (_, target) in zip(outcomes, cases, strict=True):
        assert outcome.ok, outcome.error_detail  # constrained: never invalid
        assert outcome.generated_tokens > 20
        assert outcome.failure is None
        assert outcome.text == outcome.attributes.to_target_text()  # type: ignore[union-attr]
        assert outcome.confidence is not None
        if outcome.attributes == FashionAttributes.model_validate(target):
            correct += 1
    assert correct >= len(cases) - 1, [o.text for o in outcomes]


@pytest.mark.slow
def test_load_engine_for_a_trained_model(
    trained_engine: FlorenceEngine, trained_model_dir: Path
) -> None:
    info = trained_engine.info
    assert info.name == TRAINED_MODEL_NAME
    assert (info.device, info.dtype, info.image_size) == ("cpu", "float32", 128)
    assert info.revision == sha256_file(trained_model_dir / "model.safetensors")[:12]


def test_device_oom_is_raised_for_the_service_to_split(
    demo_engine: FlorenceEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.backend import DeviceOutOfMemoryError

    def out_of_memory(images: object) -> list[ItemOutcome]:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(demo_engine, "_generate", out_of_memory)
    batch = [demo_engine.preprocess(image) for image in photos(2)]
    with pytest.raises(DeviceOutOfMemoryError, match="batch of 2"):
        demo_engine.run_batch(batch)
