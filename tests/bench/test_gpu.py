"""bench.gpu: the dry run on CPU (same steps, points, recording and budget as a GPU run),
and the sweep's isolation and recording with fake engines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bench.gpu_record import Recorder
from bench.gpu_shape import suggest_batch_size
from bench.offline import sweep_engines
from service.backend import DeviceFatalError, ItemOutcome, ModelInfo, PreparedImage
from service.inference.decoding.decoders import DecodingMode

REPO_ROOT = Path(__file__).resolve().parents[2]


def hide(directory: Path, *modules: str) -> dict[str, str]:
    """An environment in which ``modules`` fail to import, as on a host without them."""
    for name in modules:
        package = directory / name
        package.mkdir(parents=True, exist_ok=True)
        message = f"No module named {name!r} (hidden by the test)"
        (package / "__init__.py").write_text(f"raise ModuleNotFoundError({message!r})\n")
    return {**os.environ, "PYTHONPATH": str(directory), "HF_HUB_OFFLINE": "1"}


def gpu_sh(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    command = ["sh", "bench/gpu.sh", "--python", sys.executable, *args]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip


@pytest.mark.slow
def test_dry_run_without_fastapi_records_every_point(tmp_path: Path) -> None:
    """gpu.sh's whole control flow on CPU: the check, then bench.gpu --dry-run, on a
    Python where FastAPI and uvicorn do not import (--skip-service must not need them)."""
    out = tmp_path / "results" / "gpu.json"
    env = hide(tmp_path / "hidden", "fastapi", "starlette", "uvicorn")
    started = time.perf_counter()
    done = gpu_sh(
        "--skip-tests", "--dry-run", "--skip-service", "--cache-dir", str(tmp_path / "models"),
        "--out", str(out), "--fail-point", "constrained:1", env=env,
    )  # fmt: skip
    started = time.perf_counter()
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True
    assert report["wall_s"] <= report["budget_s"]
    assert set(report["peaks_tflops"]) == {"measured_matmul_790", "spec_dense_bf16_989"}
    assert "float32" in report["mode_comparison_note"]
    (shape,) = report["shapes"]
    assert shape["shape"] == "demo"
    assert shape["build_s"] > 0
    assert set(shape["step_s"]) >= {"build", "load", "engines", "sweep", "flops"}
    assert "errors" not in shape
    rows = {(r["mode"], r["batch_size"]): r for r in shape["rows"]}
    assert len(rows) == 2 * 3  # batch sizes 1 and 4, three modes: every point on record
    # The injected failure is recorded with its error, and the points after it still ran
    # (a larger batch may be skipped by the budget on a busy machine, which is said too).
    assert "injected failure" in rows[("constrained", 1)]["error"]
    assert rows[("jump-forward", 1)]["img_s"] > 0
    assert all(r["img_s"] or r["error"] or r["skipped"] for r in rows.values())
    measured = [r for r in shape["rows"] if r["img_s"]]
    assert measured
    assert all(r["fraction_of_bound"] > 0 for r in measured)
    assert all(set(r["bounds"]) == set(report["peaks_tflops"]) for r in measured)
    assert all(r["forward_passes_per_image"] == 32 for r in measured if r["mode"] == "plain")
    assert shape["flops"]["gflop_per_image"] > 0
    assert "service" not in shape
    assert "| constrained | 1 | RuntimeError: injected failure" in done.stdout
    assert "only in float32" in done.stdout
    assert "bench.gpu_check: ok" in done.stdout
    # Its own budget is 30 s; the rest is two Python start-ups on a busy 2-core host.
    assert wall < 75, f"the dry run took {wall:.0f} s"


def test_gpu_sh_fails_in_seconds_naming_what_is_missing(tmp_path: Path) -> None:
    started = time.perf_counter()
    no_torch = gpu_sh("--dry-run", env=hide(tmp_path / "a", "torch"), timeout=60)
    assert no_torch.returncode == 2
    assert "torch does not import" in no_torch.stderr
    no_service = gpu_sh("--dry-run", "--skip-tests", env=hide(tmp_path / "b", "uvicorn"))
    assert no_service.returncode == 2
    assert "missing uvicorn" in no_service.stderr
    assert "missing fastapi" not in no_service.stderr
    no_wheels = gpu_sh("--dry-run", "--wheelhouse", str(tmp_path / "none"), env=dict(os.environ))
    assert no_wheels.returncode == 2
    assert "no wheelhouse directory" in no_wheels.stderr
    assert time.perf_counter() - started < 45


def test_the_check_names_each_missing_module() -> None:
    from bench.gpu_check import main, missing_modules

    (missing,) = missing_modules(["json", "no_such_module_for_the_check"])
    assert missing.startswith("no_such_module_for_the_check: ModuleNotFoundError")
    assert main(["--device", "cpu", "--skip-tests"]) == 0


class FakeEngine:
    """What the sweep uses of an engine: ``info`` and ``run_batch``."""

    def __init__(self, error: Exception | None = None, at_batch: int = 0) -> None:
        self.error = error
        self.at_batch = at_batch
        self.calls: list[int] = []

    @property
    def info(self) -> ModelInfo:
        return ModelInfo("fake", "0", "cpu", "float32", 8)

    def run_batch(self, images: Sequence[PreparedImage]) -> list[ItemOutcome]:
        self.calls.append(len(images))
        if self.error is not None and len(images) >= self.at_batch:
            raise self.error
        return [ItemOutcome("{}", 3) for _ in images]


def sweep(engines: dict[DecodingMode, Any], **options: Any) -> list[dict[str, Any]]:
    return sweep_engines(
        engines, [0] * 4, batch_sizes=(1, 2, 4), images_per_point=4, time_budget_s=0.05,
        **options,
    )  # fmt: skip


def test_a_failing_point_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "out.json", {"rows": []})
    written: list[int] = []

    def on_row(row: dict[str, Any]) -> None:
        recorder.report["rows"].append(row)
        recorder.save()
        written.append(len(json.loads(recorder.path.read_text())["rows"]))

    engines = {
        DecodingMode.PLAIN: FakeEngine(ValueError("bad shape"), at_batch=2),
        DecodingMode.JUMP_FORWARD: FakeEngine(),
    }
    rows = sweep(engines, on_row=on_row)
    assert written == [1, 2, 3, 4, 5, 6]  # on disk after every point
    by_point = {(r["mode"], r["batch_size"]): r for r in rows}
    assert by_point[("plain", 1)]["img_s"] > 0
    assert by_point[("plain", 2)]["error"] == "ValueError: bad shape"
    assert by_point[("plain", 4)]["error"] == "ValueError: bad shape"  # tried again
    assert all(by_point[("jump-forward", size)]["img_s"] > 0 for size in (1, 2, 4))


def test_after_a_fatal_device_error_later_points_are_skipped() -> None:
    engines = {
        DecodingMode.PLAIN: FakeEngine(DeviceFatalError("illegal memory access"), at_batch=2),
        DecodingMode.JUMP_FORWARD: FakeEngine(),
    }
    rows = sweep(engines)
    by_point = {(r["mode"], r["batch_size"]): r for r in rows}
    assert "illegal memory access" in by_point[("plain", 2)]["error"]
    assert by_point[("jump-forward", 2)]["skipped"].startswith("device unusable")
    assert engines[DecodingMode.JUMP_FORWARD].calls[-1] == 1  # never ran after the error


def test_the_sweep_budget_skips_points_and_says_so() -> None:
    engines = {DecodingMode.PLAIN: FakeEngine()}
    rows = sweep(engines, sweep_budget_s=0.0)
    assert [r["skipped"] for r in rows] == ["sweep time budget spent"] * 3
    assert engines[DecodingMode.PLAIN].calls == []


def test_suggestion_leaves_out_batches_over_the_memory_headroom() -> None:
    gib = 2**30
    rows = [
        {"mode": "jump-forward", "batch_size": 8, "img_s": 50.0,
         "peak_device_memory_bytes": 10 * gib},
        {"mode": "jump-forward", "batch_size": 64, "img_s": 100.0,
         "peak_device_memory_bytes": 70 * gib},
        {"mode": "jump-forward", "batch_size": 128, "img_s": None,
         "peak_device_memory_bytes": None},
    ]  # fmt: skip
    assert suggest_batch_size(rows, total_memory=80 * gib) == {"jump-forward": 8}
    assert suggest_batch_size(rows, total_memory=None) == {"jump-forward": 64}
