"""The model pipeline's report: the demo model built from scratch and evaluated honestly.

    python -m bench.pipeline_report [--out DIR] [--photos DIR]

1. builds the trained demo model (``model build-trained-demo``), timing every stage;
2. the data-build counts on the synthetic set (kept / dropped per reason);
3. the demo model's ``eval`` report on the synthetic test split (JSON, Markdown, PNGs);
4. its category accuracy on the real photos of ``../shared/data/clothing-small`` (folder
   names mapped to the six categories; a model that has only seen drawn silhouettes is
   expected to do poorly here).

Writes ``DIR/summary.json`` (default ``bench/results/pipeline``, git-ignored); the figures
are quoted in docs/model_pipeline.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

import torch

from fashion_florence_client.schema import FashionAttributes
from model_store.data.dataset import Record
from model_store.demo import DemoRecipe, build_trained_demo
from model_store.evaluation import evaluate_model
from model_store.evaluation.metrics import parse_output
from model_store.evaluation.predict import predict_records
from model_store.loading import load_model
from model_store.training.loop import HEADLINE_METRICS

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "data" / "clothing-small" / "test"
#: clothing-small folder -> schema category (from ../shared/data/README.md).
FOLDER_CATEGORY: Final = {
    "longsleeve": "top", "shirt": "top", "t-shirt": "top",
    "pants": "bottom", "shorts": "bottom", "skirt": "bottom",
    "outwear": "layer", "hat": "accessory", "dress": "dress", "shoes": "shoes",
}  # fmt: skip


def real_photo_accuracy(model_dir: Path, photos: Path) -> dict[str, Any]:
    """Category accuracy on labelled real photos (only the category is known for them)."""
    paths = sorted(photos.glob("*/*.jpg"))
    records = [
        Record(
            id=f"{path.parent.name}/{path.name}",
            image=str(path),
            target=FashionAttributes(
                category=FOLDER_CATEGORY[path.parent.name],  # type: ignore[arg-type]
                primary_color="unknown",
                material=None,
                style_tags=[],
                occasion_tags=[],
            ),
        )
        for path in paths
    ]
    loaded = load_model(str(model_dir))
    outputs = predict_records(loaded.model, loaded.processor, loaded.manifest.prompt, records)
    predicted: dict[str, str] = {}
    for record in records:
        output = parse_output(outputs[record.id])
        predicted[record.id] = str(output.get("category")) if output else "(invalid)"
    correct = sum(predicted[r.id] == r.target.category for r in records)
    by_class: dict[str, dict[str, int]] = {}
    for record in records:
        row = by_class.setdefault(record.target.category, {"n": 0, "correct": 0})
        row["n"] += 1
        row["correct"] += predicted[record.id] == record.target.category
    return {
        "n": len(records),
        "category_accuracy": correct / len(records),
        "majority_baseline": max(Counter(r.target.category for r in records).values())
        / len(records),
        "per_class": by_class,
        "predicted": dict(Counter(predicted.values()).most_common()),
        "valid_json_rate": sum(parse_output(t) is not None for t in outputs.values())
        / len(records),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipeline")
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    args = parser.parse_args(argv)
    out: Path = args.out
    work = out / "work"
    started = time.perf_counter()
    build = build_trained_demo(out / "demo-model", DemoRecipe(), work_dir=work, progress=True)
    build_seconds = time.perf_counter() - started
    synthetic = evaluate_model(work / "data" / "test.jsonl", str(out / "demo-model"), out / "eval-synthetic")  # fmt: skip
    real = real_photo_accuracy(out / "demo-model", args.photos)
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "build_seconds_total": round(build_seconds, 1),
        "build_seconds": {k: round(v, 1) for k, v in build.seconds.items()},
        "data_build": {k: build.report[k] for k in ("n_input", "kept", "dropped", "data_version")},
        "lora_val": build.metrics.get("val"),
        "synthetic_test": {k: synthetic[k] for k in HEADLINE_METRICS},
        "real_photos": real,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
