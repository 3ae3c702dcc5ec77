"""Reading a checkpoint's tensors without running any code from it.

safetensors first. A ``.bin`` is a pickle, so it is read only with
``torch.load(weights_only=True)``: torch's restricted unpickler, which builds tensors and
plain containers and refuses every other global, so a pickle with code in it fails here
instead of running. Sharded checkpoints are read through their index.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Final

import torch
from safetensors.torch import load_file

from model_store.importing.errors import CheckpointImportError

SAFETENSORS: Final = ("model.safetensors", "model.safetensors.index.json")
PICKLED: Final = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def weight_files(directory: Path) -> list[Path]:
    """The checkpoint's weight files: safetensors if there are any, else the ``.bin``."""
    for single, index in (SAFETENSORS, PICKLED):
        if (directory / index).is_file():
            try:
                shards = json.loads((directory / index).read_text(encoding="utf-8"))["weight_map"]
            except (ValueError, KeyError) as exc:
                raise CheckpointImportError(f"{directory / index} is not a weight index") from exc
            return [directory / name for name in sorted(set(shards.values()))]
        if (directory / single).is_file():
            return [directory / single]
    raise CheckpointImportError(
        f"{directory} holds no {SAFETENSORS[0]} or {PICKLED[0]} (nor a sharded index)"
    )


def read_pickle(path: Path) -> dict[str, torch.Tensor]:
    # Memory-mapped where torch can (its zip format): the tensors are not read twice.
    mmap = zipfile.is_zipfile(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointImportError(
            f"{path.name} is not a plain tensor pickle and was not loaded ({first}); "
            "only weights_only pickles are read: a pickle that needs code to load is refused"
        ) from exc
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise CheckpointImportError(f"{path.name} is not a flat state dict of tensors")
    return loaded


def read_state_dict(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, by its original name (a key twice is an error)."""
    tensors: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        if not path.is_file():
            raise CheckpointImportError(f"the weight index names {path.name}, which is missing")
        try:
            part = load_file(path) if path.suffix == ".safetensors" else read_pickle(path)
        except CheckpointImportError:
            raise
        except Exception as exc:  # safetensors raises its own error types for a bad header
            raise CheckpointImportError(f"{path.name} cannot be read: {exc}") from exc
        repeated = sorted(set(part) & set(tensors))
        if repeated:
            raise CheckpointImportError(f"keys in more than one shard: {repeated[:10]}")
        tensors.update(part)
    return tensors
