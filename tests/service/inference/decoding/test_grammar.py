"""The schema grammar: derived from the pydantic model, exactly the valid target texts."""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest
import xgrammar as xgr
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError

from fashion_florence_client.schema import (
    CATEGORIES,
    COLORS,
    FIELD_ORDER,
    MATERIALS,
    MAX_TAGS,
    OCCASION_TAGS,
    STYLE_TAGS,
    FashionAttributes,
    json_schema,
)
from service.inference.decoding.grammar import (
    GrammarError,
    SchemaGrammar,
    longest_output_bytes,
    schema_ebnf,
    schema_fields,
)


def ordered_subsets(vocabulary: tuple[str, ...]) -> st.SearchStrategy[list[str]]:
    indices = st.lists(st.integers(0, len(vocabulary) - 1), unique=True, max_size=MAX_TAGS)
    return indices.map(lambda picked: [vocabulary[i] for i in sorted(picked)])


ATTRIBUTES = st.builds(
    FashionAttributes,
    category=st.sampled_from(CATEGORIES),
    primary_color=st.sampled_from(COLORS),
    material=st.none() | st.sampled_from(MATERIALS),
    style_tags=ordered_subsets(STYLE_TAGS),
    occasion_tags=ordered_subsets(OCCASION_TAGS),
)


def accepts(grammar: SchemaGrammar, text: str) -> bool:
    matcher = xgr.GrammarMatcher(grammar.compiled)
    return bool(matcher.accept_string(text)) and bool(matcher.is_completed())


def test_fields_are_read_from_the_pydantic_schema() -> None:
    fields = schema_fields()
    assert tuple(f.name for f in fields) == FIELD_ORDER == tuple(FashionAttributes.model_fields)
    assert [f.values for f in fields] == [CATEGORIES, COLORS, MATERIALS, STYLE_TAGS, OCCASION_TAGS]
    assert [f.kind for f in fields] == ["choice", "choice", "choice", "tags", "tags"]
    assert [f.nullable for f in fields] == [False, False, True, False, False]
    assert [f.max_items for f in fields if f.kind == "tags"] == [MAX_TAGS, MAX_TAGS]


def test_a_schema_change_changes_the_grammar() -> None:
    class Narrower(FashionAttributes):
        category: Any = Field(json_schema_extra={"enum": ["top"], "type": "string"})

    ebnf = schema_ebnf(schema_fields(Narrower))
    assert '"\\"top\\""' in ebnf
    assert "bottom" not in ebnf


def test_unsupported_schemas_are_refused() -> None:
    class Counted(BaseModel):
        count: int

    class Unbounded(BaseModel):
        tags: list[str]

    with pytest.raises(GrammarError, match="string enumerations"):
        schema_fields(Counted)
    with pytest.raises(GrammarError, match="maxItems"):
        schema_fields(Unbounded)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(attributes=ATTRIBUTES)
def test_every_valid_target_is_accepted(
    demo_grammar: SchemaGrammar, attributes: FashionAttributes
) -> None:
    text = attributes.to_target_text()
    assert accepts(demo_grammar, text)
    assert len(text.encode()) <= longest_output_bytes(demo_grammar.fields)


@pytest.mark.parametrize(
    "text",
    [
        # The grammar writes the canonical target text only: no whitespace, fixed key order
        # (pydantic would accept both).
        '{"category": "top","primary_color":"red","material":null,"style_tags":[],"occasion_tags":[]}',
        '{"primary_color":"red","category":"top","material":null,"style_tags":[],"occasion_tags":[]}',
    ],
)
def test_only_the_canonical_text_is_accepted(demo_grammar: SchemaGrammar, text: str) -> None:
    attributes = FashionAttributes.from_model_text(text)
    assert accepts(demo_grammar, attributes.to_target_text())
    assert not accepts(demo_grammar, text)


@pytest.mark.parametrize(
    "text",
    [
        # tags out of schema order ("casual" comes after "classic")
        '{"category":"top","primary_color":"red","material":null,"style_tags":["casual","classic"],"occasion_tags":[]}',
        # a duplicate tag
        '{"category":"top","primary_color":"red","material":null,"style_tags":["classic","classic"],"occasion_tags":[]}',
        # five tags
        '{"category":"top","primary_color":"red","material":null,"style_tags":[],"occasion_tags":["everyday","casual","work","dinner","party"]}',
        # a value outside the enumeration
        '{"category":"hat","primary_color":"red","material":null,"style_tags":[],"occasion_tags":[]}',
        # a missing key, null where it is not allowed
        '{"category":"top","primary_color":"red","style_tags":[],"occasion_tags":[]}',
        '{"category":null,"primary_color":"red","material":null,"style_tags":[],"occasion_tags":[]}',
    ],
)
def test_off_schema_texts_are_rejected(demo_grammar: SchemaGrammar, text: str) -> None:
    with pytest.raises(ValidationError):
        FashionAttributes.from_model_text(text)
    assert not accepts(demo_grammar, text)


def test_longest_output_bound_is_tight(demo_grammar: SchemaGrammar) -> None:
    def longest(values: tuple[str, ...]) -> str:
        return max(values, key=len)

    def longest_tags(values: tuple[str, ...]) -> list[str]:
        picked = sorted(values, key=len, reverse=True)[:MAX_TAGS]
        return sorted(picked, key=values.index)

    widest = FashionAttributes(
        category=longest(CATEGORIES),  # type: ignore[arg-type]
        primary_color=longest(COLORS),  # type: ignore[arg-type]
        material=longest(MATERIALS),  # type: ignore[arg-type]
        style_tags=longest_tags(STYLE_TAGS),  # type: ignore[arg-type]
        occasion_tags=longest_tags(OCCASION_TAGS),  # type: ignore[arg-type]
    )
    text = widest.to_target_text()
    assert accepts(demo_grammar, text)
    assert len(text.encode()) == longest_output_bytes(demo_grammar.fields) == 214
    assert demo_grammar.max_output_tokens == 214
    assert demo_grammar.stop_token_ids == (2,)  # </s>


def test_json_schema_path_alone_would_not_be_enough(demo_grammar: SchemaGrammar) -> None:
    """Why the grammar is ordered EBNF: xgrammar's JSON-schema path ignores uniqueItems
    (and cannot express schema order), so random walks through it produce invalid tags."""
    schema = json_schema()
    for name in ("style_tags", "occasion_tags"):
        schema["properties"][name]["uniqueItems"] = True
    compiler = xgr.GrammarCompiler(demo_grammar.tokenizer_info, cache_enabled=False)
    compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
    bitmask = xgr.allocate_token_bitmask(1, demo_grammar.vocab_size)
    vocab = demo_grammar.tokenizer_info.decoded_vocab
    rng = random.Random(0)
    invalid = 0
    for _ in range(60):
        matcher = xgr.GrammarMatcher(compiled)
        text = b""
        while True:
            matcher.fill_next_token_bitmask(bitmask)
            bits = np.unpackbits(bitmask[0].numpy().view(np.uint8), bitorder="little")
            token = rng.choice(np.flatnonzero(bits[: demo_grammar.vocab_size]).tolist())
            assert matcher.accept_token(token)
            if matcher.is_terminated():
                break
            text += vocab[token]
        try:
            FashionAttributes.from_model_text(text.decode())
        except ValidationError:
            invalid += 1
    assert invalid > 0
