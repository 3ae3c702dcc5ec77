"""Converting an original-layout state dict to the native one, with strict accounting.

Every source key is mapped or dropped for a stated reason; every native key must be
produced; shapes must agree. Anything else fails the import with the list of keys, since
a checkpoint that is "mostly" loaded is a model that silently answers wrong.
"""

from __future__ import annotations

from collections.abc import Mapping as MappingABC
from dataclasses import dataclass, field

import torch

from model_store.importing.errors import CheckpointImportError
from model_store.importing.keys import TIED_EMBEDDINGS, map_key

NATIVE_SHARED = "model.language_model.shared.weight"
#: Native keys that are the tied embedding table (``save_pretrained`` keeps one of them).
NATIVE_TIED = (
    NATIVE_SHARED,
    "model.language_model.encoder.embed_tokens.weight",
    "model.language_model.decoder.embed_tokens.weight",
    "lm_head.weight",
)
LISTED_KEYS = 20  # an error names this many keys, then counts the rest


@dataclass(slots=True)
class Accounting:
    """Where every source key went: for the manifest and for the tests."""

    mapped: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)  # key -> reason


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:LISTED_KEYS])
    return shown + (f" (+{len(keys) - LISTED_KEYS} more)" if len(keys) > LISTED_KEYS else "")


def _embedding_table(source: MappingABC[str, torch.Tensor], accounting: Accounting) -> torch.Tensor:
    present = [k for k in TIED_EMBEDDINGS if k in source]
    if not present:
        raise CheckpointImportError(f"missing key: none of the tied embeddings {TIED_EMBEDDINGS}")
    table = source[present[0]]
    for key in present[1:]:
        if source[key].shape != table.shape or not torch.equal(source[key], table):
            raise CheckpointImportError(
                f"{key} should be a tied copy of {present[0]} but differs; the native model "
                "ties them, so one of the two would be lost"
            )
    accounting.mapped[present[0]] = NATIVE_SHARED
    for key in present[1:]:
        accounting.dropped[key] = f"tied copy of {present[0]} (checked equal)"
    return table


def grow_rows(table: torch.Tensor, rows: int) -> torch.Tensor:
    """The embedding table with rows appended for tokens the original lacks (``<image>``
    and padding): the mean of the existing rows, as transformers' resizing does, so that
    the new tokens' logits are ordinary rather than extreme."""
    if rows < table.shape[0]:
        raise CheckpointImportError(f"embedding table has {table.shape[0]} rows, above {rows}")
    if rows == table.shape[0]:
        return table
    extra = (
        table.float().mean(dim=0, keepdim=True).to(table.dtype).expand(rows - table.shape[0], -1)
    )
    return torch.cat([table, extra], dim=0)


def _check_bias(source: MappingABC[str, torch.Tensor], key: str) -> str:
    bias = source[key]
    if bool(torch.count_nonzero(bias)):
        raise CheckpointImportError(
            f"{key} is non-zero (max |b| = {bias.abs().max().item():.3g}) and the native model "
            "has no output bias to fold it into; importing would change the logits"
        )
    return "all zero: BART's output bias buffer, which the native model does not have"


def convert_state_dict(
    source: MappingABC[str, torch.Tensor],
    expected: MappingABC[str, torch.Size],
    source_vocab: int,
) -> tuple[dict[str, torch.Tensor], Accounting]:
    """The native state dict for ``source``; ``expected`` is the native model's key -> shape,
    ``source_vocab`` the embedding rows the source's configuration declares."""
    accounting = Accounting()
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key in sorted(source):
        mapping = map_key(key)
        if mapping is None:
            unknown.append(key)
        elif mapping.action in {"copy", "transpose"}:
            assert mapping.target is not None
            tensor = source[key]
            converted[mapping.target] = tensor.t() if mapping.action == "transpose" else tensor
            accounting.mapped[key] = mapping.target
        elif mapping.action == "bias":
            accounting.dropped[key] = _check_bias(source, key)
        elif mapping.action == "drop":
            accounting.dropped[key] = mapping.reason
    if unknown:
        raise CheckpointImportError(f"unexpected keys no rule maps: {_listing(unknown)}")
    table = _embedding_table(source, accounting)
    if table.shape[0] != source_vocab:
        raise CheckpointImportError(
            f"shape mismatch: the embedding table has {table.shape[0]} rows, the configuration "
            f"declares vocab_size {source_vocab}"
        )
    table = grow_rows(table, expected[NATIVE_SHARED][0])
    for key in NATIVE_TIED:
        converted[key] = table
    strays = sorted(set(converted) - set(expected))
    if strays:
        raise CheckpointImportError(
            f"unexpected keys (the configuration has no such layer): {_listing(strays)}"
        )
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise CheckpointImportError(f"missing keys: {_listing(missing)}")
    wrong = [
        f"{k} {tuple(converted[k].shape)} != {tuple(shape)}"
        for k, shape in expected.items()
        if converted[k].shape != shape
    ]
    if wrong:
        raise CheckpointImportError(f"shape mismatch: {_listing(wrong)}")
    return {k: v.contiguous() for k, v in converted.items()}, accounting
