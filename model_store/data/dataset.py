"""The JSONL dataset format shared by ``data build``, ``train`` and ``eval``.

One line per image: ``{"id", "image", "target", "item_id", "sha256"}``. ``id`` is unique
within a build (predictions are matched on it); ``item_id`` is the garment it shows (the
split unit: several photos of one item share it); ``sha256`` is the image content, used by
the leak checks. ``image`` is a path, absolute or relative to the JSONL file's folder.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

from pydantic import BaseModel, ConfigDict

from fashion_florence_client.schema import FashionAttributes

SPLITS: Final = ("train", "val", "test")
REPORT_NAME: Final = "report.json"


class DataError(Exception):
    """Input data that cannot be used; the message names the file and what is wrong."""


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    image: str
    target: FashionAttributes
    item_id: str | None = None
    sha256: str | None = None

    @property
    def group(self) -> str:
        """The unit that must not cross splits."""
        return self.item_id if self.item_id is not None else self.id


def write_jsonl(path: Path, records: Iterable[Record]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            line = record.model_dump(mode="json")
            for key in ("item_id", "sha256"):  # optional keys; a null material must stay
                if line[key] is None:
                    del line[key]
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: Path) -> list[Record]:
    """Read a dataset file; relative image paths are resolved against its folder."""
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = Record.model_validate_json(line)
            except ValueError as exc:
                raise DataError(f"{path}:{number}: not a dataset line: {exc}") from exc
            image = Path(record.image)
            if not image.is_absolute():
                record = record.model_copy(update={"image": str(path.parent / image)})
            records.append(record)
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: ids are not unique")
    return records


def read_split(directory: Path, split: str) -> list[Record]:
    return read_jsonl(directory / f"{split}.jsonl")


def data_version(splits: Mapping[str, Sequence[Record]]) -> str:
    """A content fingerprint: ids, image hashes, targets and split membership.

    Independent of where the images live, so the same build on another machine (or after
    moving the folder) has the same version.
    """
    digest = hashlib.sha256()
    for split in sorted(splits):
        for record in sorted(splits[split], key=lambda r: r.id):
            line = [split, record.id, record.sha256, record.target.to_target_text()]
            digest.update(json.dumps(line).encode() + b"\n")
    return digest.hexdigest()[:16]


def read_report(directory: Path) -> dict[str, object]:
    """A build's ``report.json`` ({} for a hand-made data directory without one)."""
    path = directory / REPORT_NAME
    if not path.is_file():
        return {}
    report: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    return report
