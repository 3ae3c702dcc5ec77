"""Original Florence-2 parameter names -> native transformers names.

The original module tree wraps DaViT's layers (``PreNorm(norm, fn)``, ``DepthWiseConv2d.dw``,
``Mlp.net``) and keeps the image projector beside the language model; the native port
flattens the wrappers and groups the projector. The rules follow transformers' own
conversion script (``convert_florence2_original_pytorch_to_hf.py``). A name that no rule
matches is *unknown*, never guessed at: the import fails and lists it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

#: Keys whose tensors are one tied table in both layouts: the native model keeps
#: ``model.language_model.shared.weight`` and ties the others to it.
TIED_EMBEDDINGS: Final = (
    "language_model.model.shared.weight",
    "language_model.model.encoder.embed_tokens.weight",
    "language_model.model.decoder.embed_tokens.weight",
    "language_model.lm_head.weight",
)
FINAL_LOGITS_BIAS: Final = "language_model.final_logits_bias"
IMAGE_PROJECTION: Final = "image_projection"

_BLOCK = r"vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial_block|channel_block)\."
_VISION_RULES: Final[tuple[tuple[re.Pattern[str], str], ...]] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"vision_tower\.convs\.(\d+)\.proj\.(weight|bias)$", r"convs.\1.conv.\2"),
        (r"vision_tower\.convs\.(\d+)\.norm\.(weight|bias)$", r"convs.\1.norm.\2"),
        (_BLOCK + r"(conv1|conv2)\.fn\.dw\.(weight|bias)$", r"blocks.\1.\2.\3.\4.\5"),
        (_BLOCK + r"(window_attn|channel_attn)\.norm\.(weight|bias)$", r"blocks.\1.\2.\3.norm1.\5"),
        (
            _BLOCK + r"(window_attn|channel_attn)\.fn\.(qkv|proj)\.(weight|bias)$",
            r"blocks.\1.\2.\3.\4.\5.\6",
        ),
        (_BLOCK + r"ffn\.norm\.(weight|bias)$", r"blocks.\1.\2.\3.norm2.\4"),
        (_BLOCK + r"ffn\.fn\.net\.(fc1|fc2)\.(weight|bias)$", r"blocks.\1.\2.\3.ffn.\4.\5"),
    )
)
_PROJECTOR: Final = {
    "image_proj_norm.weight": "image_proj_norm.weight",
    "image_proj_norm.bias": "image_proj_norm.bias",
    "image_pos_embed.row_embeddings.weight": "image_position_embed.row_embeddings.weight",
    "image_pos_embed.column_embeddings.weight": "image_position_embed.column_embeddings.weight",
    "visual_temporal_embed.pos_idx_to_embed": "visual_temporal_embed.pos_idx_to_embed",
}
#: fairseq leftovers that BART's loaders ignore too (``_keys_to_ignore_on_load_unexpected``).
_VERSION_KEYS: Final = (
    "language_model.model.encoder.version",
    "language_model.model.decoder.version",
)


@dataclass(frozen=True, slots=True)
class Mapping:
    """What happens to one source tensor."""

    action: Literal["copy", "transpose", "tied", "bias", "drop"]
    target: str | None  # native key (copy/transpose); None otherwise
    reason: str = ""


def map_module_path(path: str) -> str | None:
    """A module or parameter path of the original tree (without any adapter prefix) in
    native terms, or None when no rule knows it. Shared by weights and adapter keys."""
    for pattern, replacement in _VISION_RULES:
        if pattern.match(path):
            return "model.vision_tower." + pattern.sub(replacement, path)
    if path in _PROJECTOR:
        return "model.multi_modal_projector." + _PROJECTOR[path]
    if path.startswith("language_model.model."):
        return "model.language_model." + path.removeprefix("language_model.model.")
    return None


def map_key(key: str) -> Mapping | None:
    """The fate of one original checkpoint key, or None for an unknown key."""
    if key in TIED_EMBEDDINGS:
        return Mapping("tied", None, "one tied embedding table; copies must be equal")
    if key == FINAL_LOGITS_BIAS:
        return Mapping("bias", None, "BART's output bias buffer: must be zero (native has none)")
    if key == IMAGE_PROJECTION:
        # A raw (in, out) parameter used as x @ W; native is nn.Linear, whose weight is (out, in).
        return Mapping("transpose", "model.multi_modal_projector.image_projection.weight")
    if key in _VERSION_KEYS:
        return Mapping("drop", None, "fairseq version marker, not a weight")
    target = map_module_path(key)
    return None if target is None else Mapping("copy", target)
