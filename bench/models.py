"""The model every benchmark measures, unless given ``--model-dir``.

The demo model fine-tuned on the synthetic colour classes, so every image decodes a full,
valid ~30-token JSON as a real model would.
"""

from __future__ import annotations

from pathlib import Path

from model_store.build import build_model
from model_store.training.color_demo import train_color_demo


def prepare_model(work: Path) -> Path:
    """Build the demo model under ``work`` and fine-tune it; returns the trained directory."""
    build_model("demo", work / "demo")
    train_color_demo(work / "demo", work / "trained", steps=150)
    return work / "trained"
