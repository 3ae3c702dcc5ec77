"""bench.offline: the batch-size sweep on the tiny demo model, its bounds, and the knee."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from PIL import Image

from bench.load import payloads
from bench.offline import (
    ALL_MODES,
    engines_for,
    knee,
    load,
    markdown_table,
    offline_sweep,
    prepare_images,
    sweep_engines,
)
from service.backend import DeviceOutOfMemoryError, ItemOutcome, ModelInfo
from service.inference.decoding.decoders import DecodingMode
from service.inference.engine import FlorenceEngine

pytestmark = pytest.mark.slow


def test_sweep_reports_every_mode_and_batch_size(demo_model_dir: Path) -> None:
    rows = offline_sweep(
        demo_model_dir,
        payloads(3, size=64),
        batch_sizes=(1, 2),
        modes=ALL_MODES,
        device="cpu",
        images_per_point=2,
        # The image count ends each point; the budget only bounds a stuck one. A tight
        # budget made "complete" depend on the machine's load (it failed once at 5 s).
        time_budget_s=120.0,
    )
    assert [(r["mode"], r["batch_size"]) for r in rows] == [
        (m.value, b) for b in (1, 2) for m in ALL_MODES
    ]
    for row in rows:
        assert row["images"] >= 2
        assert row["complete"]
        assert row["img_s"] > 0
        assert row["wall_s"] > 0
        assert row["tokens_per_image"] >= 1
        assert row["forward_passes_per_image"] >= 1
        assert row["peak_device_memory_bytes"] is None  # CPU: no device allocator to ask
    jump = next(r for r in rows if r["mode"] == "jump-forward")
    constrained = next(r for r in rows if r["mode"] == "constrained")
    # Same tokens (the tests of service.inference.decoding hold it to that), fewer decoder passes.
    assert jump["tokens_per_image"] == constrained["tokens_per_image"]
    assert jump["forward_passes_per_image"] < constrained["forward_passes_per_image"]
    table = markdown_table(rows)
    assert table.count("\n") == len(rows) + 1
    assert "| jump-forward | 2 |" in table


def test_exact_plain_length_and_time_budget(demo_model_dir: Path) -> None:
    loaded = load(demo_model_dir, device="cpu")
    engines = engines_for(loaded, [DecodingMode.PLAIN], max_new_tokens=12, plain_exact_tokens=True)
    pictures: list[Image.Image] = [Image.new("RGB", (64, 64), "red")]
    prepared = prepare_images(engines[DecodingMode.PLAIN], pictures)
    (row,) = sweep_engines(
        engines, prepared, batch_sizes=[2], images_per_point=10_000, time_budget_s=0.0
    )
    # A spent budget still measures one batch, and says the point is incomplete.
    assert row["images"] == 2
    assert row["batches"] == 1
    assert not row["complete"]
    assert row["forward_passes_per_image"] == 12  # </s> suppressed until 12 tokens
    # The shared model keeps its own config: constrained engines must still stop freely.
    assert loaded.model.generation_config.min_new_tokens in (None, 0)


class OutOfMemoryAbove:
    """Stands in for the engine: runs out of memory above ``limit`` images."""

    info = ModelInfo("fake", "0", "cpu", "float32", 8)

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def run_batch(self, images: Sequence[Any]) -> list[ItemOutcome]:
        if len(images) > self.limit:
            raise DeviceOutOfMemoryError(f"{len(images)} > {self.limit}")
        return [ItemOutcome("{}", 3) for _ in images]


def test_oom_skips_larger_batches_and_spent_sweep_budget_skips_points() -> None:
    engines = {DecodingMode.PLAIN: cast(FlorenceEngine, OutOfMemoryAbove(2))}
    rows = sweep_engines(
        engines, [0], batch_sizes=[4, 1, 2, 8], images_per_point=2, time_budget_s=1
    )
    assert [r["batch_size"] for r in rows] == [1, 2, 4, 8]
    assert [r["oom"] for r in rows] == [False, False, True, False]
    assert rows[3]["skipped"] == "larger batch ran out of memory"
    assert rows[1]["forward_passes_per_image"] is None  # no decoder to count
    skipped = sweep_engines(
        engines, [0], batch_sizes=[1], images_per_point=2, time_budget_s=1, sweep_budget_s=0
    )
    assert skipped[0]["skipped"] == "sweep time budget spent"
    assert skipped[0]["img_s"] is None


def _row(mode: str, batch: int, img_s: float | None) -> dict[str, Any]:
    return {"mode": mode, "batch_size": batch, "img_s": img_s}


def test_knee_is_the_smallest_batch_within_ninety_percent_of_the_best() -> None:
    rows = [
        _row("plain", 1, 10.0),
        _row("plain", 8, 60.0),
        _row("plain", 16, 91.0),
        _row("plain", 32, 100.0),
        _row("plain", 64, 95.0),
        _row("jump-forward", 1, 50.0),
        _row("jump-forward", 4, 49.0),
        _row("jump-forward", 8, None),  # out of memory
    ]
    assert knee(rows) == {"plain": 16, "jump-forward": 1}
    assert knee(rows, fraction=0.95) == {"plain": 32, "jump-forward": 1}
    assert knee([]) == {}
