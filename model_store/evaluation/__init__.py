"""``fashion-florence eval``: the paper's metrics on output text, reports and figures."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from model_store.data.dataset import Record, read_jsonl
from model_store.evaluation.metrics import evaluate, headline
from model_store.evaluation.predict import (
    generate_predictor,
    open_rgb,
    predict_with,
    read_predictions,
    write_predictions,
)
from model_store.evaluation.report import write_report
from model_store.predictors import RUN_MEANINGS, UNCONSTRAINED, PredictorFactory


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


def score_runs(
    records: Sequence[Record],
    runs: Mapping[str, PredictorFactory],
    *,
    batch_size: int = 32,
) -> dict[str, tuple[dict[str, str | None], dict[str, Any]]]:
    """Each run's outputs and scores on ``records``, one model loaded at a time."""
    targets = {r.id: r.target for r in records}
    unknown = {r.id: r.unknown for r in records}
    results = {}
    for name, factory in runs.items():
        outputs = predict_with(factory(), records, batch_size=batch_size)
        results[name] = (outputs, evaluate(targets, outputs, unknown))
    return results


def evaluate_model(
    test: Path,
    runs: Mapping[str, PredictorFactory],
    out_dir: Path,
    *,
    system: str,
    model: str,
    batch_size: int = 32,
    limit: int | None = None,
) -> dict[str, Any]:
    """Run a model on a test JSONL as each of ``runs`` decodes it, keep the outputs and score
    them. The first run is the headline (the report's top level); every other run's report
    sits beside it under its own name, and ``figures`` says what each run means."""
    records: list[Record] = read_jsonl(test)[:limit]
    results = score_runs(records, runs, batch_size=batch_size)
    headline, *others = results
    outputs, report = results[headline]
    write_predictions(out_dir / "predictions.jsonl", outputs)
    for name in others:
        write_predictions(out_dir / f"predictions-{name}.jsonl", results[name][0])
        report[name] = results[name][1]
    report.update(
        system=system,
        test=str(test),
        model=model,
        headline=headline,
        figures={name: RUN_MEANINGS.get(name, name) for name in results},
    )
    write_report(report, out_dir)
    return report


def evaluate_unconstrained(
    test: Path,
    model_path: str,
    out_dir: Path,
    *,
    batch_size: int = 32,
    max_new_tokens: int = 96,
    device: str = "cpu",
    limit: int | None = None,
) -> dict[str, Any]:
    """The model's own greedy text without the grammar (plain ``generate``), scored: the
    paper's figures, for code without the service (the demo build, its tests)."""
    runs = {UNCONSTRAINED: generate_predictor(model_path, device=device, max_new_tokens=max_new_tokens)}  # fmt: skip
    return evaluate_model(
        test, runs, out_dir, system=Path(model_path).name, model=model_path,
        batch_size=batch_size, limit=limit,
    )  # fmt: skip


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


def validation_metrics(
    records: Sequence[Record], runs: Mapping[str, PredictorFactory], *, batch_size: int = 32
) -> dict[str, object]:
    """``train``'s validation entries: ``val`` for the first run (what the service would
    answer), ``val_<name>`` for each other run, each its headline metrics."""
    results = score_runs(records, runs, batch_size=batch_size)
    first = next(iter(results))
    return {
        "val" if name == first else f"val_{name}": headline(report)
        for name, (_, report) in results.items()
    }
