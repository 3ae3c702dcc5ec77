"""The one error an import raises: the message lists what was wrong (keys, shapes, files)."""

from __future__ import annotations


class CheckpointImportError(Exception):
    """The source cannot be imported faithfully; nothing was written to the output."""
