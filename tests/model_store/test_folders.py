"""``data build --format folders``: class folders, the mapping file, the source's own split."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from fashion_florence_client.schema import Category
from model_store.data.dataset import DataError, read_report, read_split
from model_store.data.folders import build_folder_dataset, read_mapping
from model_store.demo import CLOTHING_SMALL_MAPPING
from model_store.synthetic import GarmentSpec, render_garment
from service.cli import main as cli_main
from tests.conftest import SHARED_DATA

MAPPING: dict[str, Category] = {"tee": "top", "jeans": "bottom", "sneaker": "shoes"}
SPECS = {"tee": ("top", "red"), "jeans": ("bottom", "blue"), "sneaker": ("shoes", "black")}


def _collection(root: Path, splits: tuple[str, ...] | None, per_class: int = 3) -> Path:
    rng = random.Random(0)
    for split in splits or ("",):
        for label, (category, color) in SPECS.items():
            folder = root / split / label
            folder.mkdir(parents=True)
            for n in range(per_class):
                spec = GarmentSpec(category, color, "Cotton")  # type: ignore[arg-type]
                render_garment(spec, rng, 96).save(folder / f"{split or 'x'}{n}.png")
    return root


def test_source_split_and_mapping_are_kept(tmp_path: Path) -> None:
    root = _collection(tmp_path / "src", ("train", "validation", "test"))
    report = build_folder_dataset(root, MAPPING, tmp_path / "out")
    assert report["kept"] == {"train": 9, "val": 9, "test": 9, "total": 27}
    assert report["split"] == {"source_split": True}
    for split, prefix in (("train", "train"), ("val", "validation"), ("test", "test")):
        records = read_split(tmp_path / "out", split)
        assert {Path(r.image).name[: len(prefix)] for r in records} == {prefix}
        for record in records:
            label = record.id.split("/")[0]
            assert record.target.category == MAPPING[label]
            assert {"material", "style_tags", "occasion_tags"} <= set(record.unknown)
            # The colour is the weak labeller's, or unknown where it abstained, never both.
            assert ("primary_color" in record.weak) != ("primary_color" in record.unknown)
    counts = report["kept_per_class"]["train"]
    assert counts["material"] == {"(unknown)": 9}
    assert counts["category"] == {"bottom": 3, "shoes": 3, "top": 3}
    weak = [r for s in ("train", "val", "test") for r in read_split(tmp_path / "out", s) if r.weak]
    assert weak, "drawn garments on a plain backdrop get weak colours"
    assert all(r.target.primary_color == SPECS[r.id.split("/")[0]][1] for r in weak)


def test_without_a_source_split_items_are_split_by_hash(tmp_path: Path) -> None:
    root = _collection(tmp_path / "src", None, per_class=6)
    report = build_folder_dataset(root, MAPPING, tmp_path / "out", weak_colors=False)
    assert report["kept"]["total"] == 18
    assert "val_ratio" in report["split"]
    records = [r for s in ("train", "val", "test") for r in read_split(tmp_path / "out", s)]
    assert all(r.unknown[0] == "primary_color" and not r.weak for r in records)


def test_an_unmapped_class_folder_is_an_error(tmp_path: Path) -> None:
    root = _collection(tmp_path / "src", None, per_class=1)
    with pytest.raises(DataError, match=r"\['sneaker'\] are not in the mapping"):
        build_folder_dataset(root, {"tee": "top", "jeans": "bottom"}, tmp_path / "out")


def test_mapping_files_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tee": "t-shirt"}))
    with pytest.raises(DataError, match="not schema categories"):
        read_mapping(bad)
    shipped = read_mapping(CLOTHING_SMALL_MAPPING)
    classes = {p.name for p in (SHARED_DATA / "clothing-small" / "train").iterdir()}
    assert set(shipped) == classes  # the collection's README mapping, every class
    assert shipped["outwear"] == "layer"
    assert shipped["hat"] == "accessory"


def test_cli_builds_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _collection(tmp_path / "src", ("train", "test"), per_class=1)
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps(MAPPING))
    argv = ["data", "build", "--format", "folders", "--images", str(root), "--out", str(tmp_path / "out")]  # fmt: skip
    assert cli_main(argv) == 1
    assert "needs --mapping" in capsys.readouterr().out
    assert cli_main([*argv, "--mapping", str(mapping)]) == 0
    assert read_report(tmp_path / "out")["kept"] == {"train": 3, "val": 0, "test": 3, "total": 6}


def test_a_dataset_moved_with_its_images_still_reads(tmp_path: Path) -> None:
    project = tmp_path / "project"
    root = _collection(project / "photos", ("train", "validation", "test"), per_class=1)
    build_folder_dataset(root, MAPPING, project / "data", weak_colors=False)
    lines = (project / "data" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert all(json.loads(line)["image"].startswith("../photos/train/") for line in lines)
    moved = project.rename(tmp_path / "elsewhere")
    records = [r for s in ("train", "val", "test") for r in read_split(moved / "data", s)]
    assert len(records) == 9
    assert all(Path(r.image).is_file() for r in records)
    assert all(Path(r.image).resolve().is_relative_to(moved) for r in records)
