"""Write an evaluation: ``report.json``, ``report.md`` and confusion-matrix PNGs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

HEADLINE: Final = (
    ("valid_json_rate", "valid JSON rate", None),
    ("category_accuracy", "category accuracy", "category"),
    ("primary_color_accuracy", "primary-colour accuracy", "primary_color"),
    ("material_accuracy", "material accuracy", "material"),
    ("style_f1", "style F1", "style_tags"),
    ("occasion_f1", "occasion F1", "occasion_tags"),
)


def confusion_png(confusion: dict[str, Any], title: str, path: Path) -> None:
    """A row-normalised heat map with counts; rows are the truth."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt
    import numpy as np

    matrix = np.asarray(confusion["matrix"], dtype=float)
    rows, columns = confusion["true_labels"], confusion["predicted_labels"]
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure, axes = plt.subplots(figsize=(1.0 + 0.55 * len(columns), 1.0 + 0.5 * len(rows)))
    axes.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    axes.set_xticks(range(len(columns)), columns, rotation=60, ha="right")
    axes.set_yticks(range(len(rows)), rows)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            colour = "white" if share[row, column] > 0.5 else "black"
            axes.text(
                column, row, str(int(count)), ha="center", va="center", fontsize=7, color=colour
            )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _table(report: dict[str, Any]) -> list[str]:
    """The headline metrics over both denominators."""
    lines = ["| metric | all items | valid outputs only |", "|---|---|---|"]
    valid = report["valid_only"]
    lines.append(f"| n | {report['n']} | {valid['n']} |")
    for key, label, field in HEADLINE:
        if field is None:
            lines.append(f"| {label} | {report[key]:.3f} (n={report['n']}) | 1.000 |")
            continue
        n_all, n_valid = report["denominators"][field], valid["denominators"][field]
        if not n_all:
            lines.append(f"| {label} | no labels (n=0) | no labels (n=0) |")
            continue
        lines.append(
            f"| {label} | {report[key]:.3f} (n={n_all}) | {valid[key]:.3f} (n={n_valid}) |"
        )
    return lines


def _runs(report: dict[str, Any]) -> list[str]:
    """Which run is the headline, what each run means, and the other runs' tables."""
    figures: dict[str, str] = report.get("figures", {})
    if not figures:
        return []
    headline = report.get("headline")
    lines = ["", "Figures:"]
    lines += [
        f"- **{name}**{' (the tables above)' if name == headline else ''}: {meaning}"
        for name, meaning in figures.items()
    ]
    for name in figures:
        if name != headline and name in report:
            lines += ["", f"## {name}", "", *_table(report[name])]
            lines.append(f"\nSchema-valid rate: {report[name]['schema_valid_rate']:.3f}.")
    return lines


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Evaluation: {report.get('system', 'predictions')}", ""]
    lines.append(f"Test set: `{report.get('test', '?')}`, {report['n']} items.")
    headline = report.get("headline")
    if headline:
        lines.append(f"Headline: **{headline}** ({report['figures'][headline]}).")
    lines += ["", *_table(report)]
    lines += [
        "",
        f"Schema-valid rate: {report['schema_valid_rate']:.3f}. Missing predictions: "
        f"{report['missing_predictions']}; predictions for ids not in the test set: "
        f"{report['unexpected_predictions']}.",
        "",
        "An invalid or missing output counts as wrong on every field (F1 0) under *all "
        "items*; *valid outputs only* is the paper's denominator. Each field is scored "
        "over the items labelled for it (n in brackets); partial labels leave the rest out.",
    ]
    for field, table in report["per_class"].items():
        lines += [
            "",
            f"## {field}{f' ({headline})' if headline else ''}",
            "",
            "| class | precision | recall | support |",
            "|---|---|---|---|",
        ]
        for label, row in table.items():
            if row["support"] or row["predicted"]:
                lines.append(
                    f"| {label} | {row['precision']:.3f} | {row['recall']:.3f} | {row['support']} |"
                )
        if field in report["confusion"]:
            lines += ["", f"![{field} confusion](confusion_{field}.png)"]
    lines += _runs(report)
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "report.json", out_dir / "report.md"]
    written[0].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    written[1].write_text(markdown(report), encoding="utf-8")
    for field, confusion in report["confusion"].items():
        path = out_dir / f"confusion_{field}.png"
        confusion_png(confusion, f"{field} ({report.get('system', '')})", path)
        written.append(path)
    return written
