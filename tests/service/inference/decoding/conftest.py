"""Fixtures for the decoding tests: the demo model's tokenizer and its compiled grammar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from model_store.loading import LoadedModel, load_model
from service.inference.decoding.grammar import SchemaGrammar, compile_schema_grammar


@pytest.fixture(scope="session")
def demo_loaded(demo_model_dir: Path) -> LoadedModel:
    return load_model(str(demo_model_dir))


@pytest.fixture(scope="session")
def demo_tokenizer(demo_loaded: LoadedModel) -> Any:
    return demo_loaded.processor.tokenizer


@pytest.fixture(scope="session")
def demo_grammar(demo_loaded: LoadedModel) -> SchemaGrammar:
    model: Any = demo_loaded.model
    vocab_size = int(model.config.text_config.vocab_size)
    return compile_schema_grammar(demo_loaded.processor.tokenizer, vocab_size)
