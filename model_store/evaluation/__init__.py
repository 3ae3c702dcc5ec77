"""``fashion-florence eval``: the paper's metrics on raw outputs, reports and figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from model_store.data.dataset import Record, read_jsonl
from model_store.evaluation.metrics import evaluate
from model_store.evaluation.predict import (
    open_rgb,
    predict_records,
    read_predictions,
    write_predictions,
)
from model_store.evaluation.report import write_report


def evaluate_predictions(
    test: Path, predictions: Path, out_dir: Path, *, system: str | None = None
) -> dict[str, Any]:
    """Score an external predictions JSONL (``{"id", "output"}``) on a test JSONL."""
    records = read_jsonl(test)
    report = evaluate(
        {r.id: r.target for r in records},
        read_predictions(predictions),
        {r.id: r.unknown for r in records},
    )
    report.update(system=system or predictions.name, test=str(test))
    write_report(report, out_dir)
    return report


def evaluate_model(
    test: Path,
    model_path: str,
    out_dir: Path,
    *,
    batch_size: int = 32,
    max_new_tokens: int = 96,
    device: str = "cpu",
    limit: int | None = None,
) -> dict[str, Any]:
    """Run a model on a test JSONL, keep its raw outputs, and score them."""
    from model_store.loading import load_model

    records: list[Record] = read_jsonl(test)[:limit]
    loaded = load_model(model_path, device=device)
    outputs = predict_records(
        loaded.model,
        loaded.processor,
        loaded.manifest.prompt,
        records,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
    )
    write_predictions(out_dir / "predictions.jsonl", outputs)
    report = evaluate(
        {r.id: r.target for r in records}, dict(outputs), {r.id: r.unknown for r in records}
    )
    report.update(system=loaded.manifest.name, test=str(test), model=model_path)
    write_report(report, out_dir)
    return report


def evaluate_choices(
    test: Path,
    model_path: str,
    *,
    batch_size: int = 32,
    device: str = "cpu",
    limit: int | None = None,
) -> dict[str, Any]:
    """Category and primary colour as constrained decoding answers them
    (:mod:`model_store.evaluation.choice`), each over the items labelled for it."""
    from model_store.evaluation.choice import CHOICES, choose_values
    from model_store.loading import load_model

    records: list[Record] = read_jsonl(test)[:limit]
    loaded = load_model(model_path, device=device)
    outputs: dict[str, str | None] = {}
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        images = [open_rgb(record.image) for record in chunk]
        chosen = choose_values(loaded.model, loaded.processor, loaded.manifest.prompt, images)
        outputs.update((r.id, json.dumps(values)) for r, values in zip(chunk, chosen, strict=True))
    report = evaluate(
        {r.id: r.target for r in records}, outputs, {r.id: r.unknown for r in records}
    )
    fields = tuple(CHOICES)
    return {
        "n": report["n"],
        **{f"{field}_accuracy": report[f"{field}_accuracy"] for field in fields},
        "denominators": {field: report["denominators"][field] for field in fields},
        "confusion_category": report["confusion"]["category"],
    }
