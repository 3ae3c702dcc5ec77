"""The paper's metrics, scored from raw output text so any system is judged the same way.

* An output is *valid JSON* when it parses to a JSON object. Values outside the schema are
  scored as given: right only if equal to the target case-insensitively.
* category / primary_color / material: exact, case-insensitive accuracy. A null material
  target is matched by a JSON ``null`` only; a missing key is wrong, never "null".
* style_tags / occasion_tags: per-sample set F1; both empty = 1; a missing or non-list
  value is scored as wrong (F1 0), not as an empty set.
* Two denominators: ``all`` (every test item; an invalid or missing output is wrong on
  every field with F1 0) and ``valid_only`` (items with valid JSON, as the paper reports).
* Partial labels: a field is scored only over the items that have a label for it (``unknown``
  maps an id to its unlabelled fields); ``denominators`` says how many items each field's
  figure is over, in both views. Valid JSON is over every item: it needs no label.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError

from fashion_florence_client.schema import CATEGORIES, COLORS, MATERIALS, FashionAttributes

FIELDS: Final = ("category", "primary_color", "material")
TAG_FIELDS: Final = ("style_tags", "occasion_tags")
CLASS_LABELS: Final[dict[str, tuple[str, ...]]] = {
    "category": CATEGORIES,
    "primary_color": COLORS,
    "material": (*MATERIALS, "null"),
}
#: The figures a run's summary leads with (``train``'s validation, ``eval``'s output).
HEADLINE_METRICS: Final = (
    "n", "valid_json_rate", "category_accuracy", "primary_color_accuracy",
    "material_accuracy", "style_f1", "occasion_f1",
)  # fmt: skip
OTHER: Final = "(other)"  # a value outside the schema
INVALID: Final = "(invalid)"  # no valid JSON object (or no output at all)
_MISSING: Final = object()


def parse_output(text: str | None) -> dict[str, Any] | None:
    """The JSON object in ``text``, or None when it is not one."""
    if text is None:
        return None
    try:
        value = json.loads(text.strip())
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _norm(value: object) -> str | None:
    """Comparable form of a predicted scalar: lowercased text, None for JSON null."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip().lower()
    return json.dumps(value)  # numbers, lists...: never equal to a target string


def field_correct(output: Mapping[str, Any], field: str, target: FashionAttributes) -> bool:
    predicted = output.get(field, _MISSING)
    if predicted is _MISSING:
        return False
    truth = getattr(target, field)
    return _norm(predicted) == (None if truth is None else truth.lower())


def set_f1(predicted: object, truth: Sequence[str]) -> float:
    if not isinstance(predicted, list):
        return 0.0
    guess = {_norm(tag) for tag in predicted}
    gold = {tag.lower() for tag in truth}
    if not guess and not gold:
        return 1.0
    return 2 * len(guess & gold) / (len(guess) + len(gold))


def predicted_class(output: Mapping[str, Any] | None, field: str) -> str:
    """The column of the confusion matrix an output falls in."""
    if output is None:
        return INVALID
    value = output.get(field, _MISSING)
    if value is _MISSING:
        return OTHER
    normalized = _norm(value)
    label = "null" if normalized is None else normalized
    return label if label in CLASS_LABELS[field] else OTHER


@dataclass(frozen=True, slots=True)
class ItemScore:
    valid_json: bool
    schema_valid: bool
    correct: dict[str, bool]
    f1: dict[str, float]


def score_item(output_text: str | None, target: FashionAttributes) -> ItemScore:
    output = parse_output(output_text)
    if output is None:
        return ItemScore(False, False, dict.fromkeys(FIELDS, False), dict.fromkeys(TAG_FIELDS, 0.0))
    try:
        FashionAttributes.model_validate(output)
        schema_valid = True
    except ValidationError:
        schema_valid = False
    return ItemScore(
        True,
        schema_valid,
        {field: field_correct(output, field, target) for field in FIELDS},
        {field: set_f1(output.get(field), getattr(target, field)) for field in TAG_FIELDS},
    )


_NAMES: Final = {
    **{field: f"{field}_accuracy" for field in FIELDS},
    "style_tags": "style_f1",
    "occasion_tags": "occasion_f1",
}


def headline(report: Mapping[str, Any]) -> dict[str, Any]:
    """:data:`HEADLINE_METRICS` of a report, None for a field no item has a label for (a
    0.0 there would read as a model that is always wrong), with the denominators."""
    fields = {name: field for field, name in _NAMES.items()}
    counts = report["denominators"]
    out = {
        key: None if key in fields and not counts[fields[key]] else report[key]
        for key in HEADLINE_METRICS
    }
    return {**out, "denominators": counts}


def _summary(scores: Sequence[ItemScore], unknown: Sequence[Collection[str]]) -> dict[str, Any]:
    """Each field's mean over the items that have its label; ``denominators`` says how many."""
    summary: dict[str, Any] = {"n": len(scores)}
    denominators: dict[str, int] = {}
    for field, name in _NAMES.items():
        values = [
            float(s.correct[field]) if field in FIELDS else s.f1[field]
            for s, missing in zip(scores, unknown, strict=True)
            if field not in missing
        ]
        summary[name] = sum(values) / len(values) if values else 0.0
        denominators[field] = len(values)
    summary["denominators"] = denominators
    return summary


def _per_class(
    pairs: Sequence[tuple[str, str]], labels: Sequence[str]
) -> dict[str, dict[str, float | int]]:
    table: dict[str, dict[str, float | int]] = {}
    for label in labels:
        tp = sum(1 for truth, guess in pairs if truth == label and guess == label)
        predicted = sum(1 for _, guess in pairs if guess == label)
        support = sum(1 for truth, _ in pairs if truth == label)
        table[label] = {
            "precision": tp / predicted if predicted else 0.0,
            "recall": tp / support if support else 0.0,
            "support": support,
            "predicted": predicted,
        }
    return table


def _confusion(pairs: Sequence[tuple[str, str]], labels: Sequence[str]) -> dict[str, Any]:
    columns = [*labels, OTHER, INVALID]
    matrix = [[0] * len(columns) for _ in labels]
    for truth, guess in pairs:
        matrix[labels.index(truth)][columns.index(guess)] += 1
    return {"true_labels": list(labels), "predicted_labels": columns, "matrix": matrix}


def evaluate(
    targets: Mapping[str, FashionAttributes],
    outputs: Mapping[str, str | None],
    unknown: Mapping[str, Collection[str]] | None = None,
) -> dict[str, Any]:
    """Score raw ``outputs`` (id -> text; a missing id is an invalid output) on ``targets``.

    ``unknown``: id -> the fields that item has no label for (scored on the others only).
    """
    ids = sorted(targets)
    missing = {item: (unknown or {}).get(item, ()) for item in ids}
    scores = {item: score_item(outputs.get(item), targets[item]) for item in ids}
    valid_ids = [item for item in ids if scores[item].valid_json]
    valid = [scores[item] for item in valid_ids]
    n = len(ids)
    report: dict[str, Any] = {
        **_summary([scores[item] for item in ids], [missing[item] for item in ids]),
        "n_valid": len(valid),
        "valid_json_rate": len(valid) / n if n else 0.0,
        "schema_valid_rate": sum(s.schema_valid for s in valid) / n if n else 0.0,
        "missing_predictions": sum(1 for item in ids if outputs.get(item) is None),
        "unexpected_predictions": len(set(outputs) - set(targets)),
        "valid_only": {
            **_summary(valid, [missing[item] for item in valid_ids]),
            "valid_json_rate": 1.0 if valid else 0.0,
        },
        "per_class": {},
        "confusion": {},
    }
    for field, labels in CLASS_LABELS.items():
        pairs = []
        for item in ids:
            if field in missing[item]:
                continue
            truth = getattr(targets[item], field)
            pairs.append(("null" if truth is None else truth, predicted_class(
                parse_output(outputs.get(item)), field
            )))  # fmt: skip
        report["per_class"][field] = _per_class(pairs, labels)
        if field != "material":  # 35 x 37 is unreadable; per-class numbers cover it
            report["confusion"][field] = _confusion(pairs, labels)
    return report
