"""bench.flops: FLOP counts on the demo shape, and the arithmetic of the compute bound."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.flops import (
    PEAKS,
    FlopProfile,
    _counted,
    bound_img_s,
    fraction_of_bound,
    profile_directory,
    profile_model,
)


def test_demo_profile_is_positive_and_grows_with_tokens(demo_model_dir: Path) -> None:
    profile = profile_directory(demo_model_dir, steps=12)
    assert profile.vision > 0
    assert profile.encoder > 0
    assert len(profile.decoder_steps) == 12
    assert min(profile.decoder_steps) > 0
    # The first pass also projects the encoder states into the cross-attention cache;
    # later passes grow with the self-attention keys they attend to.
    assert profile.decoder_steps[0] > profile.decoder_steps[1]
    assert profile.decoder_steps[11] > profile.decoder_steps[1]
    assert 0 < profile.per_image(2) < profile.per_image(10) < profile.per_image(30)
    summary = profile.summary(10)
    assert 0 < summary["vision_fraction"] < 1


def test_cpu_attention_is_counted() -> None:
    query = torch.randn(2, 4, 10, 16)
    flops, _ = _counted(
        lambda: torch.nn.functional.scaled_dot_product_attention(query, query, query)
    )
    assert flops == 2 * (2 * 4) * 10 * 10 * (16 + 16)  # Q K^T and P V


def test_profile_interpolates_and_extrapolates_decoder_steps() -> None:
    profile = FlopProfile(vision=1000, encoder=100, decoder_steps=(30, 10, 12))
    assert profile.decoder(0) == 0
    assert profile.decoder(2) == 40
    assert profile.decoder(2.5) == 46  # half of the third step
    assert profile.decoder(5) == 30 + 10 + 12 + 2 * 12  # past the counted steps: the last
    assert profile.per_image(1) == 1130


def test_bound_and_fraction() -> None:
    assert bound_img_s(462e9, 790e12) == 790e12 / 462e9
    assert fraction_of_bound(171.0, 462e9, 790e12) == 171.0 / (790e12 / 462e9)


def test_extrapolated_decoder_steps_equal_counting_every_step(demo_model_dir: Path) -> None:
    from bench.offline import load

    loaded = load(demo_model_dir, device="cpu", verify_checksums=False)
    args = (loaded.model, loaded.processor, loaded.manifest.prompt)
    full = profile_model(*args, steps=40, counted_steps=None)
    cheap = profile_model(*args, steps=40)
    assert cheap == full


def test_bounds_are_reported_against_both_named_peaks() -> None:
    assert PEAKS == {"measured_matmul_790": 790e12, "spec_dense_bf16_989": 989e12}
