"""Several built datasets as one: the demo trains on synthetic garments and real photos.

Each part keeps its own split (a part's test items stay test items), its ids and item ids
get the part's name as a prefix (``real:shirt/0a1b``), and the combined report keeps
each part's report under ``parts`` so every drop and weak label stays accounted for.
The leak check runs again over the whole: the same image in two parts' different splits
is refused.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from model_store.data.build import write_build
from model_store.data.dataset import SPLITS, DataError, Record, read_report, read_split


def _prefixed(record: Record, name: str) -> Record:
    return record.model_copy(
        update={"id": f"{name}:{record.id}", "item_id": f"{name}:{record.group}"}
    )


def combine_builds(parts: Mapping[str, Path], out_dir: Path) -> dict[str, Any]:
    """Write the union of ``parts`` (name -> built data directory) to ``out_dir``."""
    if not parts:
        raise DataError("nothing to combine")
    splits: dict[str, list[Record]] = {name: [] for name in SPLITS}
    reports: dict[str, Any] = {}
    dropped: Counter[str] = Counter()
    n_input = 0
    for name, directory in parts.items():
        if ":" in name:
            raise DataError(f"part name {name!r} may not contain ':'")
        report = read_report(directory)
        reports[name] = report
        rows = report.get("n_input")
        n_input += rows if isinstance(rows, int) else 0
        dropped_part = report.get("dropped", {})
        if isinstance(dropped_part, dict):
            dropped.update({k: int(v) for k, v in dropped_part.items() if k != "total"})
        for split in SPLITS:
            splits[split].extend(_prefixed(r, name) for r in read_split(directory, split))
    for members in splits.values():
        members.sort(key=lambda r: r.id)
    # Records keep their images where their part put them; write_build rewrites the paths.
    kept = sum(len(members) for members in splits.values())
    if kept + sum(dropped.values()) != n_input:
        n_input = kept + sum(dropped.values())  # a hand-made part without a full report
    return write_build(
        splits,
        out_dir,
        rules_version="+".join(f"{n}={reports[n].get('rules_version', '?')}" for n in parts),
        source={"format": "combined", "parts": {n: str(p) for n, p in parts.items()}},
        split={"per_part": True},
        n_input=n_input,
        dropped=dropped,
        extra={"parts": json.loads(json.dumps(reports))},
    )
