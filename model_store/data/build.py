"""``data build``: source items -> collapsed, de-duplicated, split JSONL plus a report.

Every input row ends up either in exactly one split or counted under exactly one drop
reason; label reasons are decided first (``rules.collapse``), then image reasons
(``missing_image``, then ``duplicate_image`` / ``conflicting_duplicate``). The report
also counts kept rows per class and split, and per-label drops, so a user can see what
the rules did to their data before training on it.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from model_store.data.dataset import (
    REPORT_NAME,
    SPLITS,
    DataError,
    Record,
    data_version,
    write_jsonl,
)
from model_store.data.rules import CollapseRules, collapse, load_rules
from model_store.data.sources import SourceItem
from model_store.data.split import deduplicate, find_leaks, sha256_bytes, sha256_path, split_records


@dataclass(frozen=True, slots=True)
class SplitConfig:
    val_ratio: float = 0.1
    test_ratio: float = 0.1
    seed: int = 0


def _store_embedded(item: SourceItem, images_dir: Path) -> Path:
    """Write a table-embedded image to ``images_dir`` under its content hash."""
    assert item.image_bytes is not None
    digest = sha256_bytes(item.image_bytes)
    try:
        with Image.open(io.BytesIO(item.image_bytes)) as image:
            suffix = "." + (image.format or "bin").lower().replace("jpeg", "jpg")
    except OSError:
        suffix = ".bin"
    path = images_dir / f"{digest}{suffix}"
    if not path.exists():
        images_dir.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.image_bytes)
    return path


UNKNOWN_KEY = "(unknown)"  # a class-count key: items without that field's label
WEAK_KEY = "(weak)"  # items whose label for the field is a rule's (counted in the classes too)


def class_counts(records: Iterable[Record]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for record in records:
        target = record.target
        for field in record.unknown:
            counts[field][UNKNOWN_KEY] += 1
        for field in record.weak:
            counts[field][WEAK_KEY] += 1
        if record.known("category"):
            counts["category"][target.category] += 1
        if record.known("primary_color"):
            counts["primary_color"][target.primary_color] += 1
        if record.known("material"):
            counts["material"][target.material or "null"] += 1
        if record.known("style_tags"):
            counts["style_tags"].update(target.style_tags)
        if record.known("occasion_tags"):
            counts["occasion_tags"].update(target.occasion_tags)
    return {field: dict(sorted(c.items())) for field, c in sorted(counts.items())}


def unique_ids(records: list[Record]) -> list[Record]:
    """Several photos of one item get ``<item>#<n>`` ids (ordered by content hash)."""
    by_item: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        by_item[record.group].append(record)
    out = []
    for item_id, group in by_item.items():
        group.sort(key=lambda r: r.sha256 or "")
        if len(group) == 1:
            out.append(group[0].model_copy(update={"id": item_id}))
        else:
            out.extend(r.model_copy(update={"id": f"{item_id}#{n}"}) for n, r in enumerate(group))
    return out


def build_dataset(
    items: Iterable[SourceItem],
    out_dir: Path,
    *,
    source: dict[str, Any],
    split: SplitConfig | None = None,
    rules: CollapseRules | None = None,
) -> dict[str, Any]:
    """Collapse, de-duplicate and split ``items`` into ``out_dir``; returns the report."""
    rules = rules or load_rules()
    split = split or SplitConfig()
    dropped: Counter[str] = Counter()
    dropped_labels: dict[str, Counter[str]] = defaultdict(Counter)
    warnings: Counter[str] = Counter()
    candidates: list[Record] = []
    n_input = 0
    for item in items:
        n_input += 1
        warnings.update(item.warnings)
        outcome = collapse(item.labels, rules)
        warnings.update(outcome.warnings)
        if outcome.attributes is None:
            assert outcome.drop_reason is not None
            dropped[outcome.drop_reason] += 1
            dropped_labels[outcome.drop_reason].update(outcome.drop_labels or ["(none)"])
            continue
        if item.image_bytes is not None:
            path: Path | None = _store_embedded(item, out_dir / "images")
        else:
            path = item.image_path
        if path is None:
            dropped["missing_image"] += 1
            continue
        digest = sha256_path(path)
        candidates.append(
            Record(
                id=item.item_id,
                image=str(path.resolve()),
                target=outcome.attributes,
                item_id=item.item_id,
                sha256=digest,
            )
        )
    if n_input == 0:
        raise DataError("the source has no rows")
    deduplicated = deduplicate(candidates)
    for reason, records in deduplicated.dropped.items():
        dropped[reason] += len(records)
    splits = split_records(
        unique_ids(deduplicated.kept),
        val_ratio=split.val_ratio,
        test_ratio=split.test_ratio,
        seed=split.seed,
    )
    extra = {
        "dropped_by_label": {
            reason: dict(counter.most_common())
            for reason, counter in sorted(dropped_labels.items())
        },
        "warnings": dict(sorted(warnings.items())),
    }
    return write_build(
        splits,
        out_dir,
        rules_version=rules.version_tag,
        source=source,
        split={"val_ratio": split.val_ratio, "test_ratio": split.test_ratio, "seed": split.seed},
        n_input=n_input,
        dropped=dropped,
        extra=extra,
    )


def _relative_images(records: list[Record], out_dir: Path) -> list[Record]:
    """Image paths relative to the dataset's folder (``read_jsonl`` resolves them against
    it), so a dataset moved or copied together with its images keeps working."""
    base = out_dir.resolve()
    return [
        r.model_copy(update={"image": os.path.relpath(Path(r.image).resolve(), base)})
        for r in records
    ]


def write_build(
    splits: dict[str, list[Record]],
    out_dir: Path,
    *,
    rules_version: str,
    source: dict[str, Any],
    split: dict[str, Any],
    n_input: int,
    dropped: Counter[str],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Leak-check ``splits``, write them and ``report.json``; returns the report."""
    leaks = find_leaks(splits)
    if leaks:  # impossible by construction; a guard against future edits of the builders
        raise DataError(f"split leak: {leaks.summary()}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        write_jsonl(out_dir / f"{name}.jsonl", _relative_images(splits[name], out_dir))

    kept = {name: len(splits[name]) for name in SPLITS}
    report: dict[str, Any] = {
        "data_version": data_version(splits),
        "rules_version": rules_version,
        "source": source,
        "split": split,
        "n_input": n_input,
        "kept": {**kept, "total": sum(kept.values())},
        "dropped": {**dict(sorted(dropped.items())), "total": sum(dropped.values())},
        **(extra or {}),
        "kept_per_class": {name: class_counts(splits[name]) for name in SPLITS},
        "leaks": {"ids": 0, "hashes": 0},
    }
    assert report["kept"]["total"] + report["dropped"]["total"] == n_input
    (out_dir / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
