"""Collapse rules v2: golden cases for both iMaterialist shapes, the fixed flaws, the drops."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from fashion_florence_client.schema import FashionAttributes
from model_store.data.build import build_dataset
from model_store.data.dataset import read_split
from model_store.data.rules import collapse, load_rules, parse_labels
from model_store.data.sources import TABLE_COLUMNS, read_imat_json, read_table
from tests.conftest import SHARED_DATA

IMAT = SHARED_DATA / "imaterialist"
LABEL_MAP = IMAT / "label_map_228.csv"
REFERENCE = IMAT / "reference_collapse.json"


def attrs(category: str, color: str, material: str | None, style: list[str], occasion: list[str]) -> dict[str, Any]:  # fmt: skip
    return FashionAttributes(
        category=category,  # type: ignore[arg-type]
        primary_color=color,  # type: ignore[arg-type]
        material=material,  # type: ignore[arg-type]
        style_tags=style,  # type: ignore[arg-type]
        occasion_tags=occasion,  # type: ignore[arg-type]
    ).model_dump()


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    if not REFERENCE.is_file():
        pytest.fail(f"{REFERENCE} is missing: the shared data set is required")
    data: dict[str, Any] = json.loads(REFERENCE.read_text(encoding="utf-8"))
    return data


def label_ids() -> dict[str, str]:
    with LABEL_MAP.open(encoding="utf-8", newline="") as handle:
        return {row["labelName"]: row["labelId"] for row in csv.DictReader(handle)}


# --- the rules file against the reference ---------------------------------------------------


def test_rules_keep_every_reference_mapping_except_the_documented_fixes(
    reference: dict[str, Any],
) -> None:
    rules = load_rules()
    assert rules.version == 2
    assert rules.version_tag == "imat-collapse-v2"
    assert {fix.id for fix in rules.fixes} >= {
        "multi-word-colours", "asymmetric", "navy", "schema-order", "no-default-tags",
    }  # fmt: skip
    additions = {"Hats": "accessory"}
    assert rules.category_map == {**reference["category_map"], **additions}
    assert rules.color_map == {**reference["color_map"], "Navy": "navy", "Navy Blue": "navy"}
    assert rules.material_map == reference["material_map"]
    assert rules.category_to_style == reference["category_to_style"]
    reference_styles = reference["imat_style_to_ours"]
    assert {k: v for k, v in rules.label_to_style.items() if k in reference_styles} == (
        reference_styles
    )
    assert rules.label_to_style["Asymmetric"] == ["edgy"]
    wedding = {"Cocktail Dresses", "Formal Dresses"}
    for name, tags in reference["category_to_occasion"].items():
        expected = [*tags, "wedding_guest"] if name in wedding else tags
        assert rules.category_to_occasion[name] == expected, name


def test_rules_know_every_imaterialist_label_in_its_group() -> None:
    rules = load_rules()
    with LABEL_MAP.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 228
    for row in rows:
        assert row["labelName"] in rules.labels[row["taskName"]], row
    for name in rules.category_map:
        assert name in rules.labels["category"]


def test_every_formerly_unproduced_tag_is_now_reachable() -> None:
    rules = load_rules()
    styles = {t for tags in rules.category_to_style.values() for t in tags}
    styles |= {t for tags in rules.label_to_style.values() for t in tags} | {rules.minimalist.tag}
    occasions = {t for tags in rules.category_to_occasion.values() for t in tags}
    occasions |= {t for tags in rules.label_to_occasion.values() for t in tags}
    assert {"minimalist", "romantic"} <= styles
    assert {"brunch", "wedding_guest"} <= occasions


# --- label-string parsing (the table shape) --------------------------------------------------


@pytest.mark.parametrize(
    ("text", "group", "found", "unknown"),
    [
        ("Black White", "color", ["Black", "White"], []),
        ("Multi Color", "color", ["Multi Color"], []),
        ("black,  white", "color", ["Black", "White"], []),
        ("Navy Blue", "color", ["Navy Blue"], []),
        ("Hosiery, Stockings, Tights", "category", ["Hosiery, Stockings, Tights"], []),
        ("Leopard And Cheetah", "pattern", ["Leopard And Cheetah"], []),
        ("Faux Fur/Suede", "material", ["Faux Fur", "Suede"], []),
        ("Blck Red", "color", ["Red"], ["Blck"]),
    ],
)
def test_parse_labels(text: str, group: str, found: list[str], unknown: list[str]) -> None:
    assert parse_labels(text, load_rules().labels[group]) == (found, unknown)


# --- collapse golden cases --------------------------------------------------------------------

GOLDEN: list[tuple[str, dict[str, list[str]], dict[str, Any] | str]] = [
    ("multi-word colour -> multi", {"category": ["T-Shirts"], "color": ["Black", "White"], "material": ["Cotton"]},
     attrs("top", "multi", "cotton", ["casual"], ["everyday", "casual"])),
    ("colours that agree stay one colour", {"category": ["Jeans"], "color": ["Red", "Maroon"]},
     attrs("bottom", "red", None, ["casual"], ["everyday", "casual"])),
    ("Clear never outvotes a real colour", {"category": ["Skirts"], "color": ["Clear", "Pink"]},
     attrs("bottom", "pink", None, ["casual"], [])),
    ("no colour -> unknown; no default tags", {"category": ["Shoe Accessories"]},
     attrs("accessory", "unknown", None, [], [])),
    ("Asymmetric -> edgy, schema order", {"category": ["Dresses"], "color": ["Red"], "style": ["Asymmetric"]},
     attrs("dress", "red", None, ["edgy", "casual"], [])),
    ("minimalist, wedding_guest, schema order",
     {"category": ["Cocktail Dresses"], "color": ["Black"], "material": ["Satin"]},
     attrs("dress", "black", "satin", ["minimalist", "elegant", "chic"], ["dinner", "party", "wedding_guest", "date"])),
    ("a pattern rules out minimalist; Floral -> romantic",
     {"category": ["Blouses"], "color": ["White"], "pattern": ["Floral"]},
     attrs("top", "white", None, ["classic", "romantic", "elegant"], ["everyday", "work"])),
    ("cap at four by priority, then schema order",
     {"category": ["Clubbing Dresses"], "style": ["Bodycon", "Beaded", "Embroidered", "Printed"], "pattern": ["Floral"]},
     attrs("dress", "unknown", None, ["bohemian", "statement", "sexy", "glamorous"], ["going-out", "clubbing", "night-out"])),
    ("Summer -> vacation and brunch", {"category": ["Casual Dresses"], "style": ["Summer"]},
     attrs("dress", "unknown", None, ["casual"], ["everyday", "casual", "vacation", "brunch"])),
    ("Patent -> patent leather", {"category": ["Heels"], "color": ["Gold"], "material": ["Patent"]},
     attrs("shoes", "metallic", "patent leather", ["elegant", "chic"], ["dinner", "party", "going-out"])),
    ("two materials -> none", {"category": ["Jackets"], "material": ["Cotton", "Linen"]},
     attrs("layer", "unknown", None, ["casual"], [])),
    ("an excluded label does not veto a kept one", {"category": ["Dresses", "Maternity"]},
     attrs("dress", "unknown", None, ["casual"], [])),
    ("navy (extension)", {"category": ["Trousers"], "color": ["Navy"]},
     attrs("bottom", "navy", None, ["classic"], ["everyday", "work"])),
    ("excluded category", {"category": ["Swimsuits"], "color": ["Blue"]}, "excluded_category"),
    ("conflicting categories", {"category": ["Jeans", "T-Shirts"]}, "conflicting_categories"),
    ("no category", {"color": ["Black"]}, "no_category"),
    ("unknown category", {"category": ["Capes"]}, "unknown_category"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "labels", "expected"), GOLDEN, ids=[c[0] for c in GOLDEN])
def test_collapse_golden(case: str, labels: dict[str, list[str]], expected: dict[str, Any] | str) -> None:  # fmt: skip
    outcome = collapse(labels)
    if isinstance(expected, str):
        assert outcome.attributes is None
        assert outcome.drop_reason == expected
    else:
        assert outcome.attributes is not None
        assert outcome.attributes.model_dump() == expected
        assert outcome.drop_reason is None


def test_conflicting_materials_are_reported_as_a_warning() -> None:
    assert collapse({"category": ["Jackets"], "material": ["Cotton", "Linen"]}).warnings == [
        "conflicting_materials"
    ]


# --- both input shapes end to end ------------------------------------------------------------


def png(path: Path, color: tuple[int, int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path)
    return path.name


def test_imat_json_shape(tmp_path: Path) -> None:
    ids = label_ids()
    rows = {
        "1": ["T-Shirts", "Black", "White", "Cotton", "Female"],
        "2": ["Dresses", "Red", "Asymmetric"],
        "3": ["Swimsuits", "Blue"],
        "4": ["Jeans", "T-Shirts"],
        "5": ["Black"],
        "6": ["Cocktail Dresses", "Black", "Satin"],  # its image file is missing
        "7": ["T-Shirts", "Black", "White", "Cotton"],  # same photo as item 1
    }
    images = tmp_path / "images"
    for item, color in {"1": (0, 0, 0), "2": (9, 0, 0), "3": (0, 9, 0), "4": (1, 1, 1), "5": (2, 2, 2)}.items():  # fmt: skip
        png(images / f"{item}.jpg", color)
    (images / "7.png").write_bytes((images / "1.jpg").read_bytes())
    annotations = {
        "images": [{"imageId": k, "url": f"https://example.invalid/{k}"} for k in rows],
        "annotations": [
            {"imageId": k, "labelId": [ids[name] for name in names] + (["999"] if k == "2" else [])}
            for k, names in rows.items()
        ],
    }
    path = tmp_path / "train.json"
    path.write_text(json.dumps(annotations), encoding="utf-8")
    report = build_dataset(
        read_imat_json(path, LABEL_MAP, images, load_rules()),
        tmp_path / "out",
        source={"format": "imat-json"},
    )
    assert report["n_input"] == 7
    assert report["dropped"] == {
        "conflicting_categories": 1,
        "duplicate_image": 1,
        "excluded_category": 1,
        "missing_image": 1,
        "no_category": 1,
        "total": 5,
    }
    assert report["dropped_by_label"]["excluded_category"] == {"Swimsuits": 1}
    assert report["warnings"] == {"unknown_label_id": 1}
    assert report["kept"]["total"] == 2
    records = {
        r.id: r for split in ("train", "val", "test") for r in read_split(tmp_path / "out", split)
    }
    assert set(records) == {"1", "2"}  # item 7 is item 1's photo: the smaller id stays
    assert records["1"].target.model_dump() == attrs(
        "top", "multi", "cotton", ["casual"], ["everyday", "casual"]
    )
    assert records["2"].target.model_dump() == attrs("dress", "red", None, ["edgy", "casual"], [])


def write_table(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(TABLE_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({column: row.get(column, "") for column in TABLE_COLUMNS})


def test_table_shape_csv(tmp_path: Path) -> None:
    images = tmp_path / "images"
    rows = [
        {"item_ID": "a", "category": "T-Shirts", "color": "Black White", "material": "Cotton", "image": png(images / "a.png", (0, 0, 0))},
        {"item_ID": "b", "category": "t-shirts", "color": "Multi Color", "image": png(images / "b.png", (1, 0, 0))},
        {"item_ID": "c", "category": "Trousers", "color": "Navy", "image": png(images / "c.png", (2, 0, 0))},
        {"item_ID": "d", "category": "Dresses", "color": "Red", "style": "Asymmetric", "image": png(images / "d.png", (3, 0, 0))},
        {"item_ID": "e", "category": "Hosiery, Stockings, Tights", "image": png(images / "e.png", (4, 0, 0))},
        {"item_ID": "f", "category": "Capes", "image": png(images / "f.png", (5, 0, 0))},
        {"item_ID": "g", "category": "Jeans", "image": "nowhere.png"},
        {"item_ID": "h", "category": "Jeans", "color": "Blue", "image": "a.png"},  # a's photo, other labels
        {"item_ID": "i", "category": "Skirts", "color": "Green", "image": png(images / "i.png", (6, 0, 0))},
        {"item_ID": "i", "category": "Skirts", "color": "Green", "image": png(images / "i2.png", (7, 0, 0))},
    ]  # fmt: skip
    write_table(tmp_path / "table.csv", rows)
    report = build_dataset(
        read_table(tmp_path / "table.csv", images, load_rules()),
        tmp_path / "out",
        source={"format": "table"},
    )
    assert report["dropped"] == {
        "conflicting_duplicate": 2,
        "excluded_category": 1,
        "missing_image": 1,
        "total": 5,
        "unknown_category": 1,
    }
    assert report["dropped_by_label"]["unknown_category"] == {"Capes": 1}
    assert report["dropped_by_label"]["excluded_category"] == {"Hosiery, Stockings, Tights": 1}
    records = {
        r.id: r for split in ("train", "val", "test") for r in read_split(tmp_path / "out", split)
    }
    assert sorted(records) == ["b", "c", "d", "i#0", "i#1"]  # two photos of item i
    assert records["b"].target.primary_color == "multi"
    assert records["c"].target.primary_color == "navy"
    assert records["d"].target.style_tags == ["edgy", "casual"]
    assert {records["i#0"].item_id, records["i#1"].item_id} == {"i"}
    splits = {
        split: [r.id for r in read_split(tmp_path / "out", split)]
        for split in ("train", "val", "test")
    }
    assert sum("i#0" in ids and "i#1" in ids for ids in splits.values()) == 1  # one split


def test_table_shape_parquet_with_embedded_bytes(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(buffer, format="PNG")
    table = pa.table(
        {
            "category": ["Sneakers"],
            "color": ["Red"],
            "material": ["Leather"],
            "style": [None],
            "item_ID": ["p1"],
            "image": [{"bytes": buffer.getvalue(), "path": "p1.png"}],
        }
    )
    pq.write_table(table, tmp_path / "table.parquet")
    report = build_dataset(
        read_table(tmp_path / "table.parquet", tmp_path, load_rules()),
        tmp_path / "out",
        source={"format": "table"},
    )
    assert report["kept"]["total"] == 1
    (record,) = [r for s in ("train", "val", "test") for r in read_split(tmp_path / "out", s)]
    assert Path(record.image).parent == (tmp_path / "out" / "images").resolve()
    assert Path(record.image).read_bytes() == buffer.getvalue()
    assert record.target.model_dump() == attrs(
        "shoes", "red", "leather", ["sporty", "casual"], ["everyday", "casual"]
    )
