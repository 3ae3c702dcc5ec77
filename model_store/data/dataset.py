"""The JSONL dataset format shared by ``data build``, ``train`` and ``eval``.

One line per image: ``{"id", "image", "target", "item_id", "sha256", "unknown", "weak"}``.
``id`` is unique within a build (predictions are matched on it); ``item_id`` is the garment
it shows (the split unit: several photos of one item share it); ``sha256`` is the image
content, used by the leak checks. ``image`` is a path, absolute or relative to the JSONL
file's folder.

Partial labels: ``unknown`` lists the fields nobody labelled, and those keys are absent
from ``target`` in the file. Unknown is neither ``null`` (for ``material``, null means "no
material") nor a default: training puts no loss on an unknown field's tokens and
evaluation scores a field only over the items that have it. In memory the target keeps
its full shape (the decoder is fed a complete JSON text while it is taught the known
fields) with :data:`PLACEHOLDERS` in the unknown fields; only code that checks
:meth:`Record.known` may read a field. ``weak`` lists known fields whose labels a rule
produced from the pixels (``model_store.data.weak_color``) rather than a person.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from fashion_florence_client.schema import FIELD_ORDER, FashionAttributes

SPLITS: Final = ("train", "val", "test")
REPORT_NAME: Final = "report.json"
Field = Literal["category", "primary_color", "material", "style_tags", "occasion_tags"]
#: What an unknown field holds in memory: decoder context only, never a label.
PLACEHOLDERS: Final[dict[str, object]] = {
    "category": "top",
    "primary_color": "unknown",
    "material": None,
    "style_tags": [],
    "occasion_tags": [],
}


class DataError(Exception):
    """Input data that cannot be used; the message names the file and what is wrong."""


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    image: str
    target: FashionAttributes
    item_id: str | None = None
    sha256: str | None = None
    unknown: tuple[Field, ...] = ()
    weak: tuple[Field, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _fill_unknown(cls, data: Any) -> Any:
        """A file's target lacks its unknown keys; fill them (and refuse a contradiction)."""
        if not isinstance(data, dict) or not data.get("unknown"):
            return data
        target = data.get("target")
        if isinstance(target, dict):
            clash = [f for f in data["unknown"] if f in target and target[f] != PLACEHOLDERS.get(f)]
            if clash:
                raise ValueError(f"fields {clash} are both labelled and marked unknown")
            filled = {f: PLACEHOLDERS[f] for f in data["unknown"] if f in PLACEHOLDERS}
            data = {**data, "target": {**filled, **target}}
        return data

    @model_validator(mode="after")
    def _check_fields(self) -> Record:
        unknown, weak = set(self.unknown), set(self.weak)
        if len(unknown) != len(self.unknown) or len(weak) != len(self.weak):
            raise ValueError("unknown and weak list each field once")
        if unknown & weak:
            raise ValueError(f"fields {sorted(unknown & weak)} are both unknown and weak")
        if unknown == set(FIELD_ORDER):
            raise ValueError("every field is unknown: the record teaches nothing")
        return self

    @property
    def group(self) -> str:
        """The unit that must not cross splits."""
        return self.item_id if self.item_id is not None else self.id

    def known(self, field: str) -> bool:
        return field not in self.unknown

    @property
    def label_key(self) -> str:
        """What two records of one image must agree on (their known labels)."""
        target = self.target.model_dump(mode="json")
        return json.dumps({f: target[f] for f in FIELD_ORDER if self.known(f)}, sort_keys=True)

    def to_line(self) -> dict[str, Any]:
        """The JSONL form: optional keys left out, unknown fields absent from the target."""
        line = self.model_dump(mode="json")
        for key in ("item_id", "sha256"):  # optional keys; a null material must stay
            if line[key] is None:
                del line[key]
        for key in ("unknown", "weak"):
            if not line[key]:
                del line[key]
        for field in self.unknown:
            del line["target"][field]
        return line


def write_jsonl(path: Path, records: Iterable[Record]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.to_line(), ensure_ascii=False) + "\n")
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
            labels = record.label_key if record.unknown else record.target.to_target_text()
            line: list[object] = [split, record.id, record.sha256, labels]
            if record.weak:  # a fully labelled build keeps the version it always had
                line.append(list(record.weak))
            digest.update(json.dumps(line).encode() + b"\n")
    return digest.hexdigest()[:16]


def read_report(directory: Path) -> dict[str, object]:
    """A build's ``report.json`` ({} for a hand-made data directory without one)."""
    path = directory / REPORT_NAME
    if not path.is_file():
        return {}
    report: dict[str, object] = json.loads(path.read_text(encoding="utf-8"))
    return report
