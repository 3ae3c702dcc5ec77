"""A synthetic iMaterialist-shaped source: rendered garments plus a string-column table.

The synthetic set goes through ``data build --format table`` like real data, so the demo
model, the tests and the report exercise the same collapse, split and report code. Its
labels are exact: each row's strings describe what :func:`render_garment` drew.

A few rows are deliberately bad, so a build has something to drop: an excluded category
(every 50th row), the same photo again under a new item id (every 67th) and a row whose
image file is missing (every 101st).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Final

from fashion_florence_client.schema import Category, Color
from model_store.data.sources import TABLE_COLUMNS
from model_store.synthetic import CATEGORY_LABELS, GarmentSpec, render_garment, sample_spec

TABLE_NAME: Final = "table.csv"
IMAGES_DIR: Final = "images"
EXCLUDED_EVERY: Final = 50
DUPLICATE_EVERY: Final = 67
MISSING_EVERY: Final = 101


def spec_labels(spec: GarmentSpec) -> dict[str, list[str]]:
    """The iMaterialist labels (by group) that describe a rendered garment."""
    labels = {
        "category": [CATEGORY_LABELS[spec.category]],
        "color": [spec.color_label],
        "material": [spec.material],
    }
    if spec.asymmetric:
        labels["style"] = ["Asymmetric"]
    return labels


def _row(item_id: str, image: str, labels: dict[str, list[str]]) -> dict[str, str]:
    row = dict.fromkeys(TABLE_COLUMNS, "")
    for group, names in labels.items():
        row[group] = " ".join(names)
    row.update({"gender": "Neutral", "item_ID": item_id, "image": image})
    return row


def write_synthetic_source(
    out_dir: Path,
    *,
    n: int,
    seed: int = 0,
    size: int = 128,
    categories: tuple[Category, ...] | None = None,
    colors: tuple[Color, ...] | None = None,
    textured: bool = True,
    faulty_rows: bool = True,
) -> Path:
    """Render ``n`` rows into ``out_dir/images`` and write ``out_dir/table.csv``."""
    rng = random.Random(seed)
    images = out_dir / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    previous: dict[str, str] | None = None
    for index in range(n):
        item_id = f"syn{seed}-{index:06d}"
        spec = sample_spec(rng, categories=categories, colors=colors, textured=textured)
        labels = spec_labels(spec)
        name = f"{item_id}.png"
        if faulty_rows and index % DUPLICATE_EVERY == DUPLICATE_EVERY - 1 and previous:
            rows.append({**previous, "item_ID": item_id})  # same photo, new id
            continue
        if faulty_rows and index % MISSING_EVERY == MISSING_EVERY - 1:
            rows.append(_row(item_id, name, labels))  # the file is never written
            continue
        if faulty_rows and index % EXCLUDED_EVERY == EXCLUDED_EVERY - 1:
            labels["category"] = ["Swimsuits"]
        render_garment(spec, rng, size).save(images / name, compress_level=1)
        previous = _row(item_id, name, labels)
        rows.append(previous)
    table = out_dir / TABLE_NAME
    with table.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(TABLE_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return table
