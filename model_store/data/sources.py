"""Read iMaterialist in its two public shapes into one item stream.

(a) ``imat-json``: the FGVC5 challenge files, ``{"images": [{"imageId", "url"}],
    "annotations": [{"imageId", "labelId": [...]}]}`` plus ``label_map_228.csv``
    (``labelId,taskId,labelName,taskName``); images are ``<imageId>.<ext>`` in a folder.
(b) ``table``: the string-column table of the paper's code (CSV or parquet) with columns
    ``category, color, material, style, pattern, neckline, sleeve, gender, item_ID`` and
    ``image``: a path relative to the images folder, or (parquet) the image bytes.

Neither reader decides anything about labels: that is :mod:`model_store.data.rules`.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from model_store.data.dataset import DataError
from model_store.data.rules import CollapseRules, parse_labels

IMAGE_SUFFIXES: Final = (".jpg", ".jpeg", ".png", ".webp")
TABLE_GROUPS: Final = ("category", "color", "material", "style", "pattern", "neckline", "sleeve")
TABLE_COLUMNS: Final = (*TABLE_GROUPS, "gender", "item_ID", "image")


@dataclass(slots=True)
class SourceItem:
    item_id: str
    labels: dict[str, list[str]]
    image_path: Path | None = None  # None: no file found for this item
    image_bytes: bytes | None = None  # an image embedded in the table (parquet)
    warnings: list[str] = field(default_factory=list)


def _image_index(images_dir: Path) -> dict[str, Path]:
    """File stem -> path for every image in the folder (one scan, not a stat per item)."""
    if not images_dir.is_dir():
        raise DataError(f"images folder {images_dir} does not exist")
    index: dict[str, Path] = {}
    with os.scandir(images_dir) as entries:
        for entry in entries:
            path = Path(entry.path)
            if entry.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                index.setdefault(path.stem, path)
    return index


def read_label_map(path: Path) -> dict[str, tuple[str, str]]:
    """``labelId`` -> (label name, group) from ``label_map_228.csv``."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        return {row["labelId"].strip(): (row["labelName"], row["taskName"]) for row in rows}
    except (OSError, KeyError) as exc:
        raise DataError(f"{path} is not a label map (labelId,taskId,labelName,taskName)") from exc


def read_imat_json(
    annotations: Path, label_map: Path, images_dir: Path, rules: CollapseRules
) -> Iterator[SourceItem]:
    """Items of the challenge format, in file order."""
    labels_by_id = read_label_map(label_map)
    unknown_names = sorted({name for name, _ in labels_by_id.values()} - set(rules.group_of()))
    if unknown_names:
        raise DataError(f"{label_map} has labels the rules do not know: {unknown_names[:5]}")
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
        rows: list[dict[str, Any]] = data["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{annotations} is not an iMaterialist annotations file") from exc
    index = _image_index(images_dir)
    for row in rows:
        item_id = str(row["imageId"])
        item = SourceItem(item_id=item_id, labels={}, image_path=index.get(item_id))
        for label_id in row.get("labelId", []):
            name_group = labels_by_id.get(str(label_id).strip())
            if name_group is None:
                item.warnings.append("unknown_label_id")
                continue
            name, group = name_group
            item.labels.setdefault(group, []).append(name)
        yield item


def _rows(table: Path) -> Iterator[Mapping[str, Any]]:
    suffix = table.suffix.lower()
    if suffix == ".csv":
        with table.open(encoding="utf-8", newline="") as handle:
            yield from csv.DictReader(handle)
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:  # an optional dependency of the service image
            raise DataError("reading parquet needs pyarrow: pip install pyarrow") from exc
        for batch in pq.ParquetFile(table).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
    else:
        raise DataError(f"{table}: the table must be .csv or .parquet")


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return ""
    return str(value).strip()


def read_table(table: Path, images_dir: Path, rules: CollapseRules) -> Iterator[SourceItem]:
    """Items of the string-column table, in row order."""
    if not table.is_file():
        raise DataError(f"table {table} does not exist")
    columns: dict[str, str] | None = None
    for number, row in enumerate(_rows(table), start=1):
        if columns is None:  # column names are matched case-insensitively, once
            by_lower = {str(name).lower(): str(name) for name in row}
            missing = [c for c in ("category", "item_ID", "image") if c.lower() not in by_lower]
            if missing:
                raise DataError(f"{table} lacks column(s) {missing}; has {sorted(row)}")
            columns = {c: by_lower[c.lower()] for c in TABLE_COLUMNS if c.lower() in by_lower}
        item_id = _text(row[columns["item_ID"]])
        if not item_id:
            raise DataError(f"{table} row {number}: empty item_ID")
        item = SourceItem(item_id=item_id, labels={})
        for group in TABLE_GROUPS:
            text = _text(row[columns[group]]) if group in columns else ""
            if not text:
                continue
            found, unknown = parse_labels(text, rules.labels[group])
            if group == "category" and not found:
                found = [text]  # kept whole, so the drop report names the string
            elif unknown:
                item.warnings.append(f"unknown_{group}_label")
            item.labels[group] = found
        image = row[columns["image"]]
        if isinstance(image, dict):  # parquet image structs: {"bytes": ..., "path": ...}
            image = image.get("bytes") or image.get("path")
        if isinstance(image, bytes | bytearray):
            item.image_bytes = bytes(image)
        elif _text(image):
            path = images_dir / _text(image)
            item.image_path = path if path.is_file() else None
        yield item
