"""The demo's stand-in for pretraining the vision tower: linear heads on the image tokens.

A random vision tower gives the decoder almost nothing to read, and learning vision
through a sequence loss alone is very slow; a classification loss straight on the image
tokens (all of them, and their mean, which uniform cross-attention sees first) is fast.
The heads are thrown away afterwards. Partial labels hold here too: an unknown field's
label is ``-100`` and contributes no loss. Photos are decoded and resized once and
augmented (:mod:`model_store.training.augment`). ``partial_share`` fixes the share of
each batch drawn from the partially labelled records (the real photos): the drawn
garments teach colour quickly, and drawn uniformly they took half of every batch from
the photos' category, which the tower learns slowly. ``category_steps`` puts a phase of
the photos' category alone first: alone, the tower learns it about twice as fast as
mixed with colour (validation probes in docs/model_pipeline.md). ``category_balance``
skews the photos' draw towards rare categories.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import Florence2ForConditionalGeneration, Florence2Processor

from fashion_florence_client.schema import CATEGORIES, COLORS, MATERIALS
from model_store.data.dataset import Record
from model_store.evaluation.predict import open_rgb
from model_store.training.augment import augment

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


def category_weights(labels: torch.Tensor, power: float) -> torch.Tensor:
    """Each row's drawing weight, ``n ** -power`` for the ``n`` rows of its category: 0
    keeps the data's own mix, 1 draws every category equally often. A row whose category
    is unknown weighs 1."""
    categories = labels[:, 0]
    known = categories != IGNORE
    counts = torch.bincount(categories[known], minlength=len(CATEGORIES)).double()
    weights = torch.ones(len(labels), dtype=torch.double)
    weights[known] = counts[categories[known]] ** -power
    return weights


def batch_indices(
    partial: torch.Tensor,
    size: int,
    share: float | None,
    generator: torch.Generator,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indices of one batch: ``share`` of it (rounded) from the rows where ``partial`` is
    true, the rest from the others; uniform over all rows when ``share`` is None or one
    kind is missing. ``weights`` (one per row) skews the draw among the partial rows."""
    chosen, others = partial.nonzero().flatten(), (~partial).nonzero().flatten()
    if share is None or len(chosen) == 0 or len(others) == 0:
        return torch.randint(0, len(partial), (size,), generator=generator)
    taken = round(size * share)
    if weights is None:
        picked = torch.randint(0, len(chosen), (taken,), generator=generator)
    else:
        picked = torch.multinomial(weights[chosen], taken, replacement=True, generator=generator)
    return torch.cat([
        chosen[picked],
        others[torch.randint(0, len(others), (size - taken,), generator=generator)],
    ])  # fmt: skip


def draw_batch(
    labels: torch.Tensor,
    partial: torch.Tensor,
    generator: torch.Generator,
    *,
    size: int,
    share: float | None,
    weights: torch.Tensor | None,
    category_only: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch's rows and their head labels. ``category_only``: the partially labelled
    rows alone (all rows when there are none), every field but the category unknown."""
    batch = batch_indices(partial, size, 1.0 if category_only else share, generator, weights)
    batch_labels = labels[batch]
    if category_only:
        batch_labels[:, 1:] = IGNORE  # advanced indexing copied the rows: labels is intact
    return batch, batch_labels


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
    category_balance: float = 0.0,
    category_steps: int = 0,
) -> float:
    """Teach the vision tower and projector the labelled fields; returns the final loss.

    The first ``category_steps`` steps teach the photos' category alone, the rest every
    labelled field of both kinds (see the module's docstring)."""
    side = processor.image_processor.size["height"]
    pixels = processor.image_processor(
        [open_rgb(r.image).resize((side, side)) for r in records], return_tensors="pt"
    )["pixel_values"]
    labels = head_labels(records)
    partial = torch.tensor([bool(r.unknown) for r in records])
    weights = category_weights(labels, category_balance) if category_balance else None
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
        batch, batch_labels = draw_batch(
            labels, partial, generator, size=batch_size, share=partial_share, weights=weights,
            category_only=step < category_steps,
        )  # fmt: skip
        images = augment(pixels[batch], generator, zoom_and_shift=zoom_and_shift)
        features = model.model.get_image_features(images).pooler_output
        loss = head_loss(heads, features, batch_labels)
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        optimizer.step()
    model.train(False)
    return float(loss.detach())
