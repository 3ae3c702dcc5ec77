"""``fashion-florence model merge``: a base model and a LoRA adapter into one servable model.

Production pods load merged weights only: a merged model runs at base-model speed with no
peft indirection on the hot path.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from model_store.loading import load_model, save_model
from model_store.lora import AdapterError
from model_store.manifest import TRAINING_MANIFEST_NAME, ModelManifest


def write_merged(
    base: str, adapter_dir: Path, out_dir: Path, *, name: str | None = None
) -> ModelManifest:
    """Merge ``adapter_dir`` into ``base`` and write a servable model with its manifest."""
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
