"""The paper's metrics on hand-computed examples: both denominators, empty tags, bad output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fashion_florence_client.schema import FashionAttributes
from model_store.data.dataset import Record, write_jsonl
from model_store.evaluation import evaluate_predictions
from model_store.evaluation.metrics import INVALID, OTHER, evaluate, parse_output, set_f1
from service.cli import main as cli_main

TARGETS = {
    "a": FashionAttributes(
        category="top", primary_color="red", material="cotton",
        style_tags=["casual"], occasion_tags=["everyday", "casual"],
    ),
    "b": FashionAttributes(
        category="dress", primary_color="black", material=None, style_tags=[], occasion_tags=[]
    ),
    "c": FashionAttributes(
        category="shoes", primary_color="white", material="leather",
        style_tags=["sporty", "casual"], occasion_tags=["everyday"],
    ),
    "d": FashionAttributes(
        category="layer", primary_color="navy", material="wool",
        style_tags=["classic"], occasion_tags=["work"],
    ),
}  # fmt: skip

OUTPUTS: dict[str, str | None] = {
    "a": TARGETS["a"].to_target_text(),  # perfect
    # right, in other case; null material and both tag sets empty (F1 1 each)
    "b": '{"category": "Dress", "primary_color": "BLACK", "material": null, '
    '"style_tags": [], "occasion_tags": []}',
    # out-of-schema colour (wrong), material in other case (right), partial tags
    "c": '{"category": "shoes", "primary_color": "off-white", "material": "Leather", '
    '"style_tags": ["sporty"], "occasion_tags": ["everyday", "party"]}',
    "d": "not json",
    "zzz": TARGETS["a"].to_target_text(),  # an id the test set does not have
}


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return evaluate(TARGETS, OUTPUTS)


def test_headline_metrics_over_all_items(report: dict[str, Any]) -> None:
    assert report["n"] == 4
    assert report["n_valid"] == 3
    assert report["valid_json_rate"] == 0.75
    assert report["schema_valid_rate"] == 0.25  # only "a" validates; "b" has capitals
    assert report["category_accuracy"] == 0.75  # a, b, c
    assert report["primary_color_accuracy"] == 0.5  # a, b
    assert report["material_accuracy"] == 0.75  # a, b (null), c
    f1_c = 2 / 3  # style: {sporty} vs {sporty, casual}; occasion: {everyday, party} vs {everyday}
    assert report["style_f1"] == pytest.approx((1 + 1 + f1_c + 0) / 4)
    assert report["occasion_f1"] == pytest.approx((1 + 1 + f1_c + 0) / 4)
    assert report["unexpected_predictions"] == 1
    assert report["missing_predictions"] == 0


def test_valid_only_denominator(report: dict[str, Any]) -> None:
    valid = report["valid_only"]
    assert valid["n"] == 3
    assert valid["category_accuracy"] == 1.0
    assert valid["primary_color_accuracy"] == pytest.approx(2 / 3)
    assert valid["material_accuracy"] == 1.0
    assert valid["style_f1"] == pytest.approx((2 + 2 / 3) / 3)


def test_per_class_and_confusion(report: dict[str, Any]) -> None:
    category = report["per_class"]["category"]
    assert category["top"] == {"precision": 1.0, "recall": 1.0, "support": 1, "predicted": 1}
    assert category["layer"] == {"precision": 0.0, "recall": 0.0, "support": 1, "predicted": 0}
    assert category["bottom"]["support"] == 0
    color = report["per_class"]["primary_color"]
    assert color["white"] == {"precision": 0.0, "recall": 0.0, "support": 1, "predicted": 0}
    assert report["per_class"]["material"]["null"]["support"] == 1
    confusion = report["confusion"]["primary_color"]
    columns, rows = confusion["predicted_labels"], confusion["true_labels"]
    assert columns[-2:] == [OTHER, INVALID]
    assert confusion["matrix"][rows.index("white")][columns.index(OTHER)] == 1
    assert confusion["matrix"][rows.index("navy")][columns.index(INVALID)] == 1
    assert sum(map(sum, confusion["matrix"])) == 4
    assert "material" not in report["confusion"]


@pytest.mark.parametrize(
    ("predicted", "truth", "f1"),
    [
        ([], [], 1.0),
        (["casual"], [], 0.0),
        ([], ["casual"], 0.0),
        (["Casual", "casual"], ["casual"], 1.0),  # case-insensitive, as a set
        (["a", "b"], ["b", "c"], 0.5),
        ("casual", ["casual"], 0.0),  # not a list
        (None, [], 0.0),  # missing key: wrong, not "empty"
    ],
)
def test_set_f1(predicted: object, truth: list[str], f1: float) -> None:
    assert set_f1(predicted, truth) == pytest.approx(f1)


def test_missing_keys_and_missing_outputs_are_wrong() -> None:
    target = TARGETS["b"]  # null material, empty tags
    report = evaluate({"b": target, "e": target}, {"b": '{"category": "dress"}'})
    assert report["missing_predictions"] == 1
    assert report["valid_json_rate"] == 0.5
    assert report["material_accuracy"] == 0.0  # a missing key never matches null
    assert report["style_f1"] == 0.0
    assert report["valid_only"]["category_accuracy"] == 1.0


@pytest.mark.parametrize("text", ["[]", '"top"', "{", "", "null"])
def test_only_a_json_object_is_valid(text: str) -> None:
    assert parse_output(text) is None


def test_cli_scores_external_predictions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    test = tmp_path / "test.jsonl"
    write_jsonl(test, [Record(id=k, image="x.png", target=v) for k, v in TARGETS.items()])
    predictions = tmp_path / "gpt.jsonl"
    predictions.write_text(
        "".join(json.dumps({"id": k, "output": v}) + "\n" for k, v in OUTPUTS.items()),
        encoding="utf-8",
    )
    out = tmp_path / "eval"
    code = cli_main(
        ["eval", "--test", str(test), "--predictions", str(predictions), "--out", str(out)]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["category_accuracy"] == 0.75
    saved = json.loads((out / "report.json").read_text(encoding="utf-8"))
    for key in ("n", "valid_json_rate", "category_accuracy", "primary_color_accuracy"):
        assert key in saved
        assert key in saved["valid_only"]
    assert saved["valid_only"]["n"] == 3
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert "| category accuracy | 0.750 (n=4) | 1.000 (n=3) |" in markdown
    for field in ("category", "primary_color"):
        assert (out / f"confusion_{field}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert evaluate_predictions(test, predictions, tmp_path / "again")["n"] == 4
