"""What the served model answers for real photos: category accuracy and the confusion matrix on
clothing-small's validation and test splits, through the real engine (constrained decoding, the
service's default mode), so the figures are what ``/v1/extract`` would answer. Colour is
compared with the weak pixel-colour rule where the rule answers (agreement with a rule, not
accuracy), and, on the validation photos a person labelled
(``model_store/data/validation_colours_human.csv``), scored against the human labels: right
when the answer is among those the person accepted; over all of them and over the labels'
``report`` half, the one the weak rule was never tuned on.

    python -m bench.demo_accuracy [--model-dir DIR] [--photos ../shared/data/clothing-small]
                                  [--record]

``--record`` writes the validation colour figures into the model's report (``report.json``,
``report.md``) and refreshes its checksums (``shipped_files.json``).

Without ``--model-dir`` it scores the configured model (``FF_MODEL_PATH``, else the shipped demo).
The class folders map to categories by ``model_store/data/clothing_small_mapping.json``.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from PIL import Image

from model_store.data.human_colors import HumanColour, read_human_colours
from model_store.data.weak_color import VERSION as WEAK_VERSION
from model_store.data.weak_color import label_color
from model_store.demo_cache import SHIPPED_DEMO_DIR, write_shipped_checksums
from model_store.demo_report import record_human_colours
from service.inference.engine import load_engine
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
MAPPING = ROOT / "model_store" / "data" / "clothing_small_mapping.json"
BATCH = 16


def _photos(split: Path, mapping: dict[str, str]) -> list[tuple[Path, str]]:
    return [
        (photo, mapping[folder.name])
        for folder in sorted(p for p in split.iterdir() if p.is_dir())
        for photo in sorted(folder.iterdir())
        if photo.is_file()
    ]


def _human_scores(answers: dict[str, str], labels: list[HumanColour]) -> dict[str, object]:
    """Colour accuracy against the human labels of the photos answered, per labels' half."""
    out: dict[str, object] = {}
    for part in ("all", "report"):
        scored = [label for label in labels if part in ("all", label.part) and label.photo in answers]  # fmt: skip
        right = sum(answers[label.photo] in label.accepted for label in scored)
        out[f"human_color_accuracy_{part}"] = right / len(scored) if scored else None
        out[f"human_color_photos_{part}"] = len(scored)
    return out


def score(model_dir: str | None, split: Path) -> dict[str, object]:
    mapping = json.loads(MAPPING.read_text())
    settings = Settings(model_path=model_dir) if model_dir else Settings()
    engine = load_engine(settings)
    items = _photos(split, mapping)
    confusion: Counter[tuple[str, str]] = Counter()
    colour_agrees: list[bool] = []
    colours: dict[str, str] = {}
    for start in range(0, len(items), BATCH):
        chunk = items[start : start + BATCH]
        prepared, weak = [], []
        for path, _ in chunk:
            with Image.open(path) as image:
                prepared.append(engine.preprocess(image.convert("RGB")))
                weak.append(label_color(image).color)
        outcomes = engine.run_batch(prepared)
        for (path, truth), rule, outcome in zip(chunk, weak, outcomes, strict=True):
            answer = outcome.attributes.category if outcome.attributes else "<failed>"
            if outcome.attributes is not None:
                colours[f"{path.parent.name}/{path.name}"] = outcome.attributes.primary_color
            confusion[(truth, str(answer))] += 1
            if rule is not None and outcome.attributes is not None:
                colour_agrees.append(outcome.attributes.primary_color == rule)
    right = sum(n for (truth, answer), n in confusion.items() if truth == answer)
    majority = Counter(truth for _, truth in items).most_common(1)[0]
    return {
        "split": split.name,
        "photos": len(items),
        "category_accuracy": right / len(items),
        "majority_class": majority[0],
        "majority_accuracy": majority[1] / len(items),
        "weak_color_rule": WEAK_VERSION,
        "weak_color_agreement": sum(colour_agrees) / len(colour_agrees) if colour_agrees else None,
        "weak_color_photos": len(colour_agrees),
        **_human_scores(colours, read_human_colours() if split.name == "validation" else []),
        "confusion": {f"{t} -> {a}": n for (t, a), n in sorted(confusion.items())},
    }


def _share(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "n/a"


def _record(model_dir: str | None, result: dict[str, object]) -> None:
    directory = Path(model_dir) if model_dir else SHIPPED_DEMO_DIR
    command = "python -m bench.demo_accuracy" + (f" --model-dir {model_dir}" if model_dir else "")
    record_human_colours(
        directory,
        {
            "command": command,
            "weak_rule": WEAK_VERSION,
            "accuracy_all": result["human_color_accuracy_all"],
            "photos_all": result["human_color_photos_all"],
            "accuracy_report": result["human_color_accuracy_report"],
            "photos_report": result["human_color_photos_report"],
        },
    )
    write_shipped_checksums(directory)
    print(f"recorded in {directory / 'report.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir")
    parser.add_argument("--photos", type=Path, default=ROOT.parent / "shared/data/clothing-small")
    parser.add_argument("--splits", nargs="+", default=["validation", "test"])
    parser.add_argument("--record", action="store_true", help="write the figures into the report")
    args = parser.parse_args()
    for name in args.splits:
        result = score(args.model_dir, args.photos / name)
        print(json.dumps(result, indent=1))
        print(
            f"{name}: category accuracy {result['category_accuracy']:.3f} over "
            f"{result['photos']} photos (always {result['majority_class']}: "
            f"{result['majority_accuracy']:.3f}); colour agrees with the weak rule on "
            f"{_share(result['weak_color_agreement'])} of the {result['weak_color_photos']} "
            f"photos it ({result['weak_color_rule']}) labels"
        )
        if result["human_color_photos_all"]:
            print(
                f"{name}: colour right (human labels) on "
                f"{_share(result['human_color_accuracy_all'])} of the "
                f"{result['human_color_photos_all']} labelled photos, "
                f"{_share(result['human_color_accuracy_report'])} of the "
                f"{result['human_color_photos_report']} of the labels' report half"
            )
            if args.record:
                _record(args.model_dir, result)


if __name__ == "__main__":
    main()
