"""The trained demo's report: each data part's validation and test split scored apart.

Real photos and synthetic garments are scored separately (a mixed figure would hide the
one that matters); every field only over the items labelled for it, with the
denominators. The weak colour labeller is measured against the synthetic garments'
exact colours. Written next to the model (``report.json``, ``report.md``; the
confusion-matrix PNGs in a sub-folder that is not shipped).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from model_store.data.dataset import read_split
from model_store.data.weak_color import agreement, label_color
from model_store.evaluation import evaluate_choices, evaluate_unconstrained
from model_store.evaluation.predict import open_rgb

REPORT_JSON: Final = "report.json"
REPORT_MD: Final = "report.md"
SCORED: Final = ("category", "primary_color", "material", "style_tags", "occasion_tags")
_KEYS: Final = {
    "category": "category_accuracy",
    "primary_color": "primary_color_accuracy",
    "material": "material_accuracy",
    "style_tags": "style_f1",
    "occasion_tags": "occasion_f1",
}


def weak_color_agreement(synthetic_data: Path) -> dict[str, Any]:
    """The weak labeller on the synthetic test garments, whose colours are exact."""
    records = read_split(synthetic_data, "test")
    return agreement(
        (r.target.primary_color, label_color(open_rgb(r.image)).color) for r in records
    )


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    keep = ("n", "valid_json_rate", *_KEYS.values(), "denominators")
    out = {key: report[key] for key in keep}
    out["confusion_category"] = report["confusion"]["category"]
    return out


def write_demo_report(
    model_dir: Path, parts: dict[str, Path], figures_dir: Path, build: dict[str, Any]
) -> dict[str, Any]:
    """Score ``model_dir`` on each part's val and test; write the report next to it."""
    scores: dict[str, Any] = {}
    served: dict[str, Any] = {}
    for name, data in parts.items():
        for split in ("val", "test"):
            items = data / f"{split}.jsonl"
            report = evaluate_unconstrained(items, str(model_dir), figures_dir / f"{name}-{split}")
            scores[f"{name}/{split}"] = _summary(report)
            served[f"{name}/{split}"] = evaluate_choices(items, str(model_dir))
    result = {
        "command": build.pop("command"),
        "build": build,
        "scores": scores,
        "served": served,
        "weak_color_agreement_synthetic_test": weak_color_agreement(parts["syn"]),
    }
    (model_dir / REPORT_JSON).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (model_dir / REPORT_MD).write_text(markdown(result), encoding="utf-8")
    return result


def record_human_colours(model_dir: Path, figures: dict[str, Any]) -> dict[str, Any]:
    """Add the served colour's accuracy against the human labels to the model's report.

    Measured through the real engine by ``python -m bench.demo_accuracy --record``; kept in
    the report so the shipped figures and the command that made them travel together.
    """
    result: dict[str, Any] = json.loads((model_dir / REPORT_JSON).read_text(encoding="utf-8"))
    result["human_colours"] = figures
    (model_dir / REPORT_JSON).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    (model_dir / REPORT_MD).write_text(markdown(result), encoding="utf-8")
    return result


def _human_lines(human: dict[str, Any]) -> list[str]:
    return [
        f"Colour against people: on the {human['photos_all']} real validation photos a person "
        "labelled (`model_store/data/validation_colours_human.csv`, any answer the person "
        f"accepted counts), the served colour is right for {human['accuracy_all']:.3f}; on "
        f"the {human['photos_report']} of the labels' report half (never used to tune the "
        f"weak rule) {human['accuracy_report']:.3f}. Measured through the real engine by "
        f"`{human['command']}`. The photos' training colours come from the weak rule "
        f"{human['weak_rule']}; human labels were used to choose, never to train.",
        "",
    ]


def _cell(score: dict[str, Any], field: str) -> str:
    n = score["denominators"][field]
    return "no labels" if n == 0 else f"{score[_KEYS[field]]:.3f} (n={n})"


def _confusion_lines(confusion: dict[str, Any], title: str) -> list[str]:
    columns = confusion["predicted_labels"]
    lines = ["", title, "", "| true \\ predicted | " + " | ".join(columns) + " |"]
    lines += ["|---|" + "---|" * len(columns)]
    for label, row in zip(confusion["true_labels"], confusion["matrix"], strict=True):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return lines


def _served_lines(served: dict[str, Any]) -> list[str]:
    lines = [
        "What the service answers (constrained decoding: the model chooses each field's "
        "value among the schema's; category and colour, chosen as "
        "`model_store.evaluation.choice` does, which for this vocabulary is exactly the "
        "engine's greedy choice). On the real photos the colour column is agreement with "
        "the weak pixel labeller, not accuracy.",
        "",
        "| split | category | primary_color |",
        "|---|---|---|",
    ]
    for name, score in served.items():
        cells = " | ".join(_cell(score, field) for field in ("category", "primary_color"))
        lines.append(f"| {name} | {cells} |")
    test = served.get("real/test")
    if test is not None:
        lines += _confusion_lines(
            test["confusion_category"], "Category on the real test photos, as served (rows: truth):"
        )
    return [*lines, ""]


def markdown(result: dict[str, Any]) -> str:
    scores = result["scores"]
    lines = ["# The trained demo model: evaluation", "", f"Built by `{result['command']}`.", ""]
    lines += _served_lines(result["served"])
    if "human_colours" in result:
        lines += _human_lines(result["human_colours"])
    lines += [
        "The model's own text, unconstrained greedy decoding (the service's constrained "
        "decoding makes every answer valid JSON). Each field is scored only over the items "
        "labelled for it (n); real photos carry a category only, so their material and "
        "tags are not scored, and their primary_color column is agreement with the weak "
        "pixel labeller's colours (the only colour labels they have), not accuracy. The "
        "photos' unknown fields are never taught, so the model's free text for them is "
        "rarely valid JSON: these rows are not what the service answers.",
        "",
        "| split | valid JSON | " + " | ".join(SCORED) + " |",
        "|---|---|" + "---|" * len(SCORED),
    ]
    for name, score in scores.items():
        cells = " | ".join(_cell(score, field) for field in SCORED)
        lines.append(f"| {name} | {score['valid_json_rate']:.3f} (n={score['n']}) | {cells} |")
    test = scores.get("real/test")
    if test is not None:
        lines += _confusion_lines(
            test["confusion_category"],
            "Category on the real test photos, unconstrained text (rows: truth):",
        )
    weak = result["weak_color_agreement_synthetic_test"]
    lines += [
        "",
        f"Weak colour labeller ({weak['labeller']}) on the synthetic test garments: it "
        f"answered {weak['answered']} of {weak['n']} (coverage {weak['coverage']:.3f}), "
        f"agreeing with the exact colour on {weak['accuracy_when_answered']:.3f} of those.",
        "",
        "Build: " + json.dumps(result["build"]["seconds"]) + " seconds per stage; "
        f"weights {result['build']['weights_bytes']} bytes.",
    ]
    return "\n".join(lines) + "\n"
