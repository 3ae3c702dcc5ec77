"""LoRA adapters for Florence-2 and merging them into the base weights.

The paper fine-tunes with LoRA r=16, alpha=32. Production pods load merged weights only
(``fashion-florence model merge``): a merged model runs at base-model speed with no peft
indirection on the hot path.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Final

import torch
from peft import LoraConfig, PeftModel
from transformers import Florence2ForConditionalGeneration

from model_store.manifest import TRAINING_MANIFEST_NAME, ModelManifest

#: Every linear layer of the BART decoder: self-attention, cross-attention and the FFN.
DECODER_LINEARS: Final = (
    r".*language_model\.decoder\.layers\.\d+\."
    r"(self_attn\.(q_proj|k_proj|v_proj|out_proj)|encoder_attn\.(q_proj|k_proj|v_proj|out_proj)|fc1|fc2)"
)
ADAPTER_WEIGHTS: Final = "adapter_model.safetensors"
#: Target-module presets: ``decoder`` is the paper's text (all linear layers of the language
#: decoder); ``all-linear`` is what the paper's code did (peft's shortcut: every linear layer
#: of vision tower, projector, encoder and decoder, except the output head).
LORA_PRESETS: Final[dict[str, str]] = {"decoder": DECODER_LINEARS, "all-linear": "all-linear"}


class AdapterError(Exception):
    """An adapter directory that cannot be merged safely."""


def lora_config(
    preset: str = "decoder",
    *,
    rank: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    modules_to_save: list[str] | None = None,
) -> LoraConfig:
    if preset not in LORA_PRESETS:
        raise AdapterError(f"unknown LoRA preset {preset!r}; choose from {sorted(LORA_PRESETS)}")
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=LORA_PRESETS[preset],
        modules_to_save=modules_to_save,
    )


def decoder_lora_config(rank: int = 16, alpha: int = 32, dropout: float = 0.05) -> LoraConfig:
    return lora_config("decoder", rank=rank, alpha=alpha, dropout=dropout)


def check_adapter_dir(adapter_dir: Path) -> None:
    if not (adapter_dir / "adapter_config.json").is_file():
        raise AdapterError(f"{adapter_dir} is not a LoRA adapter (no adapter_config.json)")
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise AdapterError(f"{adapter_dir} has no {ADAPTER_WEIGHTS}; pickled adapters are refused")


def merge_adapter(
    model: Florence2ForConditionalGeneration, adapter_dir: Path
) -> Florence2ForConditionalGeneration:
    """Fold a LoRA adapter into ``model``'s weights and return the plain model."""
    check_adapter_dir(adapter_dir)
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    merged = peft_model.merge_and_unload()
    if not isinstance(merged, Florence2ForConditionalGeneration):
        raise AdapterError(f"merging {adapter_dir} gave {type(merged).__name__}, not Florence-2")
    return merged


def write_merged(
    base: str, adapter_dir: Path, out_dir: Path, *, name: str | None = None
) -> ModelManifest:
    """Merge ``adapter_dir`` into ``base`` and write a servable model with its manifest."""
    from model_store.loading import load_model, save_model  # local: loading imports us

    if out_dir.exists() and any(out_dir.iterdir()):
        # Stale files (an old .bin, other shards) would end up beside the merged weights.
        raise AdapterError(f"{out_dir} is not empty; merge into a new directory")
    loaded = load_model(base, adapter=adapter_dir, device="cpu", dtype=torch.float32)
    manifest = save_model(
        loaded,
        out_dir,
        name=name or f"{loaded.manifest.name}+{adapter_dir.name}",
        base_model=loaded.manifest.base_model or base,
        adapter=adapter_dir.name,
    )
    if (adapter_dir / TRAINING_MANIFEST_NAME).is_file():
        # Provenance (data and rules version, hyperparameters, metrics) stays with the
        # servable model; it is not a weight file, so checksums are unaffected.
        shutil.copyfile(adapter_dir / TRAINING_MANIFEST_NAME, out_dir / TRAINING_MANIFEST_NAME)
    return manifest
