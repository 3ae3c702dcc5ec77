"""The demo's stand-in for pretraining the vision tower: linear heads on the image tokens.

A random vision tower gives the decoder almost nothing to read, and learning vision
through a sequence loss alone is very slow; a classification loss straight on the image
tokens (all of them, and their mean, which uniform cross-attention sees first) is fast.
The heads are thrown away afterwards. Partial labels hold here too: an unknown field's
label is ``-100`` and contributes no loss. Photos are decoded and resized once and
flipped left-right at random (garments are symmetric enough; it halves overfitting on a
few thousand photos); with ``zoom_and_shift`` also zoomed (0.8-1.25x) and shifted (up to 1/8 of
the side), since a phone photo frames the garment anywhere. ``partial_share`` fixes the
share of each batch drawn from the partially labelled records (the real photos): the
drawn garments teach colour quickly, and drawn uniformly they took half of every batch
from the photos' category, which the tower learns slowly.
"""

from __future__ import annotations

import math
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


#: Zoom by a factor drawn log-uniformly from [1/ZOOM, ZOOM]; shift by up to SHIFT of the side.
ZOOM = 1.25
SHIFT = 1 / 8


def augment(
    images: torch.Tensor, generator: torch.Generator, *, zoom_and_shift: bool
) -> torch.Tensor:
    """A left-right flip for half the images; with ``zoom_and_shift``, each also zoomed and
    shifted at random (the border's pixels fill what moves into view)."""
    count = images.shape[0]
    flip = torch.rand(count, generator=generator) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if not zoom_and_shift:
        return images
    log_zoom = math.log(ZOOM)
    scale = torch.empty(count).uniform_(-log_zoom, log_zoom, generator=generator).exp()
    # affine_grid's coordinates span [-1, 1]: a shift of 1/8 of the side is 0.25 there.
    shift = torch.empty(count, 2).uniform_(-2 * SHIFT, 2 * SHIFT, generator=generator)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = shift
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, padding_mode="border", align_corners=False)


def batch_indices(
    partial: torch.Tensor, size: int, share: float | None, generator: torch.Generator
) -> torch.Tensor:
    """Indices of one batch: ``share`` of it (rounded) from the rows where ``partial`` is
    true, the rest from the others; uniform over all rows when ``share`` is None or one
    kind is missing."""
    chosen, others = partial.nonzero().flatten(), (~partial).nonzero().flatten()
    if share is None or len(chosen) == 0 or len(others) == 0:
        return torch.randint(0, len(partial), (size,), generator=generator)
    taken = round(size * share)
    return torch.cat([
        chosen[torch.randint(0, len(chosen), (taken,), generator=generator)],
        others[torch.randint(0, len(others), (size - taken,), generator=generator)],
    ])  # fmt: skip


def warm_up_vision(
    model: Florence2ForConditionalGeneration,
    processor: Florence2Processor,
    records: Sequence[Record],
    *,
    steps: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    partial_share: float | None = None,
    zoom_and_shift: bool = False,
) -> float:
    """Teach the vision tower and projector the labelled fields; returns the final loss."""
    side = processor.image_processor.size["height"]
    pixels = processor.image_processor(
        [open_rgb(r.image).resize((side, side)) for r in records], return_tensors="pt"
    )["pixel_values"]
    labels = head_labels(records)
    partial = torch.tensor([bool(r.unknown) for r in records])
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
        batch = batch_indices(partial, batch_size, partial_share, generator)
        images = augment(pixels[batch], generator, zoom_and_shift=zoom_and_shift)
        features = model.model.get_image_features(images).pooler_output
        loss = head_loss(heads, features, labels[batch])
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
    model.train(False)
    return float(loss.detach())
