"""Deterministic train/val/test assignment by item-id hash, de-duplication and leak checks.

An item's split depends only on its id and the split seed, so adding or removing other
rows never moves it, and a rebuild reproduces the split exactly. Identical images (same
content hash) are collapsed before splitting: the same photo under two item ids is how a
split leaks, and a random row split (the reference) leaks both ways.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from model_store.data.dataset import SPLITS, DataError, Record


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_path(path: Path) -> str:
    return sha256_bytes(path.read_bytes())


def assign_split(group: str, *, val_ratio: float, test_ratio: float, seed: int = 0) -> str:
    """``train`` / ``val`` / ``test`` from a uniform draw keyed on ``(seed, group)``."""
    if not (val_ratio >= 0 and test_ratio >= 0 and val_ratio + test_ratio < 1):
        raise DataError(f"bad split ratios val={val_ratio} test={test_ratio}")
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    draw = int.from_bytes(digest[:8], "big") / 2**64
    if draw < test_ratio:
        return "test"
    if draw < test_ratio + val_ratio:
        return "val"
    return "train"


@dataclass(slots=True)
class Deduplicated:
    kept: list[Record]
    dropped: dict[str, list[Record]] = field(default_factory=dict)  # reason -> records


def deduplicate(records: Sequence[Record]) -> Deduplicated:
    """One record per image content; identical images with different labels are dropped.

    Same image, same target: keep the smallest id (``duplicate_image`` for the rest). Same
    image, different targets: the labels contradict each other, so none is trusted
    (``conflicting_duplicate``).
    """
    by_hash: dict[str | None, list[Record]] = defaultdict(list)
    for record in records:
        if record.sha256 is None:
            raise DataError(f"record {record.id} has no content hash")
        by_hash[record.sha256].append(record)
    result = Deduplicated(kept=[])
    for group in by_hash.values():
        group.sort(key=lambda r: r.id)
        if len({r.label_key for r in group}) > 1:
            result.dropped.setdefault("conflicting_duplicate", []).extend(group)
            continue
        result.kept.append(group[0])
        if len(group) > 1:
            result.dropped.setdefault("duplicate_image", []).extend(group[1:])
    result.kept.sort(key=lambda r: r.id)
    return result


def split_records(
    records: Sequence[Record], *, val_ratio: float, test_ratio: float, seed: int = 0
) -> dict[str, list[Record]]:
    splits: dict[str, list[Record]] = {name: [] for name in SPLITS}
    for record in records:
        name = assign_split(record.group, val_ratio=val_ratio, test_ratio=test_ratio, seed=seed)
        splits[name].append(record)
    for members in splits.values():
        members.sort(key=lambda r: r.id)
    return splits


@dataclass(frozen=True, slots=True)
class Leaks:
    """Item ids and image hashes found in more than one split (split names per key)."""

    ids: dict[str, list[str]]
    hashes: dict[str, list[str]]

    def __bool__(self) -> bool:
        return bool(self.ids or self.hashes)

    def summary(self) -> str:
        return (
            f"{len(self.ids)} item id(s) and {len(self.hashes)} image(s) cross splits; "
            f"e.g. ids {sorted(self.ids)[:3]}, hashes {[h[:12] for h in sorted(self.hashes)][:3]}"
        )


def find_leaks(splits: Mapping[str, Sequence[Record]]) -> Leaks:
    """Check any split (ours or someone else's): hashes missing from records are computed."""
    id_splits: dict[str, set[str]] = defaultdict(set)
    hash_splits: dict[str, set[str]] = defaultdict(set)
    for name, records in splits.items():
        for record in records:
            id_splits[record.group].add(name)
            digest = record.sha256 or sha256_path(Path(record.image))
            hash_splits[digest].add(name)
    return Leaks(
        ids={key: sorted(names) for key, names in id_splits.items() if len(names) > 1},
        hashes={key: sorted(names) for key, names in hash_splits.items() if len(names) > 1},
    )
