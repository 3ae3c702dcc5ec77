"""The Ray job's parts without Ray (cheap): table inputs, the output directory's repair and
retry, and both stages called as Ray Data would call them (a fake engine for failures)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from service.backend import DeviceOutOfMemoryError, ItemOutcome
from service.cli import build_parser
from service.jobs import stages
from service.jobs.cli import engine_of
from service.jobs.inputs import InputError, Item, collect_items
from service.jobs.output import OUTPUT_SCHEMA, read_rows, scan_output
from service.jobs.ray_job import RayJobOptions, resource_shortfall
from service.settings import Settings
from tests.conftest import photo_paths
from tests.fakes import FakeBackend


def _row(item: str, error: str | None = None) -> dict[str, Any]:
    return {
        "id": item, "source": f"/x/{item}", "model_name": "m", "model_revision": "r",
        "attributes": None if error else "{}", "confidence": None,
        "error_code": error, "error_detail": error and "why",
    }  # fmt: skip


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), path)


# --- inputs -----------------------------------------------------------------------------


def test_tables_of_every_format_give_ids_and_sources(tmp_path: Path) -> None:
    photo = photo_paths()[0]
    (tmp_path / "t.csv").write_text(f"id,path\n00123,{photo}\n7,rel/a.jpg\n")
    (tmp_path / "t.jsonl").write_text(json.dumps({"id": "u", "url": "https://x/y.jpg"}) + "\n")
    pq.write_table(
        pa.table({"id": ["p"], "path": [str(photo)], "url": [None]}), tmp_path / "t.parquet"
    )
    items = collect_items([str(tmp_path / n) for n in ("t.csv", "t.jsonl", "t.parquet")])
    # Paths are recorded resolved (the shared data folder may sit behind a symlink).
    assert items == [
        Item("00123", str(photo.resolve())),  # ids stay text: no 123
        Item("7", str(tmp_path.resolve() / "rel" / "a.jpg")),  # relative to the table's folder
        Item("u", "https://x/y.jpg"),
        Item("p", str(photo.resolve())),
    ]


def test_plain_inputs_expand_as_the_http_job_does(tmp_path: Path) -> None:
    folder = photo_paths()[0].parent
    items = collect_items([str(folder), str(photo_paths()[0]), "https://x/y.jpg"])
    assert len(items) == len({p for p in folder.iterdir()}) + 1  # the repeated file once
    assert all(item.id == item.source for item in items)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,path\na,b.jpg\n", "needs an 'id' column"),
        ("id,path,url\na,b.jpg,https://x/c.jpg\n", "exactly one of path or url"),
        ("id,path\na,b.jpg\na,c.jpg\n", "names two sources"),
    ],
)
def test_bad_tables_are_refused_with_a_reason(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(InputError, match=message):
        collect_items([str(tmp_path / "t.csv")])


# --- output -----------------------------------------------------------------------------


def test_scan_repairs_what_a_killed_run_left(tmp_path: Path) -> None:
    _write(tmp_path / "a.parquet", [_row("1"), _row("2", "invalid_image")])
    _write(tmp_path / "b.parquet", [_row("3")])
    whole = (tmp_path / "b.parquet").read_bytes()
    (tmp_path / "b.parquet").write_bytes(whole[: len(whole) // 2])  # cut short by a kill
    (tmp_path / "a.parquet.rewriting").write_bytes(b"half a rewrite")
    state = scan_output(str(tmp_path))
    assert state.succeeded == {"1"}
    assert state.failed == {"2": "invalid_image"}
    assert state.removed_files == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet"]


def test_retry_failed_removes_only_failed_rows(tmp_path: Path) -> None:
    _write(tmp_path / "a.parquet", [_row("1"), _row("2", "invalid_image")])
    _write(tmp_path / "b.parquet", [_row("3", "url_fetch_failed")])
    state = scan_output(str(tmp_path), retry_failed=True)
    assert state.ids == {"1"}
    assert [r["id"] for r in read_rows(str(tmp_path))] == ["1"]
    assert not (tmp_path / "b.parquet").exists()  # nothing left in it


def test_a_second_row_for_an_id_is_reported(tmp_path: Path) -> None:
    _write(tmp_path / "a.parquet", [_row("1")])
    _write(tmp_path / "b.parquet", [_row("1", "invalid_image")])
    assert scan_output(str(tmp_path)).duplicates == {"1": 1}


# --- stages -----------------------------------------------------------------------------


def _intake(tmp_path: Path, files: dict[str, bytes], settings: Settings) -> list[dict[str, Any]]:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    sources = [str(tmp_path / name) for name in files] + [str(tmp_path / "absent.jpg")]
    batch = pa.table({"id": sources, "source": sources})
    rows: list[dict[str, Any]] = stages.intake_batch(batch, settings=settings).to_pylist()
    return rows


def test_intake_decodes_and_gives_each_broken_file_the_api_code(
    tmp_path: Path, demo_model_dir: Path
) -> None:
    photo = photo_paths()[0].read_bytes()
    limit = len(photo) + 1024
    settings = Settings(model_path=str(demo_model_dir), max_image_bytes=limit, max_body_bytes=limit)
    files = {"ok.jpg": photo, "cut.jpg": photo[:500], "txt.jpg": b"hello", "big.jpg": photo * 2}
    rows = _intake(tmp_path, files, settings)
    codes = [row["error_code"] for row in rows]
    assert codes == [
        None,
        "invalid_image",
        "unsupported_image_format",
        "payload_too_large",
        "invalid_input",
    ]
    size = stages.load_resizer(str(demo_model_dir)).image_size
    assert (rows[0]["height"], rows[0]["width"]) == (size, size)
    assert len(rows[0]["pixels"]) == size * size * 3


def test_intake_holds_decoding_to_its_time_budget(tmp_path: Path, demo_model_dir: Path) -> None:
    big = io.BytesIO()
    Image.effect_noise((1000, 1000), 64).convert("RGB").save(big, format="PNG")
    settings = Settings(model_path=str(demo_model_dir), decode_budget_ms=1.0)
    (row, _absent) = _intake(tmp_path, {"slow.png": big.getvalue()}, settings)
    assert row["error_code"] == "image_too_large"
    assert "longer than" in row["error_detail"]


class _Failing(FakeBackend):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def run_batch(self, images: Any) -> list[ItemOutcome]:
        raise self.error


def _extract(backend: FakeBackend, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    import service.serving.lifecycle

    monkeypatch.setattr(service.serving.lifecycle, "load_real_engine", lambda _s: backend)
    stage = stages.ExtractStage(Settings())
    pixels = [Image.new("RGB", (8, 8), color).tobytes() for color in ("blue", "white")]
    batch = pa.Table.from_pylist(
        [
            {"id": "blue", "source": "b", "pixels": pixels[0], "height": 8, "width": 8},
            {"id": "gone", "source": "g", "error_code": "invalid_image", "error_detail": "cut"},
            {"id": "white", "source": "w", "pixels": pixels[1], "height": 8, "width": 8},
        ],
        schema=stages.INTAKE_SCHEMA,
    )
    rows: list[dict[str, Any]] = stage(batch).to_pylist()
    assert [row["id"] for row in rows] == ["blue", "gone", "white"]  # every item, in order
    assert rows[1]["error_code"] == "invalid_image"
    assert rows[1]["error_detail"] == "cut"
    return rows


def test_the_actor_stage_maps_engine_outcomes_to_api_codes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The fake answers invalid output for a bright image: one bad item in a good batch.
    rows = _extract(FakeBackend(bad_red_above=0.9), monkeypatch)
    assert json.loads(rows[0]["attributes"])["primary_color"] == "blue"
    assert rows[0]["model_name"] == "fake"
    assert rows[0]["error_code"] is None
    assert rows[2]["error_code"] == "invalid_model_output"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RuntimeError("kernel failed"), "engine_error"),
        (DeviceOutOfMemoryError("full"), "engine_oom"),
    ],
)
def test_a_failed_batch_is_rows_not_an_exception(
    monkeypatch: pytest.MonkeyPatch, error: Exception, code: str
) -> None:
    rows = _extract(_Failing(error), monkeypatch)
    assert rows[0]["error_code"] == rows[2]["error_code"] == code


# --- driver -----------------------------------------------------------------------------


def test_a_local_ray_too_small_for_the_actors_is_refused_not_waited_on() -> None:
    two_cpus = {"cpus": 2.0, "gpus": 0.0}
    assert resource_shortfall(RayJobOptions(out="o"), **two_cpus) is None
    assert (
        resource_shortfall(RayJobOptions(out="o", actors=2, cpus_per_actor=0.5), **two_cpus) is None
    )
    too_many = resource_shortfall(RayJobOptions(out="o", actors=2), **two_cpus)
    assert too_many is not None
    assert "need 3 CPUs" in too_many
    assert resource_shortfall(RayJobOptions(out="o", gpus_per_actor=1), **two_cpus) is not None


def test_the_engine_option_and_local_agree(tmp_path: Path) -> None:
    parse = build_parser().parse_args
    base = ["extract", "x.jpg", "--out", str(tmp_path / "o")]
    assert engine_of(parse(base)) == "http"
    assert engine_of(parse([*base, "--local"])) == "local"
    assert engine_of(parse([*base, "--engine", "ray", "--actors", "2"])) == "ray"
    with pytest.raises(SystemExit):
        engine_of(parse([*base, "--engine", "ray", "--local"]))
