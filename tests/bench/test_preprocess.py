"""bench.preprocess on a handful of images: positive figures for every row it reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.preprocess import CPU_STEP, CUDA_STEP, preprocessing_per_core, report


def test_preprocessing_per_core_reports_positive_figures() -> None:
    rows = preprocessing_per_core(
        photos=4, synthetic=1, sizes=(128,), passes=1, cuda_path=True, synthetic_px=(1024, 768)
    )
    # (real photos, synthetic) x one size x (CPU path, CUDA path)
    assert [(r["images"].split()[0], r["size"], r["step"]) for r in rows] == [
        ("clothing-small", 128, CPU_STEP),
        ("clothing-small", 128, CUDA_STEP),
        ("synthetic", 128, CPU_STEP),
        ("synthetic", 128, CUDA_STEP),
    ]
    assert all(r["count"] > 0 and r["img_s"] > 0 and r["img_s_wall"] > 0 for r in rows)
    assert "| clothing-small (4 photos) | 128 |" in report(rows)


def test_missing_photos_skip_their_rows_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = preprocessing_per_core(
        photos=2, synthetic=1, sizes=(128,), passes=1, photo_dir=tmp_path, synthetic_px=(640, 480)
    )
    assert [(r["images"].split()[0], r["step"]) for r in rows] == [("synthetic", CPU_STEP)]
    assert "real-photo rows are skipped" in capsys.readouterr().out
