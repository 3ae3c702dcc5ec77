"""The docs' commands run as written, and README's example answer is the demo's.

A fenced ``sh`` block right after a ``<!-- docs-test ... -->`` comment in README.md or
docs/*.md is run, line by line, from a scratch folder laid out like a checkout (its
``model_store`` and ``../shared`` point at the real ones), with this checkout's code first
on the path. The comment may list ``replace "OLD" "NEW"`` pairs, separated by ``;``: each
OLD must occur in the block (so a replacement cannot outlive the text it bounds), and only
they shrink the run (fewer photos, fewer steps). Every command must exit 0.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT, SHARED_DATA

SCRIPT = REPO_ROOT / "scripts" / "example_answer.py"
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
MARKED = re.compile(r"<!-- docs-test(?::(?P<options>.*?))? -->\n```sh\n(?P<body>.*?)\n```", re.S)
EXAMPLE = re.compile(
    r"```sh\ncurl -F image=@(?P<photo>\S+) \\\n\s+localhost:8000/v1/extract\n```\n"
    r"```json\n(?P<answer>.*?)\n```",
    re.S,
)


def _replacements(options: str | None) -> list[tuple[str, str]]:
    pairs = []
    for part in (options or "").split(";"):
        words = shlex.split(part)
        if not words:
            continue
        assert words[0] == "replace", f"unknown docs-test option {part!r}"
        assert len(words) == 3, f"replace takes OLD and NEW: {part!r}"
        pairs.append((words[1], words[2]))
    return pairs


def _commands(body: str) -> list[str]:
    """Logical lines: backslash continuations joined, comments and blanks dropped."""
    joined = body.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]  # fmt: skip


def marked_blocks() -> list[tuple[str, list[str]]]:
    blocks = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for number, match in enumerate(MARKED.finditer(text), 1):
            body = match.group("body")
            for old, new in _replacements(match.group("options")):
                assert old in body, f"{doc.name}: replace {old!r} no longer matches the block"
                body = body.replace(old, new)
            blocks.append((f"{doc.name}#{number}", _commands(body)))
    return blocks


def _checkout_like(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A scratch folder where the docs' relative paths resolve, and the environment."""
    work = tmp_path / "checkout"
    work.mkdir()
    (work / "model_store").symlink_to(REPO_ROOT / "model_store")
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)
    env = {key: value for key, value in os.environ.items() if not key.startswith("FF_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "clients/python")])
    env["HF_HUB_OFFLINE"] = "1"
    return work, env


def test_the_cpu_recipe_is_marked() -> None:
    names = [name for name, _ in marked_blocks()]
    assert "model_pipeline.md#1" in names


@pytest.mark.slow
@pytest.mark.parametrize(("name", "commands"), marked_blocks(), ids=[n for n, _ in marked_blocks()])
def test_documented_commands_run_as_written(name: str, commands: list[str], tmp_path: Path) -> None:
    work, env = _checkout_like(tmp_path)
    started = time.perf_counter()
    for command in commands:
        done = subprocess.run(
            ["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, (
            f"{name}: {command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
    print(f"{name}: {len(commands)} commands in {time.perf_counter() - started:.1f}s")


def _normalized(answer: dict[str, Any]) -> dict[str, Any]:
    """What stays put between runs: the request id and timings do not, and confidences are
    compared to the 3 places the README shows."""
    confidence = {
        key: round(value, 3) if isinstance(value, float) else [round(v, 3) for v in value]
        for key, value in answer["confidence"].items()
    }
    return {
        "model": answer["model"],
        "attributes": answer["attributes"],
        "confidence": confidence,
        "keys": sorted(answer),
        "timing_keys": sorted(answer["timing_ms"]),
    }


@pytest.mark.slow
def test_the_readme_example_answer_is_what_the_demo_answers() -> None:
    match = EXAMPLE.search((REPO_ROOT / "README.md").read_text(encoding="utf-8"))
    assert match is not None, "README's curl example and its answer block are not found"
    photo = (REPO_ROOT / match.group("photo")).resolve()
    assert photo.is_file(), photo
    # In this process (the script's own function): a second interpreter would spend
    # seconds importing torch again.
    spec = importlib.util.spec_from_file_location("example_answer", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    produced = asyncio.run(script.answer(photo.read_bytes(), photo.name))
    shown = json.loads(match.group("answer"))
    assert _normalized(shown) == _normalized(produced)
