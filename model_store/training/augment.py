"""Image augmentation for training: a left-right flip, zoom and shift of pixel batches.

Garments are symmetric enough to flip, and a phone photo frames the garment anywhere, so
zooming (0.8-1.25x) and shifting (up to 1/8 of the side) changes no label; on a few
thousand real photos they keep a small model from learning the photos by heart.
"""

from __future__ import annotations

import math

import torch

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
