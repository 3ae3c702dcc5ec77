"""Schema v1 as a grammar: derived from the pydantic model, compiled once per loaded model.

The grammar is generated from ``FashionAttributes``' JSON schema (enumerations, nullability,
``maxItems``), never typed by hand, so a schema change changes the grammar with it. It
accepts exactly the model's target text: compact JSON, keys in field order, each tag list
an *ordered* subset of its vocabulary. Ordering gives uniqueness by construction; xgrammar
enforces ``maxItems`` but ignores ``uniqueItems``, and an any-order unique grammar is
exponential in the list length (seconds to compile instead of milliseconds).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import xgrammar as xgr
from pydantic import BaseModel

from fashion_florence_client.schema import FashionAttributes
from model_store.profiles import PROJECT_PROFILE, OutputProfile

FieldKind = Literal["choice", "tags"]


class GrammarError(ValueError):
    """The schema uses a construct the grammar generator does not support."""


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One top-level field of the schema, as the grammar (and confidence) see it."""

    name: str
    kind: FieldKind
    values: tuple[str, ...]
    nullable: bool = False
    max_items: int = 0  # tags only


def _enum(node: dict[str, Any], where: str) -> tuple[str, ...]:
    values = node.get("enum")
    if node.get("type") != "string" or not values or not all(isinstance(v, str) for v in values):
        raise GrammarError(f"{where}: only string enumerations are supported, got {node}")
    if len(set(values)) != len(values):
        raise GrammarError(f"{where}: duplicate enumeration values")
    return tuple(values)


def schema_fields(model: type[BaseModel] = FashionAttributes) -> tuple[FieldSpec, ...]:
    """The fields in target-text order, read from the model's JSON schema."""
    schema = model.model_json_schema()
    properties: dict[str, Any] = schema["properties"]
    if set(schema.get("required", ())) != set(properties):
        raise GrammarError("every field must be required: the target text always has all keys")
    fields: list[FieldSpec] = []
    for name, node in properties.items():
        if node.get("type") == "array":
            max_items = node.get("maxItems")
            if not isinstance(max_items, int):
                raise GrammarError(f"{name}: tag lists need maxItems (outputs must be bounded)")
            fields.append(FieldSpec(name, "tags", _enum(node["items"], name), max_items=max_items))
        elif "anyOf" in node:
            options = node["anyOf"]
            enums = [o for o in options if o.get("type") != "null"]
            if len(options) != 2 or len(enums) != 1:
                raise GrammarError(f"{name}: only `Literal[...] | None` unions are supported")
            fields.append(FieldSpec(name, "choice", _enum(enums[0], name), nullable=True))
        else:
            fields.append(FieldSpec(name, "choice", _enum(node, name)))
    return tuple(fields)


def profile_fields(
    profile: OutputProfile, model: type[BaseModel] = FashionAttributes
) -> tuple[FieldSpec, ...]:
    """The fields a model with ``profile`` writes, in its order, tags in its tag order.

    A sorted-order profile lists each tag vocabulary alphabetically, so the ordered-subset
    rules accept exactly the sorted lists its model was trained on (and never force the
    schema's order on it); derived fields are not in the text at all.
    """
    by_name = {spec.name: spec for spec in schema_fields(model)}
    fields: list[FieldSpec] = []
    for name in profile.fields:
        spec = by_name[name]
        if spec.kind == "tags":
            spec = replace(spec, values=profile.tag_values(name))
        elif name == "material" and not profile.material_nullable:
            spec = replace(spec, nullable=False)
        fields.append(spec)
    return tuple(fields)


def json_text(value: str | None) -> str:
    """A value exactly as ``FashionAttributes.to_target_text`` writes it."""
    return json.dumps(value, ensure_ascii=False)


def _literal(text: str) -> str:
    """An EBNF string literal for ``text`` (quotes and backslashes escaped)."""
    if any(ord(c) < 0x20 for c in text):
        raise GrammarError(f"control characters are not supported in {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tag_rules(index: int, spec: FieldSpec) -> list[str]:
    """``f{index}_t{i}_{n}``: tag ``i`` written as the ``n``-th element, and what may follow
    it: the list's end, or (below ``max_items``) a comma and any *later* tag."""
    if spec.max_items == 0:
        return [f"f{index} ::= {_literal('[]')}"]
    count = len(spec.values)
    rules = [
        f"f{index} ::= {_literal('[')} ({_literal(']')} | "
        + " | ".join(f"f{index}_t{i}_1" for i in range(count))
        + ")"
    ]
    for i, value in enumerate(spec.values):
        for n in range(1, spec.max_items + 1):
            later = [f"f{index}_t{j}_{n + 1}" for j in range(i + 1, count)]
            tail = _literal("]")
            if n < spec.max_items and later:
                tail = f"({tail} | {_literal(',')} ({' | '.join(later)}))"
            rules.append(f"f{index}_t{i}_{n} ::= {_literal(json_text(value))} {tail}")
    return rules


def schema_ebnf(fields: Sequence[FieldSpec]) -> str:
    """The EBNF (xgrammar dialect) of the target text for ``fields``."""
    body: list[str] = []
    rules: list[str] = []
    for index, spec in enumerate(fields):
        separator = "{" if index == 0 else ","
        body.append(_literal(f"{separator}{json_text(spec.name)}:"))
        body.append(f"f{index}")
        if spec.kind == "choice":
            options = [json_text(v) for v in spec.values] + (["null"] if spec.nullable else [])
            rules.append(f"f{index} ::= " + " | ".join(_literal(o) for o in options))
        else:
            rules.extend(_tag_rules(index, spec))
    body.append(_literal("}"))
    return "\n".join([f"root ::= {' '.join(body)}", *rules]) + "\n"


def longest_output_bytes(fields: Sequence[FieldSpec]) -> int:
    """UTF-8 length of the longest text the grammar accepts."""

    def size(text: str | None) -> int:
        return len(json_text(text).encode())

    total = 1  # the closing brace; each field adds its own leading "{" or ","
    for spec in fields:
        total += 1 + size(spec.name) + 1
        if spec.kind == "choice":
            total += max([size(v) for v in spec.values] + ([4] if spec.nullable else []))
        else:
            # Any subset can be written in the list's order, so the longest list holds the
            # longest values; it costs brackets plus one comma between elements.
            longest = sorted((size(v) for v in spec.values), reverse=True)[: spec.max_items]
            total += 2 + sum(longest) + max(len(longest) - 1, 0)
    return total


@dataclass(frozen=True, slots=True)
class SchemaGrammar:
    """The compiled schema grammar for one tokenizer; build it once per loaded model."""

    fields: tuple[FieldSpec, ...]
    ebnf: str
    tokenizer_info: xgr.TokenizerInfo
    compiled: xgr.CompiledGrammar
    vocab_size: int
    stop_token_ids: tuple[int, ...]
    #: Every byte can be its own token, so the longest output costs one token per byte.
    max_output_tokens: int
    compile_ms: float
    #: The text the grammar accepts is this profile's (parsing and confidence follow it).
    profile: OutputProfile = PROJECT_PROFILE


def compile_schema_grammar(
    tokenizer: Any,
    vocab_size: int,
    *,
    model: type[BaseModel] = FashionAttributes,
    profile: OutputProfile = PROJECT_PROFILE,
) -> SchemaGrammar:
    """Compile the grammar of ``profile``'s text against ``tokenizer`` (a transformers
    tokenizer).

    ``vocab_size`` is the model's logit width, which may exceed the tokenizer's length
    (padded embedding tables); the extra ids are never allowed.
    """
    started = time.perf_counter()
    fields = profile_fields(profile, model)
    ebnf = schema_ebnf(fields)
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
    compiled = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False).compile_grammar(ebnf)
    if not info.stop_token_ids:
        raise GrammarError("the tokenizer has no end-of-sequence token to stop on")
    return SchemaGrammar(
        fields=fields,
        ebnf=ebnf,
        tokenizer_info=info,
        compiled=compiled,
        vocab_size=vocab_size,
        stop_token_ids=tuple(info.stop_token_ids),
        max_output_tokens=longest_output_bytes(fields),
        compile_ms=(time.perf_counter() - started) * 1000.0,
        profile=profile,
    )
