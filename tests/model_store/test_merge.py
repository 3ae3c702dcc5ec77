"""LoRA on the decoder, merged three ways, gives the unmerged adapter's logits."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from PIL import Image
from transformers import Florence2ForConditionalGeneration

from fashion_florence_client.schema import FashionAttributes
from model_store.loading import ModelLoadError, load_model
from model_store.lora import (
    ADAPTER_WEIGHTS,
    AdapterError,
    decoder_lora_config,
    merge_adapter,
    peft_wrapping,
)
from model_store.manifest import MANIFEST_NAME, verify_directory
from model_store.merge import write_merged
from tests.conftest import photo_paths

# peft 0.21 still calls the deprecated transformers 5 name; not our code.
# train and merge must not print peft's deprecation warning at users (model_store.lora.peft_wrapping).
pytestmark = pytest.mark.filterwarnings("error:.*is_gradient_checkpointing:FutureWarning")

TOLERANCE = 1e-5
TARGET = FashionAttributes(
    category="top",
    primary_color="red",
    material="cotton",
    style_tags=["casual"],
    occasion_tags=["everyday", "casual"],
)
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


@dataclass(frozen=True)
class AdapterCase:
    adapter_dir: Path
    batch: dict[str, torch.Tensor]
    base_logits: torch.Tensor
    peft_logits: torch.Tensor
    lora_modules: list[str]


def logits_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        logits: torch.Tensor = model(**batch).logits
    return logits.float()


@pytest.fixture(scope="module")
def adapter_case(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AdapterCase:
    loaded = load_model(str(demo_model_dir))
    processor, prompt = loaded.processor, loaded.manifest.prompt
    images = [Image.open(path).convert("RGB") for path in photo_paths(4)]
    inputs = processor(text=[prompt] * len(images), images=images, return_tensors="pt")
    labels = processor.tokenizer([TARGET.to_target_text()] * len(images), return_tensors="pt")[
        "input_ids"
    ]
    batch = {**inputs, "labels": labels}
    base_logits = logits_of(loaded.model, batch)

    with peft_wrapping():
        peft_model = get_peft_model(loaded.model, decoder_lora_config())
    generator = torch.Generator().manual_seed(1234)
    lora_modules = []
    for name, module in peft_model.named_modules():
        if hasattr(module, "lora_B") and "default" in module.lora_B:
            lora_modules.append(name)
            weight = module.lora_B["default"].weight
            with torch.no_grad():  # peft initialises B to zero: make the adapter do something
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.05)
    peft_logits = logits_of(peft_model, batch)

    adapter_dir = tmp_path_factory.mktemp("adapters") / "lora-test"
    peft_model.save_pretrained(str(adapter_dir))
    return AdapterCase(adapter_dir, batch, base_logits, peft_logits, lora_modules)


def assert_matches_peft(logits: torch.Tensor, case: AdapterCase) -> None:
    assert logits.shape == case.peft_logits.shape
    diff = (logits - case.peft_logits).abs().max().item()
    assert diff <= TOLERANCE, f"merged logits differ from the unmerged adapter by {diff:.3g}"
    # The adapter really changes the model, so a merge that silently did nothing fails.
    assert (logits - case.base_logits).abs().max().item() > 100 * TOLERANCE


def test_lora_targets_only_decoder_linears(adapter_case: AdapterCase) -> None:
    config = decoder_lora_config()
    assert (config.r, config.lora_alpha) == (16, 32)
    pattern = re.compile(
        r".*language_model\.decoder\.layers\.(\d+)\.(self_attn|encoder_attn)?\.?(\w+)$"
    )
    covered = set()
    for name in adapter_case.lora_modules:
        assert "vision_tower" not in name
        assert "multi_modal_projector" not in name
        assert ".encoder." not in name
        assert "lm_head" not in name
        match = pattern.fullmatch(name)
        assert match, name
        assert match.group(3) in LINEAR_NAMES
        covered.add(name.split("language_model.", 1)[1])
    # demo: 2 decoder layers x (4 self-attn + 4 cross-attn + fc1 + fc2)
    expected = {
        f"decoder.layers.{layer}.{block}.{proj}"
        for layer in range(2)
        for block in ("self_attn", "encoder_attn")
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj")
    } | {f"decoder.layers.{layer}.{fc}" for layer in range(2) for fc in ("fc1", "fc2")}
    assert covered == expected


def test_adapter_is_saved_as_safetensors(adapter_case: AdapterCase) -> None:
    files = {p.name for p in adapter_case.adapter_dir.iterdir()}
    assert {ADAPTER_WEIGHTS, "adapter_config.json"} <= files
    assert not any(name.endswith((".bin", ".pt")) for name in files)


def test_adapter_changes_the_logits(adapter_case: AdapterCase) -> None:
    assert (adapter_case.peft_logits - adapter_case.base_logits).abs().max().item() > 1e-3


def test_merge_adapter_matches_unmerged(adapter_case: AdapterCase, demo_model_dir: Path) -> None:
    base = Florence2ForConditionalGeneration.from_pretrained(str(demo_model_dir))
    merged = merge_adapter(base, adapter_case.adapter_dir)
    assert type(merged) is Florence2ForConditionalGeneration
    assert not isinstance(merged, PeftModel)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert_matches_peft(logits_of(merged, adapter_case.batch), adapter_case)


def test_write_merged_then_load(
    adapter_case: AdapterCase, demo_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    manifest = write_merged(str(demo_model_dir), adapter_case.adapter_dir, out)
    assert manifest.adapter == adapter_case.adapter_dir.name
    assert manifest.name == f"fashion-florence-demo+{adapter_case.adapter_dir.name}"
    assert manifest.base_model == verify_directory(demo_model_dir).base_model
    assert manifest.schema_version == 1
    assert manifest.dtype == "float32"
    assert (out / MANIFEST_NAME).is_file()
    assert verify_directory(out) == manifest
    assert not any(p.name.startswith("adapter_") for p in out.iterdir())
    loaded = load_model(str(out))
    assert_matches_peft(logits_of(loaded.model, adapter_case.batch), adapter_case)


def test_load_model_with_adapter(adapter_case: AdapterCase, demo_model_dir: Path) -> None:
    loaded = load_model(str(demo_model_dir), adapter=adapter_case.adapter_dir)
    assert loaded.manifest.adapter == str(adapter_case.adapter_dir)
    assert not isinstance(loaded.model, PeftModel)
    assert_matches_peft(logits_of(loaded.model, adapter_case.batch), adapter_case)


def test_pickled_adapter_is_refused(
    adapter_case: AdapterCase, demo_model_dir: Path, tmp_path: Path
) -> None:
    pickled = Path(shutil.copytree(adapter_case.adapter_dir, tmp_path / "pickled"))
    (pickled / ADAPTER_WEIGHTS).rename(pickled / "adapter_model.bin")
    base = Florence2ForConditionalGeneration.from_pretrained(str(demo_model_dir))
    with pytest.raises(AdapterError, match="pickled adapters are refused"):
        merge_adapter(base, pickled)
    with pytest.raises(ModelLoadError, match="pickled adapters are refused"):
        load_model(str(demo_model_dir), adapter=pickled)
    with pytest.raises(ModelLoadError, match="pickled adapters are refused"):
        write_merged(str(demo_model_dir), pickled, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_directory_without_adapter_config_is_refused(demo_model_dir: Path, tmp_path: Path) -> None:
    base = Florence2ForConditionalGeneration.from_pretrained(str(demo_model_dir))
    with pytest.raises(AdapterError, match=r"no adapter_config\.json"):
        merge_adapter(base, tmp_path)
