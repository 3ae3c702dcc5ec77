"""The demo's stand-in for pretraining the vision tower: linear heads on the image tokens.

A random vision tower gives the decoder almost nothing to read, and learning vision
through a sequence loss alone is very slow; a classification loss straight on the image
tokens (all of them, and their mean, which uniform cross-attention sees first) is fast.
The heads are thrown away afterwards. Partial labels hold here too: an unknown field's
label is ``-100`` and contributes no loss. Photos are decoded and resized once and
flipped left-right at random (garments are symmetric enough; it halves overfitting on a
few thousand photos).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import Florence2ForConditionalGeneration, Florence2Processor

from fashion_florence_client.schema import CATEGORIES, COLORS, MATERIALS
from model_store.data.dataset import Record
from model_store.evaluation.predict import open_rgb

IGNORE = -100
HEADS = ("category", "primary_color", "material")


def head_labels(records: Sequence[Record]) -> torch.Tensor:
    """(n, 3) class indices for the heads; -100 where the field is unknown."""
    rows = []
    for record in records:
        target = record.target
        values = (
            CATEGORIES.index(target.category),
            COLORS.index(target.primary_color),
            MATERIALS.index(target.material) + 1 if target.material else 0,
        )
        rows.append([v if record.known(f) else IGNORE for f, v in zip(HEADS, values, strict=True)])
    return torch.tensor(rows, dtype=torch.long)


def _heads(width: int, tokens: int) -> torch.nn.ModuleDict:
    sizes = {"category": len(CATEGORIES), "primary_color": len(COLORS), "material": len(MATERIALS) + 1}  # fmt: skip
    heads: dict[str, torch.nn.Module] = {}
    for name, size in sizes.items():
        heads[f"{name}_flat"] = torch.nn.Linear(width * tokens, size)
        heads[f"{name}_mean"] = torch.nn.Linear(width, size)
    return torch.nn.ModuleDict(heads)


def head_loss(
    heads: torch.nn.ModuleDict, features: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of every head over the labelled rows only (an all-unknown batch: 0)."""
    loss = features.sum() * 0.0
    for index, name in enumerate(HEADS):
        target = labels[:, index]
        if bool((target == IGNORE).all()):
            continue
        for kind, pooled in (("flat", features.flatten(1)), ("mean", features.mean(1))):
            logits = heads[f"{name}_{kind}"](pooled)
            loss = loss + torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE)
    return loss


def warm_up_vision(
    model: Florence2ForConditionalGeneration,
    processor: Florence2Processor,
    records: Sequence[Record],
    *,
    steps: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
) -> float:
    """Teach the vision tower and projector the labelled fields; returns the final loss."""
    side = processor.image_processor.size["height"]
    pixels = processor.image_processor(
        [open_rgb(r.image).resize((side, side)) for r in records], return_tensors="pt"
    )["pixel_values"]
    labels = head_labels(records)
    tower = [model.model.vision_tower, model.model.multi_modal_projector]
    width = model.model.multi_modal_projector.image_projection.out_features
    heads = _heads(width, processor.image_processor.image_seq_length)
    params = [p for module in tower for p in module.parameters()] + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    model.train(True)
    loss = torch.zeros(())
    for step in range(steps):
        warm = min(1.0, (step + 1) / 20) * (1 - step / steps)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * warm
        batch = torch.randint(0, len(records), (batch_size,), generator=generator)
        flip = torch.rand(batch_size, generator=generator) < 0.5
        images = pixels[batch]
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        features = model.model.get_image_features(images).pooler_output
        loss = head_loss(heads, features, labels[batch])
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
    model.train(False)
    return float(loss.detach())
