"""Recognising the original Florence-2 layout and translating its configuration.

The original ``config.json`` (Microsoft's remote-code classes) says ``model_type:
florence2`` like the native one, so transformers' native class would *load* it, silently
fall back to default vision dimensions and leave the weights it cannot find random. The
tells are the original's own fields: ``auto_map``, ``vision_config.model_type: davit`` and
``dim_embed`` (native: ``embed_dim``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from transformers import BartConfig, Florence2Config, Florence2VisionConfig

from model_store.importing.errors import CheckpointImportError

IMPORT_HINT: Final = (
    "convert it once with `fashion-florence model import SRC OUT` (SRC a local folder: "
    "download a hub id first, `hf download ID --local-dir SRC`) and use OUT instead: "
    "FF_MODEL_PATH=OUT to serve it, `--base OUT` to train on it"
)


def require_local_folder(path: Path, what: str) -> None:
    """``model import`` reads local files only; a hub id gets the command that fetches it."""
    if not path.is_dir():
        raise CheckpointImportError(
            f"{what} {path} is not a local folder: `model import` reads a downloaded copy "
            f"and never the hub; download it first (`hf download {path} --local-dir DIR`, "
            "where a hub is reachable) and pass DIR"
        )


#: The image features the native projector computes; the original makes them configurable.
NATIVE_FEATURE_SOURCE: Final = ["spatial_avg_pool", "temporal_avg_pool"]
#: BART fields carried over from the original ``text_config`` (Florence2LanguageConfig is
#: BART's configuration under another name).
TEXT_FIELDS: Final = (
    "vocab_size", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
    "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings",
    "activation_function", "dropout", "attention_dropout", "activation_dropout", "init_std",
    "encoder_layerdrop", "decoder_layerdrop", "scale_embedding", "pad_token_id", "bos_token_id",
    "eos_token_id", "decoder_start_token_id",
)  # fmt: skip
#: Original options that change the computation and that native BART does not have.
UNSUPPORTED_TEXT_OPTIONS: Final = ("normalize_before", "add_final_layer_norm", "add_bias_logits")


def is_original_config(config: dict[str, Any]) -> bool:
    vision = config.get("vision_config") or {}
    return config.get("model_type") == "florence2" and (
        "auto_map" in config or vision.get("model_type") == "davit" or "dim_embed" in vision
    )


def read_config(directory: Path) -> dict[str, Any]:
    require_local_folder(directory, "the checkpoint")
    path = directory / "config.json"
    if not path.is_file():
        raise CheckpointImportError(f"{directory} has no config.json")
    try:
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointImportError(f"{path} is not JSON: {exc}") from exc
    return config


def is_original_layout(directory: Path) -> bool:
    """True for a directory holding an original-layout Florence-2 (never raises)."""
    try:
        return is_original_config(read_config(directory))
    except CheckpointImportError:
        return False


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckpointImportError(message)


def vision_config(original: dict[str, Any]) -> Florence2VisionConfig:
    _require(original.get("model_type", "davit") in {"davit", ""}, "only DaViT vision towers")
    pos = original.get("image_pos_embed") or {}
    temporal = original.get("visual_temporal_embedding") or {}
    _require(pos.get("type") == "learned_abs_2d", f"image_pos_embed {pos} is not learned_abs_2d")
    _require(
        temporal.get("type") == "COSINE", f"visual_temporal_embedding {temporal} is not COSINE"
    )
    source = original.get("image_feature_source")
    _require(
        source == NATIVE_FEATURE_SOURCE,
        f"image_feature_source {source}: the native model computes {NATIVE_FEATURE_SOURCE} only",
    )
    keys = ("depths", "num_heads", "num_groups", "patch_size", "patch_stride", "patch_padding")
    lists: dict[str, Any] = {k: list(original.get(k) or []) for k in keys}
    missing = [k for k in (*keys, "dim_embed", "patch_prenorm", "window_size", "projection_dim")
               if k not in original]  # fmt: skip
    _require(not missing, f"vision_config lacks {missing}")
    return Florence2VisionConfig(
        embed_dim=list(original["dim_embed"]),
        **lists,
        patch_prenorm=[bool(v) for v in original["patch_prenorm"]],
        window_size=int(original["window_size"]),
        projection_dim=int(original["projection_dim"]),
        max_position_embeddings=int(pos["max_pos_embeddings"]),
        max_temporal_embeddings=int(temporal["max_temporal_embeddings"]),
        drop_path_rate=0.0,  # training-only; serving is deterministic
    )


def text_config(original: dict[str, Any], vocab_rows: int) -> BartConfig:
    bad = [k for k in UNSUPPORTED_TEXT_OPTIONS if original.get(k)]
    _require(not bad, f"text_config sets {bad}, which native BART cannot reproduce")
    fields = {k: original[k] for k in TEXT_FIELDS if k in original}
    fields["vocab_size"] = vocab_rows
    # The service decodes greedily and constrained: the original's beam search and n-gram
    # ban (no_repeat_ngram_size=3 forbids the repeated `":"` every JSON object needs) and
    # forced tokens are generation settings, not weights, and are not carried over.
    return BartConfig(**fields, forced_eos_token_id=None)


def native_config(
    original: dict[str, Any], *, vocab_rows: int, image_token_id: int
) -> Florence2Config:
    """The native configuration for an original one whose embedding table grows to
    ``vocab_rows`` (Florence-2's tokens plus ``<image>``, padded)."""
    vision = original.get("vision_config")
    text = original.get("text_config")
    if not isinstance(vision, dict) or not isinstance(text, dict):
        raise CheckpointImportError("config.json lacks vision_config or text_config")
    visual = vision_config(vision)
    language = text_config(text, vocab_rows)
    _require(
        visual.projection_dim == language.d_model,
        f"projection_dim {visual.projection_dim} != d_model {language.d_model}",
    )
    return Florence2Config(
        vision_config=visual, text_config=language, image_token_id=image_token_id
    )
