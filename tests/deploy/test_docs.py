"""docs/operations.md keeps up with the code: every setting (with its current default) and
every metric family the service exports is documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.settings import Settings
from tests.deploy.tools import REPO, offline_exposition

GUIDE = REPO / "docs" / "operations.md"


def _settings_table(text: str) -> dict[str, str]:
    rows = re.findall(r"^\| `(FF_[A-Z0-9_]+)` \| ([^|]+) \|", text, re.MULTILINE)
    return {name: default.strip().strip("`") for name, default in rows}


def _expected_default(name: str) -> str | None:
    field = Settings.model_fields[name]
    if field.default_factory is not None:
        return "unset"
    value = field.default
    if value is None or value == ():
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Path):
        return None  # home-relative: documented as ~/...
    return str(value)


def test_every_setting_is_documented_with_its_default() -> None:
    table = _settings_table(GUIDE.read_text())
    for name in Settings.model_fields:
        env = f"FF_{name.upper()}"
        assert env in table, f"{env} is missing from docs/operations.md's settings table"
        expected = _expected_default(name)
        if expected is not None:
            assert table[env] == expected, f"{env}: documented {table[env]!r}, code {expected!r}"
    assert not set(table) - {f"FF_{n.upper()}" for n in Settings.model_fields}


@pytest.mark.parametrize(
    "family",
    [
        f.name
        for f in text_string_to_metric_families(offline_exposition())
        if not f.name.endswith("_created")
    ],
)
def test_every_metric_family_is_documented(family: str) -> None:
    text = GUIDE.read_text()
    assert re.search(rf"`{family}(_total)?[{{`]", text), f"{family} is not in docs/operations.md"
