"""One shape of the GPU benchmark, step by step, each step isolated and on the record.

Every step (build, load, engines, sweep, FLOP count, service) writes into the shape's
result as it ends, and the caller's :class:`bench.gpu_record.Recorder` saves the report
after each step and each sweep point. A step that fails is recorded with its error; the
steps that need its output are skipped, the others still run.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

import torch

from bench.flops import PEAKS, FlopProfile, compare_with_issue, profile_model
from bench.gpu_record import Budget, Recorder
from bench.load import payloads as synthetic_payloads
from bench.offline import Row, engines_for, knee, load, prepare_images, sweep_engines
from model_store.loading import LoadedModel
from service.inference.decoding.decoders import DecodingMode
from service.inference.engine import decoding_mode
from service.settings import Settings

T = TypeVar("T")

#: The service's default mode: the suggested batch size is its knee.
SERVICE_MODE: Final = decoding_mode(Settings.model_construct())
#: The service needs room beyond the sweep's peak (the next batch's inputs, fragmentation).
MEMORY_HEADROOM: Final = 0.85
#: GPT-2's BPE ranks in the shared data next to the checkout (absent on a bare GPU host).
GPT2_RANKS: Final = Path(__file__).resolve().parents[2] / "shared/data/tokenizers/gpt2.tiktoken"
#: Kept back from the sweep for what follows it in the same shape.
FLOPS_RESERVE_S: Final = 15.0
SERVICE_RESERVE_S: Final = 150.0
#: The token-for-token equality of jump-forward and constrained ``generate`` holds in
#: float32; in half precision a near-tie can round either way in the two (differently
#: shaped) computations, so the modes may emit different tokens there.
MODE_COMPARISON_NOTE: Final = (
    "jump-forward and constrained decoding emit the same tokens only in float32; in "
    "bfloat16/float16 they can pick different tokens at near-ties, so their tokens/img "
    "(and validity) may differ and the per-mode comparison is of speed, not of output"
)


@dataclass(frozen=True, slots=True)
class Plan:
    batch_sizes: tuple[int, ...]
    modes: tuple[DecodingMode, ...]
    images: int
    images_per_point: int
    point_budget_s: float
    plain_max_new_tokens: int
    payload_size: int = 512
    fail_points: frozenset[tuple[str, int]] = frozenset()


def ensure_shape(shape: str, cache_dir: Path, device: torch.device) -> tuple[Path, float]:
    """The shape's model directory, built on first use; returns it and the build seconds.

    Built on ``device`` in its serving dtype (bf16 on CUDA), so a large preset costs a
    second of initialisation and half the bytes to write and hash. A cached build is not
    re-hashed: the cache is ours, and hashing 1.5 GB costs seconds per run."""
    from model_store.build import build_model
    from model_store.manifest import ManifestError, verify_directory
    from service.inference.engine import resolve_dtype

    dtype = resolve_dtype("auto", device)
    # Florence-2's real vocabulary where the shared data is at hand (real mask costs).
    ranks = GPT2_RANKS if GPT2_RANKS.is_file() and shape != "demo" else None
    vocab = "real-vocab" if ranks else "padded-vocab"
    directory = cache_dir / f"{shape}-{str(dtype).removeprefix('torch.')}-{vocab}"
    try:
        verify_directory(directory, check_checksums=False)
        return directory, 0.0
    except ManifestError:
        started = time.perf_counter()
        build_model(shape, directory, device=device, dtype=dtype, gpt2_ranks=ranks)
        return directory, time.perf_counter() - started


def device_memory(device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(device).total_memory)


def suggest_batch_size(
    rows: Sequence[Row], total_memory: int | None, headroom: float = MEMORY_HEADROOM
) -> dict[str, int]:
    """Per mode, the knee among batch sizes whose peak memory fits under ``headroom``."""
    limit = None if total_memory is None else headroom * total_memory
    fitting = [
        row
        for row in rows
        if row.get("img_s") is not None
        and (limit is None or row["peak_device_memory_bytes"] is None
             or row["peak_device_memory_bytes"] <= limit)
    ]  # fmt: skip
    return knee(fitting)


def add_bound(rows: Sequence[Row], profile: FlopProfile, peaks: dict[str, float]) -> None:
    """FLOPs per image at each row's own tokens/img, and the fraction of each named bound
    (``fraction_of_bound`` stays the first, the measured-matmul one)."""
    for row in rows:
        if row.get("img_s") is None:
            continue
        flops = profile.per_image(row["tokens_per_image"])
        row["gflop_per_image"] = flops / 1e9
        row["bounds"] = {name: {"img_s": peak / flops, "fraction": row["img_s"] * flops / peak}
                         for name, peak in peaks.items()}  # fmt: skip
        first = next(iter(row["bounds"].values()))
        row["bound_img_s"], row["fraction_of_bound"] = first["img_s"], first["fraction"]


def step(result: dict[str, Any], name: str, recorder: Recorder, work: Callable[[], T]) -> T | None:
    """Run one step; its seconds (and its error, if it raised) go into ``result``."""
    started = time.perf_counter()
    try:
        value = work()
    except Exception as exc:
        traceback.print_exc()
        result.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
        value = None
    result.setdefault("step_s", {})[name] = round(time.perf_counter() - started, 3)
    recorder.save()
    return value


def _sweep(
    result: dict[str, Any],
    loaded: LoadedModel,
    payloads: list[bytes],
    plan: Plan,
    recorder: Recorder,
    left_s: float,
) -> None:
    """Engines (grammar compiles), prepared images and the sweep, into ``result``; the
    engines are gone when it returns (their device memory goes to the service)."""
    engines = step(result, "engines", recorder, partial(
        engines_for, loaded, plan.modes, max_new_tokens=plan.plain_max_new_tokens,
        plain_exact_tokens=True,
    ))  # fmt: skip
    if not engines:
        return
    first = next(iter(engines.values()))
    prepared = step(result, "prepare", recorder, partial(prepare_images, first, payloads))
    if not prepared:
        return
    rows: list[Row] = result["rows"]

    def on_row(row: Row) -> None:
        rows.append(row)
        recorder.save()

    step(result, "sweep", recorder, partial(
        sweep_engines, engines, prepared, batch_sizes=plan.batch_sizes,
        images_per_point=plan.images_per_point, time_budget_s=plan.point_budget_s,
        sweep_budget_s=max(left_s - FLOPS_RESERVE_S, 1.0), on_row=on_row,
        fail_points=plan.fail_points,
    ))  # fmt: skip


def bench_shape(
    shape: str,
    plan: Plan,
    args: Any,
    budget: Budget,
    recorder: Recorder,
    device: torch.device,
    reserve_s: float,
) -> tuple[dict[str, Any], list[bytes]]:
    """The shape's result, already in the recorder's report (and on disk) as it grows,
    and the payloads the service suite is to send. ``reserve_s`` is kept back from the
    sweep for the shapes and the service after it."""
    result: dict[str, Any] = {"shape": shape, "plain_max_new_tokens": plan.plain_max_new_tokens}
    result["mode_comparison_note"] = MODE_COMPARISON_NOTE
    recorder.report["shapes"].append(result)
    built = step(result, "build", recorder, partial(ensure_shape, shape, args.cache_dir, device))
    if built is None:
        return result, []
    result["model_dir"], result["build_s"] = str(built[0]), built[1]
    loaded = step(
        result,
        "load",
        recorder,
        partial(load, built[0], device=str(device), verify_checksums=False),
    )
    if loaded is None:
        return result, []
    result["image_size"] = loaded.manifest.image_size
    result["device_memory_bytes"] = device_memory(device)
    payloads = synthetic_payloads(plan.images, size=plan.payload_size)
    rows: list[Row] = result.setdefault("rows", [])
    _sweep(result, loaded, payloads, plan, recorder, max(budget.left() - reserve_s, 1.0))
    most_tokens = max([r["tokens_per_image"] for r in rows if r.get("img_s")] + [80.0])
    profile = step(result, "flops", recorder, partial(
        profile_model, loaded.model, loaded.processor, loaded.manifest.prompt,
        steps=int(most_tokens) + 2,
    ))  # fmt: skip
    del loaded
    if profile is not None:
        add_bound(rows, profile, PEAKS)
        result["flops"] = profile.summary(80.0)
        result["flops_vs_issue"] = compare_with_issue(shape, profile)
    result["knee"] = knee(rows)
    result["suggested_batch_size"] = suggest_batch_size(
        rows, result["device_memory_bytes"], args.memory_headroom
    )
    result["suggested_default"] = result["suggested_batch_size"].get(SERVICE_MODE.value)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the service suite starts its own process on this device
    recorder.save()
    return result, payloads
