"""LoRA adapters for Florence-2: configs and presets, adapter checks, in-memory merging.

The paper fine-tunes with LoRA r=16, alpha=32. This is the primitive that loading and
training share; writing a merged model to disk is :mod:`model_store.merge`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from peft import LoraConfig, PeftModel
from transformers import Florence2ForConditionalGeneration

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


@contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around wrapping a model in peft: peft reads transformers' deprecated
    ``is_gradient_checkpointing`` there, and the FutureWarning it prints on every ``train``
    and ``merge`` is for peft to act on, not our users. Only that warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning
        )
        yield


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
    with peft_wrapping():
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    merged = peft_model.merge_and_unload()
    if not isinstance(merged, Florence2ForConditionalGeneration):
        raise AdapterError(f"merging {adapter_dir} gave {type(merged).__name__}, not Florence-2")
    return merged
