"""The Ray job's output: a directory of parquet files, one row per input item.

Rows (:data:`OUTPUT_SCHEMA`): ``id``, ``source``, ``model_name``, ``model_revision``, then
either ``attributes`` and ``confidence`` (the JSON objects the HTTP API answers, as JSON
text, so the columns do not change with the output schema) or ``error_code`` and
``error_detail`` (the API's problem code and detail).

Resuming reads the directory first (:func:`scan_output`). Ray's parquet writer writes
each file in place, so a job killed while a file was being written leaves that file
without its footer: such a file is unreadable, is deleted, and its items are simply
redone. A file that reads is complete, and its ids are skipped on the rerun; each run
writes new file names (Ray puts a fresh dataset id in them), so no id is ever written
twice. With ``retry_failed`` the failed rows are removed first (each file rewritten
without them, through a temporary file and a rename), so they are redone.

The directory may be a local path or any URI pyarrow's filesystems take (``s3://``,
``gs://``...): on a cluster every worker writes into it, so it must be shared. One job per
directory at a time: a second job would see the first one's open files as broken.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

OUTPUT_SCHEMA: Final = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("model_name", pa.string()),
        pa.field("model_revision", pa.string()),
        pa.field("attributes", pa.string()),  # JSON, as the API's "attributes"
        pa.field("confidence", pa.string()),  # JSON, as the API's "confidence"
        pa.field("error_code", pa.string()),
        pa.field("error_detail", pa.string()),
    ]
)
_SUFFIX: Final = ".parquet"
_TMP_SUFFIX: Final = ".rewriting"


def open_output(out: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and root path for ``out`` (a local path or a URI), created if absent."""
    if "://" in out:
        filesystem, root = pafs.FileSystem.from_uri(out)
    else:
        filesystem, root = pafs.LocalFileSystem(), str(Path(out).expanduser().resolve())
    filesystem.create_dir(root, recursive=True)
    return filesystem, root


@dataclass
class OutputState:
    """What the directory holds: for each id, whether it succeeded, and its error codes."""

    succeeded: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)  # id -> error code
    duplicates: Counter[str] = field(default_factory=Counter)  # id -> extra rows (a bug)
    removed_files: int = 0

    @property
    def ids(self) -> set[str]:
        return self.succeeded | set(self.failed)

    def add(self, item: str, error_code: str | None) -> None:
        if item in self.succeeded or item in self.failed:
            self.duplicates[item] += 1
        if error_code is None:
            self.succeeded.add(item)
        else:
            self.failed[item] = error_code


def _files(filesystem: pafs.FileSystem, root: str) -> list[pafs.FileInfo]:
    infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    return [info for info in infos if info.type == pafs.FileType.File]


def _read(filesystem: pafs.FileSystem, path: str) -> pa.Table | None:
    try:
        return pq.read_table(path, filesystem=filesystem, columns=["id", "error_code"])
    except (OSError, pa.ArrowInvalid) as exc:
        log.warning("removing %s, cut short by an interrupted run (%s)", path, exc)
        return None


def scan_output(out: str, *, retry_failed: bool = False) -> OutputState:
    """Read the ids already written, repairing what a killed run left (see the module)."""
    filesystem, root = open_output(out)
    state = OutputState()
    for info in _files(filesystem, root):
        if info.path.endswith(_TMP_SUFFIX):  # a rewrite killed before its rename
            filesystem.delete_file(info.path)
            continue
        if not info.path.endswith(_SUFFIX):
            continue
        table = _read(filesystem, info.path)
        if table is None:
            filesystem.delete_file(info.path)
            state.removed_files += 1
            continue
        if retry_failed and table.column("error_code").null_count < table.num_rows:
            table = _drop_failed(filesystem, info.path)
        for item, code in zip(
            table.column("id").to_pylist(), table.column("error_code").to_pylist(), strict=True
        ):
            state.add(item, code)
    return state


def _drop_failed(filesystem: pafs.FileSystem, path: str) -> pa.Table:
    """Rewrite ``path`` without its failed rows (or delete it if none is left)."""
    whole = pq.read_table(path, filesystem=filesystem)
    kept = whole.filter(whole.column("error_code").is_null())
    if kept.num_rows == 0:
        filesystem.delete_file(path)
    else:
        tmp = path + _TMP_SUFFIX
        with filesystem.open_output_stream(tmp) as sink:
            pq.write_table(kept, sink)
        filesystem.move(tmp, path)  # a rename on local disks: the old file or the new one
    return kept.select(["id", "error_code"])


def read_rows(out: str, ids: set[str] | None = None) -> list[dict[str, Any]]:
    """Every row in ``out`` (or those whose id is in ``ids``), for tests and reports."""
    filesystem, root = open_output(out)
    rows: list[dict[str, Any]] = []
    for info in _files(filesystem, root):
        if info.path.endswith(_SUFFIX):
            table = pq.read_table(info.path, filesystem=filesystem)
            rows.extend(r for r in table.to_pylist() if ids is None or r["id"] in ids)
    return rows
