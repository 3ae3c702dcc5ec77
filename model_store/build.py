"""Build native Florence-2 models from scratch: the tiny demo model and shape presets.

``demo`` is a few hundred thousand parameters at 128 px: it builds offline in about a
second, byte-identically every time, and is what the tests load. ``make run`` serves the
same architecture at 64 px, trained on real photos and synthetic garments.
``florence-2-base`` / ``florence-2-large`` have the real dimensions with random weights,
for GPU benchmarks only (never built in tests).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import torch
from transformers import (
    BartConfig,
    CLIPImageProcessorPil,
    Florence2Config,
    Florence2ForConditionalGeneration,
    Florence2Processor,
    Florence2VisionConfig,
    RobertaTokenizer,
)

from model_store.manifest import DEFAULT_PROMPT, ModelManifest, new_manifest
from model_store.tokenizer import train_tokenizer
from model_store.vocabulary import florence_tokenizer, native_embedding_rows

log = logging.getLogger(__name__)

IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)
#: Florence-2's tokens (BART's 50,265 and its 1,024 added ones); <image> comes after them.
FLORENCE_VOCAB_SIZE: Final = 51289
#: A fixed time for the demo manifest so that two builds are identical byte for byte.
DEMO_CREATED_AT: Final = "2026-01-01T00:00:00+00:00"


@dataclass(frozen=True, slots=True)
class ShapePreset:
    name: str
    image_size: int
    embed_dim: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    window_size: int
    projection_dim: int  # must equal d_model: image features feed the BART encoder directly
    d_model: int
    encoder_layers: int
    decoder_layers: int
    attention_heads: int
    ffn_dim: int
    max_positions: int

    @property
    def image_seq_length(self) -> int:
        # DaViT downsamples 32x overall; Florence-2 appends one pooled (temporal) token.
        return (self.image_size // 32) ** 2 + 1


PRESETS: Final[dict[str, ShapePreset]] = {
    "demo": ShapePreset(
        "demo", 128, (16, 24, 32, 48), (1, 2, 2, 3), (1, 1, 1, 1), 2, 64, 64, 1, 2, 2, 128, 256
    ),
    "florence-2-base": ShapePreset(
        "florence-2-base",
        768,
        (128, 256, 512, 1024),
        (4, 8, 16, 32),
        (1, 1, 9, 1),
        12,
        768,
        768,
        6,
        6,
        12,
        3072,
        1024,
    ),
    "florence-2-large": ShapePreset(
        "florence-2-large",
        768,
        (256, 512, 1024, 2048),
        (8, 16, 32, 64),
        (1, 1, 9, 1),
        12,
        1024,
        1024,
        12,
        12,
        16,
        4096,
        1024,
    ),
}


def build_processor(tokenizer: RobertaTokenizer, preset: ShapePreset) -> Florence2Processor:
    return make_processor(
        tokenizer, image_size=preset.image_size, image_seq_length=preset.image_seq_length
    )


def make_processor(
    tokenizer: RobertaTokenizer,
    *,
    image_size: int,
    image_seq_length: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resample: int = 3,  # PIL bicubic
) -> Florence2Processor:
    """Florence-2's preprocessing: plain resize (no centre crop), bicubic, ImageNet stats."""
    image_processor = CLIPImageProcessorPil(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=resample,
        do_center_crop=False,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(mean),
        image_std=list(std),
        do_convert_rgb=True,
        image_seq_length=image_seq_length,
    )
    return Florence2Processor(
        image_processor=image_processor, tokenizer=tokenizer, post_processor_config={}
    )


def build_config(
    preset: ShapePreset,
    vocab_size: int,
    image_token_id: int,
    *,
    text_init_std: float | None = None,
) -> Florence2Config:
    vision = Florence2VisionConfig(
        depths=list(preset.depths),
        embed_dim=list(preset.embed_dim),
        num_heads=list(preset.num_heads),
        num_groups=list(preset.num_heads),
        window_size=preset.window_size,
        projection_dim=preset.projection_dim,
        drop_path_rate=0.0,
    )
    text = BartConfig(
        vocab_size=vocab_size,
        d_model=preset.d_model,
        encoder_layers=preset.encoder_layers,
        decoder_layers=preset.decoder_layers,
        encoder_attention_heads=preset.attention_heads,
        decoder_attention_heads=preset.attention_heads,
        encoder_ffn_dim=preset.ffn_dim,
        decoder_ffn_dim=preset.ffn_dim,
        max_position_embeddings=preset.max_positions,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=None,
    )
    if text_init_std is not None:
        # BART's 0.02 suits d_model=1024; a 64-wide model trained from scratch learns much
        # faster from ~1/sqrt(d_model) (its tied embeddings otherwise cap the logits).
        text.init_std = text_init_std
    return Florence2Config(vision_config=vision, text_config=text, image_token_id=image_token_id)


def _preset_tokenizer(
    preset: ShapePreset, prompt: str, gpt2_ranks: Path | None = None
) -> RobertaTokenizer:
    if preset.name == "demo":
        return train_tokenizer(prompt)
    if gpt2_ranks is not None:
        # Florence-2's real vocabulary: real token counts and real mask widths.
        return florence_tokenizer(gpt2_ranks)
    log.warning(
        "no GPT-2 ranks given for %s: padding the demo tokenizer to Florence-2's size; "
        "shapes are real, tokenization and grammar masks are not",
        preset.name,
    )
    tokenizer = train_tokenizer(prompt)
    filler = FLORENCE_VOCAB_SIZE - len(tokenizer) + 1  # +1: <image> already counted
    tokenizer.add_tokens([f"<unused_{i}>" for i in range(max(filler, 0))])
    return tokenizer


def _embedding_rows(preset: ShapePreset, tokenizer: RobertaTokenizer) -> int:
    """Florence-2's native table is padded to a multiple of 64 (51,328 rows)."""
    return len(tokenizer) if preset.name == "demo" else native_embedding_rows(len(tokenizer))


def build_model(
    preset_name: str,
    out_dir: Path,
    *,
    seed: int = 0,
    prompt: str = DEFAULT_PROMPT,
    text_init_std: float | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    gpt2_ranks: Path | None = None,
    image_size: int | None = None,
) -> ModelManifest:
    """Write a random-weight native Florence-2 with tokenizer, processor and manifest.

    ``device`` and ``dtype`` are for the large presets: initialising 0.77B parameters on a
    GPU takes a second where the CPU takes many, and bf16 weights halve what is written
    and hashed. The weights are drawn in float32 either way, then cast. ``gpt2_ranks``
    (GPT-2's ``.tiktoken`` ranks) gives the real-size presets Florence-2's real vocabulary.
    ``image_size`` replaces the preset's input side (a multiple of 32: DaViT's overall
    stride), e.g. the trained demo's 64 px."""
    preset = PRESETS[preset_name]
    if image_size is not None:
        if image_size < 32 or image_size % 32:
            raise ValueError(f"image_size {image_size}: give a positive multiple of 32")
        preset = dataclasses.replace(preset, image_size=image_size)
    tokenizer = _preset_tokenizer(preset, prompt, gpt2_ranks)
    processor = build_processor(tokenizer, preset)
    config = build_config(
        preset,
        _embedding_rows(preset, tokenizer),
        tokenizer.image_token_id,
        text_init_std=text_init_std,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = Florence2ForConditionalGeneration(config)
    if dtype != torch.float32:
        # ``to`` is wrapped with functools.wraps, which mypy cannot bind as a method.
        cast: Callable[..., Florence2ForConditionalGeneration] = model.to
        model = cast(dtype=dtype)
    model.train(False)  # = .eval(), which transformers leaves unannotated
    model.generation_config.no_repeat_ngram_size = 0
    model.generation_config.num_beams = 1
    model.generation_config.forced_eos_token_id = None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Build in a sibling temp dir and rename: a crash never leaves a half-written model
    # that a later start would pick up, and concurrent builders do not interleave files.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        processor.save_pretrained(staging)
        manifest = new_manifest(
            staging,
            name=f"fashion-florence-{preset.name}",
            base_model=f"random:{preset.name}:seed={seed}"
            + (f":init_std={text_init_std}" if text_init_std is not None else ""),
            adapter=None,
            prompt=prompt,
            image_size=preset.image_size,
            dtype=str(dtype).removeprefix("torch."),
            created_at=DEMO_CREATED_AT if preset.name == "demo" else None,
        )
        manifest.write(staging)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
