"""The vision warm-up's batches: the photos' share of each batch, and the augmentation."""

from __future__ import annotations

import torch

from model_store.demo_vision import augment, batch_indices


def test_a_share_of_each_batch_comes_from_the_partially_labelled_rows() -> None:
    partial = torch.tensor([True] * 10 + [False] * 990)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        batch = batch_indices(partial, 32, 0.75, generator)
        assert batch.shape == (32,)
        assert int(partial[batch].sum()) == 24  # round(32 * 0.75), however rare they are


def test_without_a_share_or_without_both_kinds_rows_are_drawn_uniformly() -> None:
    generator = torch.Generator().manual_seed(0)
    partial = torch.tensor([True] * 10 + [False] * 990)
    drawn = torch.cat([batch_indices(partial, 32, None, generator) for _ in range(50)])
    assert int(partial[drawn].sum()) < 160  # 1% of 1,600 draws expected (16), not 75%
    only_full = torch.zeros(100, dtype=torch.bool)
    assert bool((batch_indices(only_full, 32, 0.75, generator) < 100).all())


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
