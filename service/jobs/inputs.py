"""What a batch job runs over: ``(id, source)`` pairs from paths, folders, URLs and tables.

Paths, folders, URLs and ``--from-file`` lists expand exactly as in the HTTP catalogue job
(:func:`fashion_florence_client.catalogue.expand_inputs`): the id is the absolute path or
the URL, so a rerun from another directory still matches. A table (``.csv``, ``.jsonl``,
``.parquet``) has an ``id`` column and a ``path`` or ``url`` column (both may be present:
a row uses whichever it fills); relative paths are relative to the table's folder.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pyarrow as pa

from fashion_florence_client.catalogue import expand_inputs, read_list

TABLE_SUFFIXES: Final = frozenset({".csv", ".jsonl", ".parquet"})


class InputError(ValueError):
    """The inputs cannot be run as given; the message says why."""


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    source: str  # an absolute path or an http(s) URL


def is_table(argument: str) -> bool:
    return "://" not in argument and Path(argument).suffix.lower() in TABLE_SUFFIXES


def read_table(path: Path) -> pa.Table:
    # Every column as text: an id like 00123 must not become the number 123.
    if path.suffix.lower() == ".csv":
        import pyarrow.csv as pacsv

        with path.open(newline="", encoding="utf-8") as header:
            names = next(csv.reader(header), [])
        types = {name: pa.string() for name in names}
        options = pacsv.ConvertOptions(column_types=types, strings_can_be_null=True)
        return pacsv.read_csv(path, convert_options=options)
    if path.suffix.lower() == ".jsonl":
        import pyarrow.json as pajson

        return pajson.read_json(path)
    import pyarrow.parquet as pq

    return pq.read_table(path)


def _text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def table_items(path: Path) -> list[Item]:
    """The rows of one table, in order; raises InputError on a table that cannot be run."""
    try:
        table = read_table(path)
    except (OSError, UnicodeError, pa.ArrowInvalid) as exc:
        raise InputError(f"cannot read the table {path}: {exc}") from exc
    columns = set(table.column_names)
    if "id" not in columns or not columns & {"path", "url"}:
        raise InputError(f"{path}: a table needs an 'id' column and a 'path' or 'url' column")
    ids = table.column("id").to_pylist()
    paths = table.column("path").to_pylist() if "path" in columns else [None] * len(ids)
    urls = table.column("url").to_pylist() if "url" in columns else [None] * len(ids)
    items = []
    for row, (raw_id, raw_path, raw_url) in enumerate(zip(ids, paths, urls, strict=True), 2):
        item_id, file, url = _text(raw_id), _text(raw_path), _text(raw_url)
        if item_id is None or (file is None) == (url is None):
            raise InputError(f"{path} row {row}: needs an id and exactly one of path or url")
        source = url or str((path.parent / str(file)).expanduser().resolve())
        items.append(Item(item_id, source))
    return items


def _unique(items: Iterable[Item]) -> list[Item]:
    """First occurrence of each id; the same id with two sources is refused."""
    seen: dict[str, Item] = {}
    for item in items:
        first = seen.setdefault(item.id, item)
        if first.source != item.source:
            raise InputError(
                f"the id {item.id!r} names two sources: {first.source!r} and {item.source!r}"
            )
    return list(seen.values())


def collect_items(arguments: Sequence[str], from_file: Path | None = None) -> list[Item]:
    """Every item, duplicates dropped (first kept), in input order."""
    arguments = list(arguments)
    if from_file is not None:
        arguments += read_list(from_file)
    items: list[Item] = []
    for argument in arguments:
        if is_table(argument):
            items.extend(table_items(Path(argument).expanduser().resolve()))
        else:
            items.extend(Item(entry, entry) for entry in expand_inputs([argument]))
    return _unique(items)
