"""A test-only re-creation of the *names* of Florence-2's original module tree, at tiny dims.

Written from the original remote-code modeling file (``modeling_florence2.py`` of
``microsoft/Florence-2-*``; public copy read: ``ducviet00/benchmark-florence-2``): the same
module classes nested under the same attribute names (``PreNorm(norm, fn)``,
``DepthWiseConv2d.dw``, ``Mlp.net`` as an ordered ``Sequential``, ``ConvEmbed.proj``, DaViT's
``convs``/``blocks`` with ``head`` and ``norms`` deleted, the raw ``image_projection``
parameter, ``image_pos_embed``, the ``visual_temporal_embed`` buffer). No forward passes:
only what ``state_dict()`` and PEFT see. The language model is BART itself, which the
original's ``Florence2LanguageForConditionalGeneration`` is under another name (same
modules, the ``final_logits_bias`` buffer included).

The tensors come from a native model through attribute access (:func:`fill_from_native`),
independently of the importer's string rules, so a round trip checks those rules.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BartConfig, BartForConditionalGeneration

from model_store.build import IMAGENET_MEAN, IMAGENET_STD, ShapePreset


class PreNorm(nn.Module):
    def __init__(self, norm: nn.Module | None, fn: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.fn = fn
        self.drop_path = nn.Identity()


class DepthWiseConv2d(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim, stride=1)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(dim, hidden)),
                    ("act", nn.GELU()),
                    ("fc2", nn.Linear(hidden, dim)),
                ]
            )
        )


class ConvEmbed(nn.Module):
    def __init__(
        self, size: int, in_chans: int, dim: int, stride: int, padding: int, pre_norm: bool
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=size, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(in_chans if pre_norm else dim)


class Attention(nn.Module):  # ChannelAttention and WindowAttention hold the same parameters
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)


class Block(nn.Module):
    def __init__(self, dim: int, attention: str) -> None:
        super().__init__()
        self.conv1 = PreNorm(None, DepthWiseConv2d(dim))
        setattr(self, attention, PreNorm(nn.LayerNorm(dim), Attention(dim)))
        self.conv2 = PreNorm(None, DepthWiseConv2d(dim))
        self.ffn = PreNorm(nn.LayerNorm(dim), Mlp(dim, dim * 4))


class DaViT(nn.Module):
    def __init__(self, vision: dict[str, Any]) -> None:
        super().__init__()
        dims = vision["dim_embed"]
        self.convs = nn.ModuleList(self._conv(vision, i) for i in range(len(dims)))
        self.blocks = nn.ModuleList(
            nn.Sequential(
                *[
                    nn.Sequential(
                        OrderedDict(
                            [
                                ("spatial_block", Block(dims[i], "window_attn")),
                                ("channel_block", Block(dims[i], "channel_attn")),
                            ]
                        )
                    )
                    for _ in range(vision["depths"][i])
                ]
            )
            for i in range(len(dims))
        )

    @staticmethod
    def _conv(vision: dict[str, Any], i: int) -> ConvEmbed:
        dims = vision["dim_embed"]
        return ConvEmbed(
            vision["patch_size"][i],
            3 if i == 0 else dims[i - 1],
            dims[i],
            vision["patch_stride"][i],
            vision["patch_padding"][i],
            vision["patch_prenorm"][i],
        )


class OriginalFlorence2(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        vision = config["vision_config"]
        dim = vision["dim_embed"][-1]
        self.vision_tower = DaViT(vision)
        self.image_projection = nn.Parameter(torch.empty(dim, vision["projection_dim"]))
        self.image_proj_norm = nn.LayerNorm(vision["projection_dim"])
        self.image_pos_embed = nn.Module()
        positions = vision["image_pos_embed"]["max_pos_embeddings"]
        self.image_pos_embed.row_embeddings = nn.Embedding(positions, dim // 2)
        self.image_pos_embed.column_embeddings = nn.Embedding(positions, dim - dim // 2)
        self.visual_temporal_embed = nn.Module()
        temporal = vision["visual_temporal_embedding"]["max_temporal_embeddings"]
        self.visual_temporal_embed.register_buffer("pos_idx_to_embed", torch.zeros(temporal, dim))
        text = {k: v for k, v in config["text_config"].items() if k != "model_type"}
        self.language_model = BartForConditionalGeneration(BartConfig(**text))


def original_config(preset: ShapePreset, vocab_size: int) -> dict[str, Any]:
    """A ``config.json`` as the original code writes it (fields of ``configuration_florence2``)."""
    return {
        "architectures": ["Florence2ForConditionalGeneration"],
        "auto_map": {
            "AutoConfig": "configuration_florence2.Florence2Config",
            "AutoModelForCausalLM": "modeling_florence2.Florence2ForConditionalGeneration",
        },
        "model_type": "florence2",
        "vocab_size": vocab_size,
        "projection_dim": preset.projection_dim,
        "vision_config": {
            "model_type": "davit",
            "drop_path_rate": 0.1,
            "patch_size": [7, 3, 3, 3],
            "patch_stride": [4, 2, 2, 2],
            "patch_padding": [3, 1, 1, 1],
            "patch_prenorm": [False, True, True, True],
            "enable_checkpoint": False,
            "dim_embed": list(preset.embed_dim),
            "num_heads": list(preset.num_heads),
            "num_groups": list(preset.num_heads),
            "depths": list(preset.depths),
            "window_size": preset.window_size,
            "projection_dim": preset.projection_dim,
            "visual_temporal_embedding": {"type": "COSINE", "max_temporal_embeddings": 100},
            "image_pos_embed": {"type": "learned_abs_2d", "max_pos_embeddings": 50},
            "image_feature_source": ["spatial_avg_pool", "temporal_avg_pool"],
        },
        "text_config": {
            "model_type": "florence2_language",
            "vocab_size": vocab_size,
            "d_model": preset.d_model,
            "encoder_layers": preset.encoder_layers,
            "decoder_layers": preset.decoder_layers,
            "encoder_attention_heads": preset.attention_heads,
            "decoder_attention_heads": preset.attention_heads,
            "encoder_ffn_dim": preset.ffn_dim,
            "decoder_ffn_dim": preset.ffn_dim,
            "max_position_embeddings": preset.max_positions,
            "pad_token_id": 1,
            "bos_token_id": 0,
            "eos_token_id": 2,
            "decoder_start_token_id": 2,
            "forced_bos_token_id": 0,
            "forced_eos_token_id": 2,
            "no_repeat_ngram_size": 3,
            "num_beams": 3,
            "scale_embedding": False,
            "normalize_before": False,
            "add_final_layer_norm": False,
        },
    }


def _copy(dst: nn.Module, src: nn.Module) -> None:
    dst.load_state_dict(src.state_dict())


def fill_from_native(original: OriginalFlorence2, native: Any) -> None:
    """Give the original tree the native model's tensors, module by module."""
    tree: Any = original  # nn.Module attributes are untyped to mypy
    vision = native.model.vision_tower
    for conv, source in zip(tree.vision_tower.convs, vision.convs, strict=True):
        _copy(conv.proj, source.conv)
        _copy(conv.norm, source.norm)
    for stage, source_stage in zip(tree.vision_tower.blocks, vision.blocks, strict=True):
        for block, source_block in zip(stage, source_stage, strict=True):
            for kind, attention in (
                ("spatial_block", "window_attn"),
                ("channel_block", "channel_attn"),
            ):
                ours, theirs = getattr(block, kind), getattr(source_block, kind)
                _copy(ours.conv1.fn.dw, theirs.conv1)
                _copy(ours.conv2.fn.dw, theirs.conv2)
                _copy(getattr(ours, attention).norm, theirs.norm1)
                _copy(getattr(ours, attention).fn.qkv, getattr(theirs, attention).qkv)
                _copy(getattr(ours, attention).fn.proj, getattr(theirs, attention).proj)
                _copy(ours.ffn.norm, theirs.norm2)
                _copy(ours.ffn.fn.net.fc1, theirs.ffn.fc1)
                _copy(ours.ffn.fn.net.fc2, theirs.ffn.fc2)
    projector = native.model.multi_modal_projector
    with torch.no_grad():
        tree.image_projection.copy_(projector.image_projection.weight.t())
        tree.visual_temporal_embed.pos_idx_to_embed.copy_(
            projector.visual_temporal_embed.pos_idx_to_embed
        )
    _copy(tree.image_proj_norm, projector.image_proj_norm)
    _copy(tree.image_pos_embed, projector.image_position_embed)
    rows = tree.language_model.model.shared.num_embeddings
    state = native.model.language_model.state_dict()
    for key in ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
        state[key] = state[key][:rows]
    tree.language_model.model.load_state_dict(state)
    tree.language_model.lm_head.weight = tree.language_model.model.shared.weight


def write_original(
    directory: Path, tree: nn.Module, config: dict[str, Any], tokenizer: Any, *, fmt: str
) -> None:
    """An original-layout directory: config, tokenizer, preprocessor and weights.

    ``bin``: ``torch.save`` of the whole state dict (tied copies included, as the original
    ``pytorch_model.bin`` files hold them); ``safetensors``: one copy of the tied table.
    """
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(directory)
    size = 128
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "auto_map": {"AutoProcessor": "processing_florence2.Florence2Processor"},
        "processor_class": "Florence2Processor",
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True, "size": {"height": size, "width": size}, "resample": 3,
        "do_center_crop": False, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD),
        "image_seq_length": (size // 32) ** 2 + 1,
    }))  # fmt: skip
    state = {k: v.detach().clone().contiguous() for k, v in tree.state_dict().items()}
    if fmt == "bin":
        torch.save(state, directory / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        for key in (
            "language_model.model.encoder.embed_tokens.weight",
            "language_model.model.decoder.embed_tokens.weight",
            "language_model.lm_head.weight",
        ):
            del state[key]
        save_file(state, directory / "model.safetensors")
