"""LoRA adapters trained on the original layout, renamed for the native model.

A PEFT adapter names the modules it wraps by their path in the model it was trained on:
``base_model.model.vision_tower.blocks.0.0.spatial_block.window_attn.fn.qkv.lora_A.weight``
for an ``all-linear`` adapter of the original layout. Its module paths go through the same
rules as the weights. ``target_modules`` becomes the explicit list of converted module
paths: ``all-linear`` would resolve differently on the native model (its image projection
is an ``nn.Linear``, the original's a raw parameter) and suffix lists like ``proj`` would
miss the renamed ``convs.{i}.conv``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Final

import torch
from peft import LoraConfig, PeftModel, set_peft_model_state_dict
from safetensors.torch import load_file
from transformers import Florence2ForConditionalGeneration

from model_store.importing.errors import CheckpointImportError
from model_store.importing.keys import map_module_path
from model_store.importing.layout import require_local_folder
from model_store.importing.weights import read_pickle
from model_store.lora import peft_wrapping

PREFIX: Final = "base_model.model."
_LORA_KEY: Final = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)\.(?P<param>weight|bias)$")
#: Config entries keyed by original module names; converting them is not implemented, so
#: an adapter using them is refused rather than merged with the wrong ranks or scales.
_UNSUPPORTED: Final = ("modules_to_save", "rank_pattern", "alpha_pattern", "layers_to_transform")


def _read_adapter(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    require_local_folder(adapter_dir, "the adapter")
    config_path = adapter_dir / "adapter_config.json"
    if not config_path.is_file():
        raise CheckpointImportError(f"{adapter_dir} is not a PEFT adapter (no adapter_config.json)")
    config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    if (adapter_dir / "adapter_model.safetensors").is_file():
        return config, load_file(adapter_dir / "adapter_model.safetensors")
    if (adapter_dir / "adapter_model.bin").is_file():
        return config, read_pickle(adapter_dir / "adapter_model.bin")
    raise CheckpointImportError(f"{adapter_dir} has no adapter_model.safetensors or .bin")


def convert_adapter(adapter_dir: Path) -> tuple[LoraConfig, dict[str, torch.Tensor]]:
    """The adapter's config and weights in native terms (weights keyed as PEFT saves them)."""
    config, tensors = _read_adapter(adapter_dir)
    if config.get("peft_type") != "LORA":
        raise CheckpointImportError(
            f"only LoRA adapters are supported, not {config.get('peft_type')}"
        )
    used = [k for k in _UNSUPPORTED if config.get(k)]
    if used or config.get("use_dora"):
        raise CheckpointImportError(
            f"adapter options not supported for import: {used or ['use_dora']}"
        )
    converted: dict[str, torch.Tensor] = {}
    modules: set[str] = set()
    unknown: list[str] = []
    for key, tensor in tensors.items():
        match = _LORA_KEY.match(key.removeprefix(PREFIX)) if key.startswith(PREFIX) else None
        target = map_module_path(match["module"] + ".weight") if match else None
        if match is None or target is None:
            unknown.append(key)
            continue
        module = target.removesuffix(".weight")
        modules.add(module)
        converted[f"{PREFIX}{module}.{match['part']}.{match['param']}"] = tensor
    if unknown:
        raise CheckpointImportError(f"adapter keys no rule maps: {sorted(unknown)[:20]}")
    if not modules:
        raise CheckpointImportError(f"{adapter_dir} holds no LoRA weights")
    fields = {k: v for k, v in config.items() if k in LoraConfig.__dataclass_fields__}
    fields.update(
        target_modules=sorted(modules), exclude_modules=None, base_model_name_or_path=None
    )
    return LoraConfig(**fields), converted


def merge_converted(
    model: Florence2ForConditionalGeneration, adapter_dir: Path
) -> Florence2ForConditionalGeneration:
    """Apply an original-layout adapter to a native model and fold it into the weights."""
    config, weights = convert_adapter(adapter_dir)
    with peft_wrapping():
        wrapped = PeftModel(model, config)
    result: Any = set_peft_model_state_dict(wrapped, weights)
    missing = [k for k in result.missing_keys if "lora_" in k]
    unexpected = list(result.unexpected_keys)
    if unexpected or missing:
        raise CheckpointImportError(
            f"adapter does not fit the model: unexpected {sorted(unexpected)[:10]}, "
            f"missing {sorted(missing)[:10]}"
        )
    merged = wrapped.merge_and_unload()
    if not isinstance(merged, Florence2ForConditionalGeneration):
        raise CheckpointImportError(f"merging gave {type(merged).__name__}, not Florence-2")
    return merged
