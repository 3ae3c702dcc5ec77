"""``fashion-florence eval --model`` scores what the service answers, through its engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.demo_accuracy import MAPPING
from bench.demo_accuracy import score as engine_score
from model_store.data.dataset import write_jsonl
from model_store.data.folders import folder_record, read_mapping, scan_folders
from service.cli import main as cli_main
from tests.conftest import REPO_ROOT, SHARED_DATA

DEMO = REPO_ROOT / "model_store" / "demo_model"
VALIDATION = SHARED_DATA / "clothing-small" / "validation"


def _validation_set(path: Path) -> int:
    """clothing-small's validation photos as a dataset (category known, colour unknown):
    what ``data build --format folders`` writes for its validation split, without the
    weak colour labeller's time."""
    mapping = read_mapping(MAPPING)
    records = [
        folder_record(image, mapping[image.label], weak_colors=False)
        for image in scan_folders(VALIDATION)
    ]
    return write_jsonl(path, records)


@pytest.mark.slow
def test_eval_of_the_shipped_demo_is_what_the_engine_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = _validation_set(tmp_path / "val.jsonl")
    args = ["eval", "--test", str(tmp_path / "val.jsonl"), "--model", str(DEMO)]
    assert cli_main([*args, "--out", str(tmp_path / "eval"), "--no-unconstrained"]) == 0
    printed = json.loads(capsys.readouterr().out)
    served = printed["served"]
    assert served["n"] == n == 341
    assert served["valid_json_rate"] == 1.0  # the grammar: every answer is one
    assert served["material_accuracy"] is None  # never labelled on photos: no figure
    assert served["denominators"]["material"] == 0
    # The same figure as the engine driven directly (python -m bench.demo_accuracy).
    direct = engine_score(str(DEMO), VALIDATION)
    assert served["category_accuracy"] == direct["category_accuracy"]
    assert served["category_accuracy"] >= 0.7
    answers = [
        json.loads(line)
        for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()
    ]
    categories = [json.loads(row["output"])["category"] for row in answers]
    right = sum(1 for row, category in zip(answers, categories, strict=True)
                if read_mapping(MAPPING)[row["id"].split("/")[0]] == category)  # fmt: skip
    assert right / n == served["category_accuracy"]


def test_a_bad_setting_fails_eval_before_any_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _validation_set(tmp_path / "val.jsonl")
    args = ["eval", "--test", str(tmp_path / "val.jsonl"), "--model", str(DEMO)]
    # Constrained decoding needs 216 tokens: the served run could not answer at all.
    assert cli_main([*args, "--out", str(tmp_path / "e"), "--max-new-tokens", "40"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAILED:")
    assert "216" in out
    assert not (tmp_path / "e").exists()
