"""The weak pixel-colour rule against the human colour labels of clothing-small's validation
photos: coverage (share of photos it answers), agreement where it answers (right when the
answer is among those the person accepted) and the confusion matrix per colour, for the
first rule (``weak-color-v1``), the second (``weak-color-v2``) and the current one, on the
labels' ``tune`` half (which each rule's settings were chosen on) and ``report`` half (never
tuned on: quote this).

    python -m bench.weak_colour [--photos ../shared/data/clothing-small/validation]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from model_store.data.human_colors import HumanColour, Part, read_human_colours, score_colours
from model_store.data.weak_color import (
    VERSION,
    VERSION_V1,
    VERSION_V2,
    WeakColor,
    label_color,
    label_color_v1,
    label_color_v2,
)
from model_store.evaluation.predict import open_rgb

ROOT = Path(__file__).resolve().parents[1]
RULES: dict[str, Callable[[Image.Image], WeakColor]] = {
    VERSION_V1: label_color_v1,
    VERSION_V2: label_color_v2,
    VERSION: label_color,
}


def measure(photos: Path, rule: Callable[[Image.Image], WeakColor], part: Part) -> dict[str, Any]:
    labels = read_human_colours(part=part)

    def answer(label: HumanColour) -> Any:
        return rule(open_rgb(str(photos / label.photo))).color

    return score_colours(labels, answer)


def confusion_table(confusion: dict[str, int]) -> str:
    """Rows: the person's first colour; columns: the rule's answer (right answers on the diagonal)."""
    pairs = {tuple(key.split(" -> ")): n for key, n in confusion.items()}
    rows = sorted({t for t, _ in pairs})
    cols = sorted({a for _, a in pairs} | set(rows))
    lines = ["true \\ rule | " + " ".join(f"{c[:5]:>5}" for c in cols)]
    for t in rows:
        lines.append(f"{t:>11} | " + " ".join(f"{pairs.get((t, c), 0) or '.':>5}" for c in cols))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = ROOT.parent / "shared/data/clothing-small/validation"
    parser.add_argument("--photos", type=Path, default=default)
    args = parser.parse_args()
    for name, rule in RULES.items():
        parts: tuple[Part, ...] = ("tune", "report")
        for part in parts:
            result = measure(args.photos, rule, part)
            print(
                f"{name} on the {part} half: answers {result['answered']} of {result['n']} "
                f"(coverage {result['coverage']:.3f}), agrees with people on "
                f"{result['agreement_when_answered']:.3f} of those"
            )
            if part == "report":
                print(confusion_table(result["confusion"]))


if __name__ == "__main__":
    main()
