"""``data build --format folders``: one folder per class, the folder name the only label.

Layout: ``ROOT/<class>/<image>``, or, when the collection comes with its own split,
``ROOT/<split>/<class>/<image>`` with split folders among :data:`SPLIT_FOLDERS`. The
collection's own split is kept as it is (its authors checked it; re-splitting by hash
would mix their test photos into our training set); without one, images are split by
id hash like every other format.

A mapping file (JSON, ``{"<class folder>": "<schema category>"}``) says what each class
is; a class folder it does not name is an error, never silently dropped. Every other
field is **unknown** (``Record.unknown``), except the colour when ``weak_colors`` is on:
then :mod:`model_store.data.weak_color` labels it from the pixels, marked ``weak``, or
leaves it unknown where the rule abstains.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, get_args

from fashion_florence_client.schema import Category, Color, FashionAttributes
from model_store.data.build import SplitConfig, unique_ids, write_build
from model_store.data.dataset import SPLITS, DataError, Field, Record
from model_store.data.sources import IMAGE_SUFFIXES
from model_store.data.split import deduplicate, sha256_path, split_records
from model_store.data.weak_color import VERSION as WEAK_VERSION

#: Folder names of a collection's own split -> our split names.
SPLIT_FOLDERS: Final = {"train": "train", "validation": "val", "val": "val", "test": "test"}
FORMAT_VERSION: Final = "folders-v1"
_ALWAYS_UNKNOWN: Final[tuple[Field, ...]] = ("material", "style_tags", "occasion_tags")


def read_mapping(path: Path) -> dict[str, Category]:
    """Class folder -> schema category, checked against the schema."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable JSON mapping ({exc})") from exc
    if not isinstance(raw, dict) or not raw:
        raise DataError(f'{path}: expected a JSON object {{"<class folder>": "<category>"}}')
    categories = get_args(Category)
    wrong = {name: value for name, value in raw.items() if value not in categories}
    if wrong:
        raise DataError(f"{path}: not schema categories {wrong}; expected one of {categories}")
    return {str(name): value for name, value in raw.items()}


@dataclass(frozen=True, slots=True)
class FolderImage:
    split: str | None  # the collection's own split, when it has one
    label: str  # the class folder
    path: Path


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def scan_folders(root: Path) -> list[FolderImage]:
    if not root.is_dir():
        raise DataError(f"images folder {root} does not exist")
    children = sorted(p for p in root.iterdir() if p.is_dir())
    split_dirs = [p for p in children if p.name in SPLIT_FOLDERS]
    if split_dirs and len(split_dirs) != len(children):
        others = sorted(p.name for p in children if p.name not in SPLIT_FOLDERS)
        raise DataError(f"{root}: split folders mixed with class folders {others}")
    found: list[FolderImage] = []
    for split_dir in split_dirs or [root]:
        split = SPLIT_FOLDERS[split_dir.name] if split_dirs else None
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            found.extend(FolderImage(split, class_dir.name, p) for p in _images(class_dir))
    if not found:
        raise DataError(f"{root}: no images in class folders")
    return found


def _thinned(images: list[FolderImage], limit: int) -> list[FolderImage]:
    kept: list[FolderImage] = []
    for name in sorted({i.split or "" for i in images}):
        members = [i for i in images if (i.split or "") == name]
        step = max(1.0, len(members) / max(limit, 1))
        kept.extend(members[int(k * step)] for k in range(min(limit, len(members))))
    return kept


def folder_record(image: FolderImage, category: Category, *, weak_colors: bool) -> Record:
    """One photo: its category known, its colour weak or unknown, the rest unknown."""
    unknown: list[Field] = list(_ALWAYS_UNKNOWN)
    weak: tuple[Field, ...] = ()
    color: Color = "unknown"
    if weak_colors:
        from PIL import Image  # not evaluation's open_rgb: that module brings torch

        from model_store.data.weak_color import label_color

        with Image.open(image.path) as opened:
            answer = label_color(opened.convert("RGB"))
        if answer.color is not None:
            color, weak = answer.color, ("primary_color",)
    if not weak:
        unknown.insert(0, "primary_color")
    item = f"{image.label}/{image.path.stem}"
    target = FashionAttributes(
        category=category, primary_color=color, material=None, style_tags=[], occasion_tags=[]
    )  # the placeholders of the unknown fields (Record.PLACEHOLDERS)
    return Record(
        id=item,
        image=str(image.path.resolve()),
        target=target,
        item_id=item,
        sha256=sha256_path(image.path),
        unknown=tuple(unknown),
        weak=weak,
    )


def build_folder_dataset(
    root: Path,
    mapping: Mapping[str, Category],
    out_dir: Path,
    *,
    weak_colors: bool = True,
    split: SplitConfig | None = None,
    source: dict[str, Any] | None = None,
    limit_per_split: int | None = None,
) -> dict[str, Any]:
    """Build ``root``'s class folders into ``out_dir``; returns the report.

    ``limit_per_split`` keeps that many images of each source split, evenly spaced over
    the sorted listing (so every class keeps its share): quick recipes and tests.
    """
    split = split or SplitConfig()
    images = scan_folders(root)
    if limit_per_split is not None:
        images = _thinned(images, limit_per_split)
    unmapped = sorted({i.label for i in images} - set(mapping))
    if unmapped:
        raise DataError(f"{root}: class folders {unmapped} are not in the mapping")
    records = [folder_record(i, mapping[i.label], weak_colors=weak_colors) for i in images]
    own_split = {r.id: i.split for r, i in zip(records, images, strict=True)}
    deduplicated = deduplicate(records)
    dropped: Counter[str] = Counter()
    for reason, members in deduplicated.dropped.items():
        dropped[reason] += len(members)
    kept = unique_ids(deduplicated.kept)
    if images[0].split is None:
        splits = split_records(
            kept, val_ratio=split.val_ratio, test_ratio=split.test_ratio, seed=split.seed
        )
        split_info: dict[str, Any] = {"val_ratio": split.val_ratio, "test_ratio": split.test_ratio, "seed": split.seed}  # fmt: skip
    else:
        splits = {name: [] for name in SPLITS}
        for record in kept:
            name = own_split[record.group]
            assert name is not None  # every image came from a split folder
            splits[name].append(record)
        split_info = {"source_split": True}
    weak_total = sum(1 for r in kept if r.weak)
    extra = {
        "weak_labels": {
            "labeller": WEAK_VERSION if weak_colors else None,
            "primary_color_weak": weak_total,
            "primary_color_unknown": len(kept) - weak_total,
        },
        "mapping": dict(sorted(mapping.items())),
    }
    return write_build(
        splits,
        out_dir,
        rules_version=FORMAT_VERSION,
        source={"format": "folders", "root": str(root), **(source or {})},
        split=split_info,
        n_input=len(images),
        dropped=dropped,
        extra=extra,
    )
