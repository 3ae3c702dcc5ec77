"""bench.host_profile: every part of the jump-forward loop found and timed apart."""

from __future__ import annotations

from pathlib import Path

import pytest

import service.inference.decoding.jump_forward as jump_forward
from bench.host_profile import REST, markdown, profile
from service.inference.decoding.constrained import allowed_scores

pytestmark = pytest.mark.slow


def test_every_part_is_found_and_timed_apart(demo_model_dir: Path) -> None:
    parts = profile(demo_model_dir, batch=2, repeats=2)
    for label in (
        "plan (memo lookups; drafts of misses)",
        "block inputs (assembled, uploaded)",
        "masks or allowed ids (assembled, uploaded)",
        "scores (mask or gather, argmax, normalizer)",
        "commit (and matcher accepts, where done there)",
    ):
        assert len(parts[label]) == 2, label  # wrapped, and called in every decode
        assert all(value > 0 for value in parts[label]), label
    # Parts are disjoint (none is timed inside another), so they leave a remainder.
    assert all(value >= 0 for value in parts[REST])
    assert vars(jump_forward)["allowed_scores"] is allowed_scores  # unwrapped after the call
    assert markdown(parts).splitlines()[-1].startswith("| total |")
