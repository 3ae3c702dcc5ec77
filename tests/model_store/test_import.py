"""`fashion-florence model import`: original-layout checkpoints to native, strictly.

The source is a tiny Florence-2 with the real-size vocabulary whose key names are exactly
those the original module tree creates (``original_layout.py``), holding the tensors of a
native model built here; importing it must give that native model's logits back.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from PIL import Image
from transformers import Florence2ForConditionalGeneration

from model_store.build import PRESETS, build_config
from model_store.importing.adapter import convert_adapter
from model_store.importing.convert import convert_directory, import_checkpoint
from model_store.importing.errors import CheckpointImportError
from model_store.loading import ModelLoadError, load_model
from model_store.manifest import verify_directory
from model_store.profiles import PAPER_PROFILE
from model_store.vocabulary import FLORENCE_ORIGINAL_VOCAB_SIZE, native_embedding_rows
from tests.model_store.original_layout import (
    OriginalFlorence2,
    fill_from_native,
    original_config,
    write_original,
)

PRESET = PRESETS["demo"]
NATIVE_ROWS = native_embedding_rows(FLORENCE_ORIGINAL_VOCAB_SIZE + 1)
#: What the original code's linear layers are called (peft's all-linear on that tree, which
#: needs a transformers model to resolve by itself), plus ``proj``'s Conv2d namesakes.
ORIGINAL_LINEARS = ["qkv", "proj", "fc1", "fc2", "q_proj", "k_proj", "v_proj", "out_proj"]


@pytest.fixture(scope="module")
def native() -> Florence2ForConditionalGeneration:
    torch.manual_seed(0)
    model = Florence2ForConditionalGeneration(
        build_config(PRESET, NATIVE_ROWS, FLORENCE_ORIGINAL_VOCAB_SIZE)
    )
    model.train(False)
    return model


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return original_config(PRESET, FLORENCE_ORIGINAL_VOCAB_SIZE)


@pytest.fixture(scope="module")
def tree(native: Any, config: dict[str, Any]) -> OriginalFlorence2:
    tree = OriginalFlorence2(config)
    fill_from_native(tree, native)
    return tree


@pytest.fixture(scope="module")
def source(
    tree: OriginalFlorence2, config: dict[str, Any], bart_vocab: Any, tmp_path_factory: Any
) -> Path:
    directory: Path = tmp_path_factory.mktemp("original") / "florence2-tiny"
    write_original(directory, tree, config, bart_vocab, fmt="safetensors")
    return directory


def inputs(processor: Any) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, PRESET.image_size, PRESET.image_size)
    blank = Image.new("RGB", (PRESET.image_size, PRESET.image_size))
    ids = processor(text=["a prompt", "a prompt"], images=[blank] * 2, return_tensors="pt")
    return {
        "input_ids": ids["input_ids"],
        "attention_mask": ids["attention_mask"],
        "pixel_values": pixels,
        "decoder_input_ids": torch.tensor([[2, 0, 90, 1000], [2, 0, 50300, 7]]),
    }


def logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.inference_mode():
        out: torch.Tensor = model(**batch).logits[..., :FLORENCE_ORIGINAL_VOCAB_SIZE]
    return out


def test_tree_names_are_the_original_codes(tree: OriginalFlorence2) -> None:
    names = set(tree.state_dict())
    for name in (
        "vision_tower.convs.0.proj.weight",
        "vision_tower.blocks.2.0.spatial_block.conv1.fn.dw.weight",
        "vision_tower.blocks.0.0.spatial_block.window_attn.norm.weight",
        "vision_tower.blocks.0.0.channel_block.channel_attn.fn.qkv.bias",
        "vision_tower.blocks.3.0.channel_block.ffn.fn.net.fc2.weight",
        "image_projection",
        "image_pos_embed.row_embeddings.weight",
        "visual_temporal_embed.pos_idx_to_embed",
        "language_model.final_logits_bias",
        "language_model.model.encoder.layers.0.self_attn.k_proj.weight",
    ):
        assert name in names
    assert not any(".head." in n or ".norms." in n for n in names)  # deleted in the original


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_import_round_trip_gives_the_native_logits(
    fmt: str, tree: Any, config: dict[str, Any], bart_vocab: Any, native: Any, tmp_path: Path
) -> None:
    source = tmp_path / "src"
    write_original(source, tree, config, bart_vocab, fmt=fmt)
    manifest = import_checkpoint(source, tmp_path / "out", profile=PAPER_PROFILE)
    assert verify_directory(tmp_path / "out") == manifest
    assert manifest.profile == PAPER_PROFILE
    assert manifest.prompt == PAPER_PROFILE.prompt
    assert manifest.imported is not None
    assert set(manifest.imported.dropped) >= {"language_model.final_logits_bias"}
    loaded = load_model(str(tmp_path / "out"))
    tokenizer = loaded.processor.tokenizer
    assert len(tokenizer) == FLORENCE_ORIGINAL_VOCAB_SIZE + 1
    assert tokenizer.convert_tokens_to_ids(["<od>", "<loc_999>", "<and>", "<image>"]) == [
        50265, 51268, 51288, 51289,
    ]  # fmt: skip
    model: Any = loaded.model
    assert model.config.text_config.vocab_size == NATIVE_ROWS
    batch = inputs(loaded.processor)
    difference = (logits(loaded.model, batch) - logits(native, batch)).abs().max().item()
    assert difference <= 1e-5


def _tamper(source: Path, tmp_path: Path, edit: Any) -> Path:
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "tampered"
    copy.mkdir()
    for path in source.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    state = load_file(copy / "model.safetensors")
    edit(state)
    save_file(state, copy / "model.safetensors")
    return copy


def _set_bias(state: dict[str, torch.Tensor]) -> None:
    state["language_model.final_logits_bias"][0, 5] = 0.5


def _wrong_shape(state: dict[str, torch.Tensor]) -> None:
    state["image_proj_norm.weight"] = torch.ones(PRESET.projection_dim + 1)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: s.pop("vision_tower.blocks.1.0.spatial_block.ffn.fn.net.fc1.weight"),
            "missing keys",
        ),
        (
            lambda s: s.update({"vision_tower.head.weight": torch.zeros(2, 48)}),
            "vision_tower.head.weight",
        ),
        (_set_bias, "final_logits_bias is non-zero"),
        (_wrong_shape, "shape mismatch: model.multi_modal_projector.image_proj_norm.weight"),
    ],
    ids=["missing", "unexpected", "bias", "shape"],
)
def test_refusals_write_nothing(source: Path, tmp_path: Path, edit: Any, message: str) -> None:
    tampered = _tamper(source, tmp_path, edit)
    (tmp_path / "models").mkdir()
    out = tmp_path / "models" / "out"
    with pytest.raises(CheckpointImportError, match=message):
        import_checkpoint(tampered, out)
    assert not out.exists()
    assert list((tmp_path / "models").iterdir()) == []  # no staging directory left behind


class _Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


def test_a_pickle_with_code_is_refused_unrun(source: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    evil.mkdir()
    for path in source.iterdir():
        if path.name != "model.safetensors":
            (evil / path.name).write_bytes(path.read_bytes())
    marker = tmp_path / "code-ran"
    for save in ("torch", "legacy"):  # torch's zip format, and a plain pickle stream
        if save == "torch":
            torch.save({"image_projection": _Payload(marker)}, evil / "pytorch_model.bin")
        else:
            with (evil / "pytorch_model.bin").open("wb") as handle:
                pickle.dump({"image_projection": _Payload(marker)}, handle)
        with pytest.raises(CheckpointImportError, match="Weights only load failed"):
            import_checkpoint(evil, tmp_path / "out")
        assert not marker.exists()
        assert not (tmp_path / "out").exists()


def test_serving_an_original_directory_names_the_import_command(source: Path) -> None:
    with pytest.raises(ModelLoadError, match="fashion-florence model import") as raised:
        load_model(str(source))
    # The same loader serves and trains: the hint says where OUT goes in both.
    assert "FF_MODEL_PATH=OUT" in str(raised.value)
    assert "--base OUT" in str(raised.value)


def test_a_hub_id_as_source_or_adapter_says_to_download_it_first(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main as cli_main

    out = tmp_path / "out"
    assert cli_main(["model", "import", "microsoft/Florence-2-base", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "not a local folder" in printed
    assert "hf download microsoft/Florence-2-base --local-dir DIR" in printed
    assert cli_main(["model", "import", str(source), str(out), "--adapter", "org/adapter"]) == 1
    assert "hf download org/adapter --local-dir DIR" in capsys.readouterr().out
    assert not out.exists()


def _train_adapter(tree: OriginalFlorence2, out: Path) -> None:
    """A LoRA adapter on the original tree, vision tower included, with non-zero updates."""
    peft_model = get_peft_model(
        tree, LoraConfig(r=4, lora_alpha=8, target_modules=ORIGINAL_LINEARS)
    )
    torch.manual_seed(2)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.05)
    peft_model.save_pretrained(str(out))
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA"


def test_adapter_converted_equals_adapter_applied_before(
    config: dict[str, Any], native: Any, bart_vocab: Any, tmp_path: Path
) -> None:
    tree = OriginalFlorence2(config)
    fill_from_native(tree, native)
    _train_adapter(tree, tmp_path / "adapter")
    converted, _ = convert_adapter(tmp_path / "adapter")
    targets = set(converted.target_modules or ())
    assert "model.vision_tower.convs.0.conv" in targets  # Conv2d `proj`, renamed
    assert "model.vision_tower.blocks.0.0.spatial_block.window_attn.qkv" in targets
    assert "model.language_model.decoder.layers.1.encoder_attn.q_proj" in targets
    # Applied before conversion: merged on the original tree, then imported as weights.
    merged_tree = OriginalFlorence2(config)
    fill_from_native(merged_tree, native)
    from peft import PeftModel

    merged = PeftModel.from_pretrained(merged_tree, str(tmp_path / "adapter")).merge_and_unload()
    write_original(tmp_path / "merged-src", merged, config, bart_vocab, fmt="safetensors")
    before, _, _ = convert_directory(tmp_path / "merged-src")
    # Converted: the base imported with the adapter (in memory: the writing is tested above).
    base = OriginalFlorence2(config)
    fill_from_native(base, native)
    write_original(tmp_path / "base-src", base, config, bart_vocab, fmt="bin")
    after, processor, _ = convert_directory(tmp_path / "base-src", tmp_path / "adapter")
    batch = inputs(processor)
    expected = logits(before, batch)  # both float32: the source is
    assert (logits(after, batch) - expected).abs().max().item() <= 1e-5
    assert (logits(native, batch) - expected).abs().max().item() > 1e-3  # the adapter acts
