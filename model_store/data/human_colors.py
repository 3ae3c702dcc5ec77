"""Human colour labels of clothing-small's validation photos, and scoring against them.

The labels (``validation_colours_human.csv``, its header says how they were made) give each
photo a first colour and the others a person could also name; an answer among them is
right. They are split once, by a hash of the photo's path, into a **tune** half (the weak
rule's anchors and thresholds may be fitted to it) and a **report** half (only measured):
figures are quoted on the report half, so no tuning choice has seen them. They are never
training labels.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, get_args

from fashion_florence_client.schema import Color

HUMAN_COLOURS: Final = Path(__file__).parent / "validation_colours_human.csv"
Part = Literal["tune", "report", "all"]


@dataclass(frozen=True, slots=True)
class HumanColour:
    photo: str  # the path under the validation split, ``<class>/<file>``
    color: Color
    also: tuple[Color, ...]

    @property
    def accepted(self) -> frozenset[Color]:
        return frozenset((self.color, *self.also))

    @property
    def part(self) -> Literal["tune", "report"]:
        # A hash of the path, not of the labels, so relabelling never moves a photo.
        return "tune" if hashlib.sha256(self.photo.encode()).digest()[0] % 2 == 0 else "report"


def _color(text: str, where: str) -> Color:
    if text not in get_args(Color):
        raise ValueError(f"{where}: {text!r} is not a schema colour")
    return text  # type: ignore[return-value]  # checked against the Literal just above


def read_human_colours(path: Path = HUMAN_COLOURS, part: Part = "all") -> list[HumanColour]:
    """The labelled photos (``#`` lines are the file's header), optionally one half."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]  # fmt: skip
    labels: list[HumanColour] = []
    for n, row in enumerate(csv.DictReader(lines), start=2):
        where = f"{path.name} row {n}"
        also = tuple(_color(c, where) for c in row["also"].split("|") if c)
        labels.append(HumanColour(row["photo"], _color(row["color"], where), also))
    return [label for label in labels if part in ("all", label.part)]


def score_colours(
    labels: Iterable[HumanColour], answer: Callable[[HumanColour], Color | None]
) -> dict[str, Any]:
    """``answer`` (None: abstained) against the labels: coverage, agreement, confusion.

    The confusion matrix counts (the label's first colour, the answer) over the answered
    photos; an answer among the accepted ones counts on the diagonal.
    """
    total = answered = right = 0
    confusion: Counter[tuple[str, str]] = Counter()
    for label in labels:
        total += 1
        given = answer(label)
        if given is None:
            continue
        answered += 1
        ok = given in label.accepted
        right += ok
        confusion[(label.color, label.color if ok else given)] += 1
    return {
        "n": total,
        "answered": answered,
        "coverage": answered / total if total else 0.0,
        "agreement_when_answered": right / answered if answered else 0.0,
        "right_over_all": right / total if total else 0.0,
        "confusion": {f"{t} -> {a}": n for (t, a), n in sorted(confusion.items())},
    }
