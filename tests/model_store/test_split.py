"""Hash splits are deterministic and leak-free; the leak check catches a leaky split."""

from __future__ import annotations

import random
import shutil
from collections import Counter
from pathlib import Path

import pytest

from fashion_florence_client.schema import FashionAttributes
from model_store.data.build import SplitConfig, build_dataset
from model_store.data.dataset import SPLITS, Record, read_split, write_jsonl
from model_store.data.rules import load_rules
from model_store.data.sources import read_table
from model_store.data.split import assign_split, find_leaks, split_records
from model_store.data.synthesize import (
    DUPLICATE_EVERY,
    EXCLUDED_EVERY,
    MISSING_EVERY,
    write_synthetic_source,
)
from service.cli import main as cli_main

TARGET = FashionAttributes(
    category="top", primary_color="red", material=None, style_tags=[], occasion_tags=[]
)


def record(item: str, digest: str, image: str = "x.png") -> Record:
    return Record(id=item, image=image, target=TARGET, item_id=item, sha256=digest)


@pytest.fixture(scope="module")
def synthetic_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-row synthetic source built twice (once in shuffled row order)."""
    root = tmp_path_factory.mktemp("synthetic")
    table = write_synthetic_source(root / "source", n=300, seed=3)
    build_dataset(
        read_table(table, root / "source" / "images", load_rules()),
        root / "built",
        source={"format": "table"},
        split=SplitConfig(0.2, 0.2, seed=0),
    )
    return root


def test_assignment_is_a_pure_function_of_id_and_seed() -> None:
    ids = [f"item-{i}" for i in range(4000)]
    first = [assign_split(i, val_ratio=0.1, test_ratio=0.2) for i in ids]
    assert first == [assign_split(i, val_ratio=0.1, test_ratio=0.2) for i in ids]
    shares = Counter(first)
    assert abs(shares["val"] / 4000 - 0.1) < 0.02
    assert abs(shares["test"] / 4000 - 0.2) < 0.02
    reseeded = [assign_split(i, val_ratio=0.1, test_ratio=0.2, seed=1) for i in ids]
    assert reseeded != first


def test_split_does_not_depend_on_row_order_or_other_rows() -> None:
    records = [record(f"id{i}", f"h{i}") for i in range(500)]
    shuffled = records[:]
    random.Random(0).shuffle(shuffled)
    full = split_records(records, val_ratio=0.1, test_ratio=0.1)
    assert split_records(shuffled, val_ratio=0.1, test_ratio=0.1) == full
    fewer = split_records(records[::2], val_ratio=0.1, test_ratio=0.1)
    for name in SPLITS:  # dropping rows never moves the others
        assert {r.id for r in fewer[name]} <= {r.id for r in full[name]}


def test_find_leaks_reports_shared_ids_and_shared_images() -> None:
    leaky = {
        "train": [record("a", "h1"), record("b", "h2")],
        "val": [record("a", "h3")],  # same item in two splits
        "test": [record("c", "h2")],  # same photo under another id
    }
    leaks = find_leaks(leaky)
    assert leaks
    assert leaks.ids == {"a": ["train", "val"]}
    assert leaks.hashes == {"h2": ["test", "train"]}
    assert not find_leaks({"train": [record("a", "h1")], "val": [record("b", "h2")], "test": []})


def test_synthetic_build_counts_and_is_leak_free(synthetic_build: Path) -> None:
    built = synthetic_build / "built"
    splits = {name: read_split(built, name) for name in SPLITS}
    assert not find_leaks(splits)
    # the leak check also works from the files alone (hashes recomputed from images)
    stripped = {n: [r.model_copy(update={"sha256": None}) for r in rs] for n, rs in splits.items()}
    assert not find_leaks(stripped)
    import json

    report = json.loads((built / "report.json").read_text(encoding="utf-8"))
    assert report["n_input"] == 300
    assert report["dropped"]["missing_image"] == 300 // MISSING_EVERY
    assert report["dropped"]["excluded_category"] >= 300 // EXCLUDED_EVERY
    assert report["dropped"]["duplicate_image"] >= 1
    assert 300 // DUPLICATE_EVERY >= 1
    assert report["kept"]["total"] == sum(len(v) for v in splits.values())
    assert report["kept"]["total"] + report["dropped"]["total"] == 300
    assert report["leaks"] == {"ids": 0, "hashes": 0}


def test_rebuild_is_identical(synthetic_build: Path, tmp_path: Path) -> None:
    source = synthetic_build / "source"
    # Beside the first build: image paths are written relative to the dataset folder.
    again = synthetic_build / f"again-{tmp_path.name}"
    build_dataset(
        read_table(source / "table.csv", source / "images", load_rules()),
        again,
        source={"format": "table"},
        split=SplitConfig(0.2, 0.2, seed=0),
    )
    for name in (*[f"{s}.jsonl" for s in SPLITS], "report.json"):
        assert (again / name).read_text() == (synthetic_build / "built" / name).read_text()


def test_cli_data_check(
    synthetic_build: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    built = synthetic_build / "built"
    assert cli_main(["data", "check", str(built)]) == 0
    assert capsys.readouterr().out.startswith("OK")
    leaky = Path(shutil.copytree(built, tmp_path / "leaky"))
    train = read_split(leaky, "train")
    write_jsonl(leaky / "test.jsonl", [*read_split(leaky, "test"), train[0]])
    assert cli_main(["data", "check", str(leaky)]) == 1
    assert "1 item id(s) and 1 image(s) cross splits" in capsys.readouterr().out
