"""Training-time augmentation: what moves, and that a draw depends only on its step."""

from __future__ import annotations

import torch

from model_store.training.augment import augment
from model_store.training.batches import augmented
from model_store.training.config import TrainConfig


def test_flip_alone_or_with_zoom_and_shift_moves_the_pixels() -> None:
    image = torch.zeros(1, 3, 32, 32)
    image[..., 8:24, 4:12] = 1.0  # an off-centre block: a flip or a shift moves it
    images = image.repeat(64, 1, 1, 1)
    flipped = augment(images, torch.Generator().manual_seed(0), zoom_and_shift=False)
    same = (flipped == images).flatten(1).all(1)
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 0 < int(mirrored.sum()) < 64
    moved = augment(images, torch.Generator().manual_seed(0), zoom_and_shift=True)
    assert moved.shape == images.shape
    assert not bool(((moved - images).abs().flatten(1).amax(1) < 1e-6).any())
    # The block stays in view (a shift of at most 1/8 of the side, zoom at most 1.25x).
    assert bool((moved.flatten(1).amax(1) > 0.5).all())


def test_a_micro_batch_is_augmented_by_its_seed_and_step_alone() -> None:
    images = torch.rand(8, 3, 16, 16)
    config = TrainConfig(seed=3)
    assert torch.equal(augmented(images, config, 5), augmented(images, config, 5))
    assert not torch.equal(augmented(images, config, 5), augmented(images, config, 6))
    assert not torch.equal(augmented(images, config, 5), augmented(images, TrainConfig(seed=4), 5))
