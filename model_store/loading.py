"""Load a Florence-2 for serving: local directory or hub id, optional LoRA merged in."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Florence2ForConditionalGeneration, Florence2Processor, PretrainedConfig

from fashion_florence_client.schema import SCHEMA_VERSION
from model_store.importing.layout import IMPORT_HINT, is_original_config, is_original_layout
from model_store.lora import AdapterError, merge_adapter
from model_store.manifest import (
    DEFAULT_PROMPT,
    MANIFEST_NAME,
    ManifestError,
    ModelManifest,
    new_manifest,
    verify_directory,
)

log = logging.getLogger(__name__)


class ModelLoadError(Exception):
    """The model could not be loaded; the message says why and what to do."""


@dataclass(slots=True)
class LoadedModel:
    model: Florence2ForConditionalGeneration
    processor: Florence2Processor
    manifest: ModelManifest
    source: str


def _assumed_manifest(source: str, processor: Florence2Processor) -> ModelManifest:
    """For checkpoints we did not write (e.g. a hub id): no checksums to verify."""
    log.warning(
        "%s has no %s: assuming schema v%d and the default prompt; weights are not verified",
        source, MANIFEST_NAME, SCHEMA_VERSION,
    )  # fmt: skip
    size = processor.image_processor.size
    return ModelManifest(
        name=source.rstrip("/").rsplit("/", 1)[-1],
        base_model=source,
        schema_version=SCHEMA_VERSION,
        prompt=DEFAULT_PROMPT,
        image_size=int(size.get("height", 768)),
        dtype="unknown",
        weights={},
        created_at="unknown",
    )


def _refuse_original(source: str) -> None:
    """The native class would load an original-layout config with default dimensions and
    random weights where the names differ: refuse it and say how to convert it."""
    try:
        config, _ = PretrainedConfig.get_config_dict(source)
    except (OSError, ValueError):
        return  # from_pretrained reports the real problem
    if is_original_config(config):
        raise ModelLoadError(
            f"{source} is a Florence-2 checkpoint in the original (trust_remote_code) layout, "
            f"which this service does not load directly; {IMPORT_HINT}"
        )


def _from_pretrained(source: str) -> tuple[Florence2ForConditionalGeneration, Florence2Processor]:
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    if not Path(source).is_dir():  # local directories were checked before
        _refuse_original(source)
    try:
        model = Florence2ForConditionalGeneration.from_pretrained(
            source, use_safetensors=True, dtype=torch.float32
        )
        processor = Florence2Processor.from_pretrained(source)
    except (OSError, ValueError) as exc:
        hint = (
            " HF_HUB_OFFLINE is set, so only local directories and cached hub ids load."
            if offline
            else " Give a local directory in native Florence-2 format, or check hub access "
            "(HF_HUB_OFFLINE=1 stops the retries offline). microsoft/Florence-2-* are in the "
            f"original layout: download one, then {IMPORT_HINT.removeprefix('convert it once with ')}."
        )
        raise ModelLoadError(
            f"cannot load model {source!r}: {str(exc).rstrip('.')}.{hint}"
        ) from exc
    return model, processor


def _place(
    model: Florence2ForConditionalGeneration, device: torch.device | str, dtype: torch.dtype
) -> Florence2ForConditionalGeneration:
    """Move to ``device``/``dtype`` in eval mode.

    ``PreTrainedModel.to`` is decorated with ``functools.wraps``, which mypy cannot bind as
    a method, and ``eval`` is unannotated; this gives both one typed call site.
    """
    move: Callable[..., Florence2ForConditionalGeneration] = model.to
    placed = move(device=device, dtype=dtype)
    placed.train(False)
    return placed


def load_model(
    source: str,
    *,
    adapter: Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    verify_checksums: bool = True,
) -> LoadedModel:
    """Load, verify, merge the adapter (in fp32, before any down-cast) and place on device."""
    local = Path(source).expanduser()
    manifest: ModelManifest | None = None
    if local.is_dir():
        source = str(local)
        if is_original_layout(local):
            raise ModelLoadError(
                f"{source} holds a Florence-2 checkpoint in the original (trust_remote_code) "
                f"layout, which this service does not load directly; {IMPORT_HINT}"
            )
        if (local / MANIFEST_NAME).is_file():
            try:
                manifest = verify_directory(local, check_checksums=verify_checksums)
            except ManifestError as exc:
                raise ModelLoadError(str(exc)) from exc
        elif verify_checksums:
            # Deleting the manifest must not be a way around verification.
            raise ModelLoadError(
                f"{source} has no {MANIFEST_NAME}, so its weights cannot be verified; use a "
                "directory written by `fashion-florence model build-demo/merge`, or set "
                "FF_VERIFY_CHECKSUMS=false to serve an upstream checkpoint unverified"
            )
    elif source.startswith((".", "/", "~")) or local.exists():
        problem = "is not a directory" if local.exists() else "does not exist"
        raise ModelLoadError(f"model path {source!r} {problem}; give a model directory or a hub id")
    model, processor = _from_pretrained(source)
    if manifest is None:
        manifest = _assumed_manifest(source, processor)
    if adapter is not None:
        try:
            model = merge_adapter(model, adapter)
        except AdapterError as exc:
            raise ModelLoadError(str(exc)) from exc
        manifest = manifest.model_copy(update={"adapter": str(adapter)})
    model = _place(model, device, dtype)
    return LoadedModel(model=model, processor=processor, manifest=manifest, source=source)


def save_model(
    loaded: LoadedModel, out_dir: Path, *, name: str, base_model: str, adapter: str | None
) -> ModelManifest:
    """The inverse of :func:`load_model`: weights (safetensors), processor and manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(out_dir, safe_serialization=True)
    loaded.processor.save_pretrained(out_dir)
    dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    manifest = new_manifest(
        out_dir,
        name=name,
        base_model=base_model,
        adapter=adapter,
        prompt=loaded.manifest.prompt,
        image_size=loaded.manifest.image_size,
        dtype=dtype,
        profile=loaded.manifest.profile,
        imported=loaded.manifest.imported,
    )
    manifest.write(out_dir)
    return manifest
