"""GPU benchmark: Florence-2-base and -large shapes (random weights) on one CUDA device.

    sh bench/gpu.sh [--shapes florence-2-base,florence-2-large] [--skip-service] [--quick]
    python -m bench.gpu --device cpu --shapes demo --quick --skip-service   # CPU smoke test

Per shape, within one wall-clock budget (default 420 s for the whole run, under the
8 minutes a GPU check gets), with no network (HF_HUB_OFFLINE=1):

1. builds the shape once into a cache directory (a rerun reuses it; checksums are not
   re-hashed on load: the cache is ours, and hashing 3 GB costs seconds per load);
2. the offline engine sweep (``bench.offline``): images/s, tokens/img, decoder passes/img
   and peak device memory per (mode, batch size), each point bounded in time;
3. FLOPs per image (``bench.flops``) and each point's fraction of the compute bound;
4. the suggested default batch size: the jump-forward knee among batch sizes whose peak
   memory fits under ``--memory-headroom`` of the device;
5. :func:`bench.serving.service_suite`: the service under load, its baselines and ratios.

Random weights stop at random (often at once), so plain decoding emits exactly
``--plain-max-new-tokens`` (80, the issue's output length); constrained modes stop where
the grammar's random walk ends, so every throughput figure comes with its tokens/img.
Writes ``bench/results/gpu-<device>.json`` (after every shape, so a cut-short run keeps
what it measured) and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch

from bench.flops import DEFAULT_PEAK_FLOPS, FlopProfile, compare_with_issue, profile_model
from bench.load import payloads as synthetic_payloads
from bench.offline import (
    ALL_MODES,
    Row,
    engines_for,
    img_s_at,
    knee,
    load,
    machine_line,
    markdown_table,
    prepare_images,
    sweep_engines,
)
from bench.report import service_section
from bench.serving import SERVICE_MODE, WAIT_POLICY_MS, service_suite
from service.inference.decoding.decoders import DecodingMode

RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
DEFAULT_CACHE: Final = Path.home() / ".cache" / "fashion-florence" / "bench"
DEFAULT_SHAPES: Final = ("florence-2-base", "florence-2-large")
GPU_BATCH_SIZES: Final = (1, 8, 16, 32, 64, 128)
QUICK_BATCH_SIZES: Final = (1, 4)
#: The service's default mode: the suggested batch size is its knee.
#: The service needs room beyond the sweep's peak (the next batch's inputs, fragmentation).
MEMORY_HEADROOM: Final = 0.85
#: Keep this much of the run's budget for the service suite of each shape.
SERVICE_RESERVE_S: Final = 90.0  # the quick suite took ~65 s on the CPU demo


@dataclass(frozen=True, slots=True)
class Plan:
    shapes: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    modes: tuple[DecodingMode, ...]
    images: int
    images_per_point: int
    point_budget_s: float
    plain_max_new_tokens: int


def ensure_shape(shape: str, cache_dir: Path) -> tuple[Path, float]:
    """The shape's model directory, built on first use; returns it and the build seconds."""
    from model_store.build import build_model
    from model_store.manifest import ManifestError, verify_directory

    directory = cache_dir / shape
    try:
        verify_directory(directory, check_checksums=False)
        return directory, 0.0
    except ManifestError:
        started = time.perf_counter()
        build_model(shape, directory)
        return directory, time.perf_counter() - started


def device_slug(device: torch.device) -> str:
    name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{platform.machine()}"
    )
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


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


def add_bound(rows: Sequence[Row], profile: FlopProfile, peak_flops: float) -> None:
    """FLOPs per image at each row's own tokens/img, the bound, and the fraction of it."""
    for row in rows:
        if row.get("img_s") is None:
            continue
        flops = profile.per_image(row["tokens_per_image"])
        row["gflop_per_image"] = flops / 1e9
        row["bound_img_s"] = peak_flops / flops
        row["fraction_of_bound"] = row["img_s"] / row["bound_img_s"]


def run_service(
    model_dir: Path, payloads: list[bytes], env: dict[str, str], *, quick: bool, **options: Any
) -> dict[str, Any]:
    """:func:`bench.serving.service_suite`; never fatal: a failed service run must not lose
    the sweep's figures."""
    try:
        return service_suite(model_dir, payloads, extra_env=env, quick=quick, **options)
    except Exception as exc:
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"}


def bench_shape(
    shape: str, plan: Plan, args: argparse.Namespace, sweep_budget_s: float
) -> dict[str, Any]:
    started = time.perf_counter()
    model_dir, build_s = ensure_shape(shape, args.cache_dir)
    loaded = load(model_dir, device=args.device, verify_checksums=False)
    engines = engines_for(
        loaded, plan.modes, max_new_tokens=plan.plain_max_new_tokens, plain_exact_tokens=True
    )
    payloads = synthetic_payloads(plan.images, size=512)
    prepared = prepare_images(next(iter(engines.values())), payloads)
    device = next(loaded.model.parameters()).device
    rows = sweep_engines(
        engines, prepared,
        batch_sizes=plan.batch_sizes, images_per_point=plan.images_per_point,
        time_budget_s=plan.point_budget_s, sweep_budget_s=sweep_budget_s,
    )  # fmt: skip
    most_tokens = max([r["tokens_per_image"] for r in rows if r.get("img_s")] + [80.0])
    profile = profile_model(
        loaded.model, loaded.processor, loaded.manifest.prompt, steps=math.ceil(most_tokens) + 1
    )
    add_bound(rows, profile, args.peak_tflops * 1e12)
    total_memory = device_memory(device)
    suggested = suggest_batch_size(rows, total_memory, args.memory_headroom)
    image_size = loaded.manifest.image_size
    del engines, loaded, prepared
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the service suite starts its own process on this device
    return {
        "shape": shape,
        "model_dir": str(model_dir),
        "build_s": build_s,
        "image_size": image_size,
        "plain_max_new_tokens": plan.plain_max_new_tokens,
        "device_memory_bytes": total_memory,
        "flops": profile.summary(80.0),
        "flops_vs_issue": compare_with_issue(shape, profile),
        "rows": rows,
        "knee": knee(rows),
        "suggested_batch_size": suggested,
        "suggested_default": suggested.get(SERVICE_MODE.value),
        "sweep_s": time.perf_counter() - started,
        "payloads": payloads,  # dropped before writing; the service suite sends them
    }


def print_shape(result: dict[str, Any], peak_tflops: float) -> None:
    flops = result["flops"]
    print(f"\n## {result['shape']} ({result['sweep_s']:.0f} s, build {result['build_s']:.0f} s)\n")
    print(
        f"FLOPs/image at 80 tokens: {flops['gflop_per_image']:.1f} GFLOP "
        f"(vision {100 * flops['vision_fraction']:.0f}%); bound at {peak_tflops:.0f} TFLOP/s: "
        f"{peak_tflops * 1e3 / flops['gflop_per_image']:.0f} img/s"
    )
    issue = result["flops_vs_issue"]
    if issue is not None:
        print(
            f"issue's figure: {issue['issue']['gflop_per_image']:.0f} GFLOP (ours/issue {issue['ratio']:.2f})"
        )
    print(f"plain decoding fixed at {result['plain_max_new_tokens']} new tokens\n")
    print(markdown_table(result["rows"]))
    print(f"\nknee (>= 90% of best img/s): {json.dumps(result['knee'])}")
    print(
        f"suggested batch size (knee that fits {100 * MEMORY_HEADROOM:.0f}% of memory): "
        f"{json.dumps(result['suggested_batch_size'])}; service default ({SERVICE_MODE.value}): "
        f"{result['suggested_default']}"
    )
    service = result.get("service")
    if service is None or "service" not in service:
        print(f"service: {json.dumps(service, default=str)[:2000]}")
        return
    reference = img_s_at(result["rows"], SERVICE_MODE, result["suggested_default"])
    ratio = service["service"]["saturated_img_s"] / reference if reference else float("nan")
    result["service_over_offline"] = ratio
    print("\n" + service_section(service, ratio, WAIT_POLICY_MS))


def make_plan(args: argparse.Namespace) -> Plan:
    modes = tuple(DecodingMode(m.strip()) for m in args.modes.split(",") if m.strip())
    sizes: tuple[int, ...] = QUICK_BATCH_SIZES if args.quick else GPU_BATCH_SIZES
    if args.batch_sizes:
        sizes = tuple(int(s) for s in args.batch_sizes.split(",") if s.strip())
    return Plan(
        shapes=tuple(s.strip() for s in args.shapes.split(",") if s.strip()),
        batch_sizes=sizes,
        modes=modes,
        images=8 if args.quick else 64,
        images_per_point=4 if args.quick else 256,
        point_budget_s=0.5 if args.quick else args.point_budget_s,
        plain_max_new_tokens=args.plain_max_new_tokens,
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--shapes", default=",".join(DEFAULT_SHAPES))
    parser.add_argument("--modes", default=",".join(m.value for m in ALL_MODES))
    parser.add_argument("--batch-sizes", default=None, help="default 1,8,16,32,64,128")
    parser.add_argument("--quick", action="store_true", help="batch 1 and 4, a few images")
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--service-full", action="store_true", help="service suite quick=False")
    parser.add_argument("--budget-s", type=float, default=420.0, help="the whole run")
    parser.add_argument("--point-budget-s", type=float, default=3.0)
    parser.add_argument("--plain-max-new-tokens", type=int, default=80)
    parser.add_argument("--peak-tflops", type=float, default=DEFAULT_PEAK_FLOPS / 1e12)
    parser.add_argument("--memory-headroom", type=float, default=MEMORY_HEADROOM)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--out", type=Path, default=None, help="default bench/results/gpu-<device>.json"
    )
    return parser.parse_args(argv)


def service_figures(
    result: dict[str, Any], payloads: list[bytes], args: argparse.Namespace, left_s: float
) -> dict[str, Any]:
    """The service suite at the suggested batch size, if there is time and a suggestion."""
    if result["suggested_default"] is None:
        return {"skipped": f"no {SERVICE_MODE.value} point measured"}
    if left_s < SERVICE_RESERVE_S / 2:
        print(f"note: {left_s:.0f} s left of the budget; service figures skipped")
        return {"skipped": f"{left_s:.0f} s left of the budget"}
    env = {
        "FF_VERIFY_CHECKSUMS": "false", "FF_DEVICE": args.device,
        "FF_MAX_BATCH_SIZE": str(result["suggested_default"]), "HF_HUB_OFFLINE": "1",
    }  # fmt: skip
    return run_service(
        Path(result["model_dir"]), payloads, env, quick=not args.service_full,
        device=args.device, image_size=result["image_size"],
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    # gpu.sh exports it before Python starts (huggingface_hub reads it at import); this
    # covers a direct `python -m bench.gpu` for the service subprocesses at least.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = _parse_args(argv)
    deadline = time.perf_counter() + args.budget_s
    plan = make_plan(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --device cpu --shapes demo --quick for a smoke test")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    out = args.out or RESULTS_DIR / f"gpu-{device_slug(device)}.json"
    report: dict[str, Any] = {
        "machine": machine_line(), "peak_tflops": args.peak_tflops,
        "budget_s": args.budget_s, "shapes": [],
    }  # fmt: skip
    print(f"machine: {report['machine']}")
    reserve = 0.0 if args.skip_service else SERVICE_RESERVE_S
    for index, shape in enumerate(plan.shapes):
        remaining = len(plan.shapes) - index
        # An equal share of what is left: time the smaller base shape leaves unused goes
        # to large. 80% of it for the sweep; the rest builds, loads and counts FLOPs.
        share = (deadline - time.perf_counter()) / remaining - reserve
        result = bench_shape(shape, plan, args, sweep_budget_s=max(0.8 * share, 10.0))
        payloads = result.pop("payloads")
        if not args.skip_service:
            left = deadline - time.perf_counter() - reserve * (remaining - 1)
            result["service"] = service_figures(result, payloads, args, left)
        report["shapes"].append(result)
        print_shape(result, args.peak_tflops)
        # After every shape, so a run cut short keeps what it measured.
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    report["wall_s"] = args.budget_s - (deadline - time.perf_counter())
    out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nwrote {out} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
