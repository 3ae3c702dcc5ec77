"""bench.mode_split: every variant measured, the encoders timed apart, patches undone."""

from __future__ import annotations

from pathlib import Path

import pytest

import service.inference.decoding.jump_forward as jump_forward
from bench.mode_split import VARIANTS, markdown, measure
from service.inference.decoding.florence import Florence2Stepper

pytestmark = pytest.mark.slow


def test_variants_and_encoders_measured_and_patches_undone(demo_model_dir: Path) -> None:
    width, encode = jump_forward.block_width, Florence2Stepper.encode
    (row,) = measure(demo_model_dir, [1], repeats=1, images=1)
    assert all(row[variant] > 0 for variant in VARIANTS)
    assert 0 < row["encoders"] < row["jump-forward"]  # a part of the batch, not all of it
    assert jump_forward.block_width is width
    assert Florence2Stepper.encode is encode
    assert len(markdown([row]).splitlines()) == 3
