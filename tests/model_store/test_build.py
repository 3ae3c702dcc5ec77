"""The demo model builds deterministically; the presets have Florence-2's real shapes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    BartConfig,
    Florence2ForConditionalGeneration,
    Florence2Processor,
    Florence2VisionConfig,
)

from fashion_florence_client.schema import FashionAttributes
from model_store.build import (
    FLORENCE_VOCAB_SIZE,
    PRESETS,
    build_config,
    build_model,
    build_processor,
)
from model_store.manifest import DEFAULT_PROMPT, MANIFEST_NAME, verify_directory
from model_store.tokenizer import schema_vocabulary, train_tokenizer
from service.cli import main as cli_main

EXPECTED_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model_manifest.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}

# Florence-2's published dimensions (microsoft/Florence-2-base and -large configs).
REAL_SHAPES = {
    "florence-2-base": {
        "embed_dim": [128, 256, 512, 1024],
        "num_heads": [4, 8, 16, 32],
        "depths": [1, 1, 9, 1],
        "window_size": 12,
        "d_model": 768,
        "layers": 6,
        "heads": 12,
        "ffn": 3072,
    },
    "florence-2-large": {
        "embed_dim": [256, 512, 1024, 2048],
        "num_heads": [8, 16, 32, 64],
        "depths": [1, 1, 9, 1],
        "window_size": 12,
        "d_model": 1024,
        "layers": 12,
        "heads": 16,
        "ffn": 4096,
    },
}


def tree_digests(directory: Path) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def demo_processor(demo_model_dir: Path) -> Florence2Processor:
    return Florence2Processor.from_pretrained(str(demo_model_dir))


def test_demo_build_is_byte_identical(tmp_path: Path) -> None:
    first = build_model("demo", tmp_path / "one")
    second = build_model("demo", tmp_path / "two")
    one, two = tree_digests(tmp_path / "one"), tree_digests(tmp_path / "two")
    assert set(one) == EXPECTED_FILES
    assert one == two
    assert first == second
    assert first.weights == {"model.safetensors": one["model.safetensors"]}
    # Only the two output directories are left: no staging directory survives a build.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]


def test_demo_build_depends_on_the_seed(tmp_path: Path) -> None:
    build_model("demo", tmp_path / "zero", seed=0)
    build_model("demo", tmp_path / "one", seed=1)
    zero, one = tree_digests(tmp_path / "zero"), tree_digests(tmp_path / "one")
    assert zero["model.safetensors"] != one["model.safetensors"]
    assert zero["tokenizer.json"] == one["tokenizer.json"]


def test_a_build_in_bf16_stores_bf16_weights_that_match_the_fp32_draw(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    manifest = build_model("demo", tmp_path / "bf16", device="cpu", dtype=torch.bfloat16)
    build_model("demo", tmp_path / "fp32")
    assert manifest.dtype == "bfloat16"
    verify_directory(tmp_path / "bf16", check_checksums=True)
    half = load_file(tmp_path / "bf16" / "model.safetensors")
    full = load_file(tmp_path / "fp32" / "model.safetensors")
    assert half.keys() == full.keys()
    assert all(t.dtype == torch.bfloat16 for t in half.values())
    # The same seed draws the same weights: bf16 is the fp32 build, rounded.
    assert all(torch.equal(half[k], full[k].to(torch.bfloat16)) for k in half)


def test_rebuilding_over_an_existing_directory_replaces_it(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    build_model("demo", out, seed=1)
    (out / "stale.txt").write_text("left over", encoding="utf-8")
    build_model("demo", out)
    assert set(tree_digests(out)) == EXPECTED_FILES
    verify_directory(out)


def test_demo_model_is_a_few_hundred_thousand_parameters(demo_model_dir: Path) -> None:
    model = Florence2ForConditionalGeneration.from_pretrained(str(demo_model_dir))
    count = sum(p.numel() for p in model.parameters())
    assert 100_000 < count < 1_000_000, count
    manifest = verify_directory(demo_model_dir)
    assert manifest.image_size == 128
    assert manifest.dtype == "float32"
    assert manifest.prompt == DEFAULT_PROMPT
    assert manifest.adapter is None
    assert manifest.schema_version == 1


def test_image_tokens_match_the_vision_tower(
    demo_model_dir: Path, demo_processor: Florence2Processor
) -> None:
    expected = (128 // 32) ** 2 + 1
    assert PRESETS["demo"].image_seq_length == expected == 17
    assert demo_processor.image_processor.image_seq_length == expected
    image_token_id = demo_processor.tokenizer.image_token_id
    encoded = demo_processor(
        text=[DEFAULT_PROMPT], images=[Image.new("RGB", (300, 200), "white")], return_tensors="pt"
    )
    ids = encoded["input_ids"][0].tolist()
    assert ids.count(image_token_id) == expected
    assert ids[:expected] == [image_token_id] * expected  # placeholders lead the prompt
    assert tuple(encoded["pixel_values"].shape) == (1, 3, 128, 128)
    config = json.loads((demo_model_dir / "config.json").read_text(encoding="utf-8"))
    assert config["image_token_id"] == image_token_id


def test_image_features_fill_the_image_tokens(demo_model_dir: Path) -> None:
    """The vision tower really yields image_seq_length features of width d_model."""
    model = Florence2ForConditionalGeneration.from_pretrained(str(demo_model_dir))
    model.train(False)
    with torch.inference_mode():
        output = model.get_image_features(torch.zeros(2, 3, 128, 128))
    # transformers 5 returns the projected features as pooler_output; 4.x a bare tensor.
    features = output if isinstance(output, torch.Tensor) else output.pooler_output
    assert tuple(features.shape) == (2, PRESETS["demo"].image_seq_length, PRESETS["demo"].d_model)


def test_a_smaller_input_side_shrinks_the_image_tokens(tmp_path: Path) -> None:
    """The trained demo's 64 px: a 2x2 grid of image tokens plus the pooled one, end to
    end through the processor and the tower."""
    manifest = build_model("demo", tmp_path / "small", image_size=64)
    assert manifest.image_size == 64
    processor = Florence2Processor.from_pretrained(str(tmp_path / "small"))
    assert processor.image_processor.image_seq_length == (64 // 32) ** 2 + 1 == 5
    encoded = processor(
        text=[DEFAULT_PROMPT], images=[Image.new("RGB", (300, 200), "white")], return_tensors="pt"
    )
    assert tuple(encoded["pixel_values"].shape) == (1, 3, 64, 64)
    model = Florence2ForConditionalGeneration.from_pretrained(str(tmp_path / "small"))
    with torch.inference_mode():
        features = model.get_image_features(encoded["pixel_values"]).pooler_output
    assert tuple(features.shape) == (1, 5, PRESETS["demo"].d_model)
    for side in (0, 48, 100):
        with pytest.raises(ValueError, match="multiple of 32"):
            build_model("demo", tmp_path / f"bad{side}", image_size=side)


@pytest.mark.parametrize("word", schema_vocabulary())
def test_tokenizer_round_trips_every_schema_literal(
    demo_processor: Florence2Processor, word: str
) -> None:
    tokenizer = demo_processor.tokenizer
    for text in (word, json.dumps(word)):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text


def test_tokenizer_round_trips_a_full_target(demo_processor: Florence2Processor) -> None:
    tokenizer = demo_processor.tokenizer
    target = FashionAttributes(
        category="layer",
        primary_color="multi",
        material="faux fur",
        style_tags=["edgy", "bohemian", "statement", "glamorous"],
        occasion_tags=["wedding_guest", "going-out", "night-out", "brunch"],
    ).to_target_text()
    ids = tokenizer.encode(target, add_special_tokens=True)
    assert ids[0] == tokenizer.bos_token_id == 0
    assert ids[-1] == tokenizer.eos_token_id == 2
    assert tokenizer.unk_token_id not in ids
    assert len(ids) < 64  # the trained merges keep targets short
    assert tokenizer.decode(ids, skip_special_tokens=True) == target
    assert FashionAttributes.from_model_text(tokenizer.decode(ids, skip_special_tokens=True))
    # The BART special-token layout the model config relies on.
    assert (tokenizer.pad_token_id, tokenizer.unk_token_id) == (1, 3)


def test_tokenizer_training_is_deterministic() -> None:
    first, second = train_tokenizer(DEFAULT_PROMPT), train_tokenizer(DEFAULT_PROMPT)
    assert first.get_vocab() == second.get_vocab()
    assert len(first) == len(second)


@pytest.mark.parametrize("preset_name", sorted(REAL_SHAPES))
def test_real_presets_have_florence_dimensions(preset_name: str) -> None:
    real = REAL_SHAPES[preset_name]
    preset = PRESETS[preset_name]
    assert preset.image_size == 768
    assert preset.image_seq_length == 577 == (768 // 32) ** 2 + 1
    # Config only: these models are never instantiated in tests.
    config = build_config(preset, FLORENCE_VOCAB_SIZE + 1, FLORENCE_VOCAB_SIZE)
    vision, text = config.vision_config, config.text_config
    assert isinstance(vision, Florence2VisionConfig)
    assert isinstance(text, BartConfig)
    assert list(vision.embed_dim) == real["embed_dim"]
    assert list(vision.num_heads) == real["num_heads"]
    assert list(vision.num_groups) == real["num_heads"]
    assert list(vision.depths) == real["depths"]
    assert vision.window_size == real["window_size"]
    assert vision.projection_dim == text.d_model == real["d_model"]
    assert text.encoder_layers == text.decoder_layers == real["layers"]
    assert text.encoder_attention_heads == text.decoder_attention_heads == real["heads"]
    assert text.encoder_ffn_dim == text.decoder_ffn_dim == real["ffn"]
    assert text.max_position_embeddings == 1024
    assert text.vocab_size == FLORENCE_VOCAB_SIZE + 1
    assert config.image_token_id == FLORENCE_VOCAB_SIZE
    assert (text.bos_token_id, text.pad_token_id, text.eos_token_id) == (0, 1, 2)
    assert text.decoder_start_token_id == 2
    # The processor for this preset lays out 577 image tokens at 768 px.
    processor = build_processor(train_tokenizer(DEFAULT_PROMPT), preset)
    assert processor.image_processor.image_seq_length == 577
    assert processor.image_processor.size == {"height": 768, "width": 768}


def test_real_preset_tokenizer_has_florence_vocabulary_size() -> None:
    from model_store.build import _preset_tokenizer

    tokenizer = _preset_tokenizer(PRESETS["florence-2-base"], DEFAULT_PROMPT)
    assert len(tokenizer) == FLORENCE_VOCAB_SIZE + 1


def test_cli_build_demo_and_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli-demo"
    assert cli_main(["model", "build-demo", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["out"] == str(out)
    assert set(printed["weights"]) == {"model.safetensors"}
    assert (out / MANIFEST_NAME).is_file()

    assert cli_main(["model", "verify", str(out)]) == 0
    assert capsys.readouterr().out.startswith("OK: fashion-florence-demo (schema v1")

    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF  # inside the tensor data, past the safetensors header
    weights.write_bytes(bytes(data))
    assert cli_main(["model", "verify", str(out)]) == 1
    message = capsys.readouterr().out
    assert message.startswith("FAILED: checksum mismatch")
    assert "model.safetensors" in message


def test_cli_verify_of_a_missing_directory_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["model", "verify", str(tmp_path / "nothing")]) == 1
    assert "FAILED" in capsys.readouterr().out
