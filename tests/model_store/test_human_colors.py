"""The human colour labels of the validation photos: complete, well-formed, split once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_store.data.human_colors import (
    HUMAN_COLOURS,
    HumanColour,
    read_human_colours,
    score_colours,
)
from model_store.demo_report import record_human_colours
from tests.conftest import SHARED_DATA

VALIDATION = SHARED_DATA / "clothing-small" / "validation"


def test_labels_name_real_validation_photos_once() -> None:
    labels = read_human_colours()
    assert len(labels) >= 200
    photos = [label.photo for label in labels]
    assert len(set(photos)) == len(photos)
    missing = [photo for photo in photos if not (VALIDATION / photo).is_file()]
    assert not missing
    assert all(label.color not in label.also for label in labels)


def test_the_halves_are_fixed_disjoint_and_cover_every_label() -> None:
    tune = {label.photo for label in read_human_colours(part="tune")}
    report = {label.photo for label in read_human_colours(part="report")}
    assert tune
    assert report
    assert not tune & report
    assert tune | report == {label.photo for label in read_human_colours()}
    # The half depends on the path alone, so relabelling a photo never moves it.
    relabelled = HumanColour(next(iter(report)), "red", ())
    assert relabelled.part == "report"


def test_a_listed_alternative_counts_as_right_and_an_abstention_as_unanswered() -> None:
    labels = [
        HumanColour("a.jpg", "navy", ("blue",)),
        HumanColour("b.jpg", "white", ()),
        HumanColour("c.jpg", "red", ()),
    ]
    given = {"a.jpg": "blue", "b.jpg": "gray", "c.jpg": None}
    result = score_colours(labels, lambda label: given[label.photo])  # type: ignore[arg-type,return-value]
    assert (result["n"], result["answered"]) == (3, 2)
    assert result["agreement_when_answered"] == 0.5
    assert result["confusion"] == {"navy -> navy": 1, "white -> gray": 1}


def test_a_colour_outside_the_schema_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "labels.csv"
    bad.write_text("# header\nphoto,color,also\nx/y.jpg,teal,\n")
    with pytest.raises(ValueError, match="teal"):
        read_human_colours(bad)
    assert HUMAN_COLOURS.read_text().startswith("#")


def test_the_report_records_colour_against_people(tmp_path: Path) -> None:
    report = {
        "command": "fashion-florence model build-trained-demo",
        "build": {"seconds": {"total": 1.0}, "weights_bytes": 1},
        "scores": {},
        "served": {},
        "weak_color_agreement_synthetic_test": {
            "labeller": "weak-color-v2", "answered": 1, "n": 1, "coverage": 1.0,
            "accuracy_when_answered": 1.0,
        },
    }  # fmt: skip
    (tmp_path / "report.json").write_text(json.dumps(report))
    figures = {
        "command": "python -m bench.demo_accuracy", "weak_rule": "weak-color-v2",
        "accuracy_all": 0.7125, "photos_all": 341, "accuracy_report": 0.7, "photos_report": 169,
    }  # fmt: skip
    record_human_colours(tmp_path, figures)
    assert json.loads((tmp_path / "report.json").read_text())["human_colours"] == figures
    text = (tmp_path / "report.md").read_text()
    assert "the served colour is right for 0.713" in text  # 0.7125 rounds half to even
    assert "report half (never used to tune the weak rule) 0.700" in text
