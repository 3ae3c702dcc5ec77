"""GPU benchmark: Florence-2-base and -large shapes (random weights) on one CUDA device.

    sh bench/gpu.sh --wheelhouse DIR --out OUT.json --preset florence-2-base   # one-shot
    python -m bench.gpu --preset florence-2-base --out OUT.json [--skip-service]
    python -m bench.gpu --dry-run --skip-service --out /tmp/dry.json    # CPU, same control flow

Per shape, within ONE wall-clock budget (``--budget-s``, default 300 s) that covers
everything (build, load, grammar compiles, the sweep, FLOP counting, the service suite),
with no network (HF_HUB_OFFLINE=1):

1. builds the shape on the device in its serving dtype into a cache directory (a rerun
   reuses it and does not re-hash it);
2. the offline engine sweep (``bench.offline``): images/s, tokens/img, decoder passes/img
   and peak device memory per (mode, batch size); every point is bounded in time and
   isolated (a failing point is recorded with its error and the sweep goes on);
3. FLOPs per image (``bench.flops``; three decoder passes counted, the rest exact by
   extrapolation) and each point's fraction of two named bounds: 790 TFLOP/s (what a
   large bf16 matmul measures on H100/H200) and 989 TFLOP/s (the datasheet dense peak);
4. the suggested default batch size: the jump-forward knee among batch sizes whose peak
   memory fits under ``--memory-headroom`` of the device;
5. the service under load, its baselines and ratios (``bench.serving``, imported only
   then: ``--skip-service`` needs neither FastAPI nor uvicorn), each part only if its
   time is left.

The report goes to ``--out`` (default ``bench/results/gpu-<device>.json``) after every
step and every sweep point, so a run cut short keeps all it measured. Random weights stop
at random, so plain decoding emits exactly ``--plain-max-new-tokens`` (80); constrained
modes stop where the grammar's random walk ends, so every figure comes with its
tokens/img. Jump-forward and constrained emit the same tokens only in float32: in bf16
they can differ at near-ties (see ``MODE_COMPARISON_NOTE``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import torch

from bench.flops import PEAKS
from bench.gpu_record import Budget, Recorder
from bench.gpu_shape import (
    MEMORY_HEADROOM,
    MODE_COMPARISON_NOTE,
    SERVICE_MODE,
    SERVICE_RESERVE_S,
    Plan,
    bench_shape,
)
from bench.offline import ALL_MODES, img_s_at, machine_line, markdown_table
from service.inference.decoding.decoders import DecodingMode

RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
DEFAULT_CACHE: Final = Path.home() / ".cache" / "fashion-florence" / "bench"
DEFAULT_SHAPES: Final = ("florence-2-base", "florence-2-large")
GPU_BATCH_SIZES: Final = (1, 8, 16, 32, 64, 128)
QUICK_BATCH_SIZES: Final = (1, 4)
#: Under the 8 minutes a GPU check gets, with room for gpu.sh's import check and tests.
DEFAULT_BUDGET_S: Final = 300.0
DRY_RUN_BUDGET_S: Final = 30.0


def device_slug(device: torch.device) -> str:
    name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu-{platform.machine()}"
    )
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _fail_points(specs: Sequence[str]) -> frozenset[tuple[str, int]]:
    points = set()
    for spec in specs:
        mode, _, size = spec.partition(":")
        points.add((DecodingMode(mode).value, int(size)))
    return frozenset(points)


def make_plan(args: argparse.Namespace) -> Plan:
    modes = tuple(DecodingMode(m.strip()) for m in args.modes.split(",") if m.strip())
    small = args.quick or args.dry_run
    sizes: tuple[int, ...] = QUICK_BATCH_SIZES if small else GPU_BATCH_SIZES
    if args.batch_sizes:
        sizes = tuple(int(s) for s in args.batch_sizes.split(",") if s.strip())
    return Plan(
        batch_sizes=sizes,
        modes=modes,
        images=8 if small else 64,
        images_per_point=4 if small else 256,
        point_budget_s=0.5 if small else args.point_budget_s,
        plain_max_new_tokens=args.plain_max_new_tokens,
        payload_size=128 if args.dry_run else 512,
        fail_points=_fail_points(args.fail_point),
    )


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--preset", default=None, help="one shape (same as --shapes SHAPE)")
    parser.add_argument("--shapes", default=",".join(DEFAULT_SHAPES))
    parser.add_argument("--modes", default=",".join(m.value for m in ALL_MODES))
    parser.add_argument("--batch-sizes", default=None, help="default 1,8,16,32,64,128")
    parser.add_argument("--quick", action="store_true", help="batch 1 and 4, a few images")
    parser.add_argument(
        "--dry-run", action="store_true",
        help="CPU, the demo shape, tiny points: the control flow of a GPU run in seconds",
    )  # fmt: skip
    parser.add_argument(
        "--fail-point", action="append", default=[], metavar="MODE:BATCH",
        help="make this sweep point raise (shows that a failed point is recorded and the "
        "run goes on)",
    )  # fmt: skip
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--service-full", action="store_true", help="service suite quick=False")
    parser.add_argument("--budget-s", type=float, default=None, help="the whole run")
    parser.add_argument("--point-budget-s", type=float, default=3.0)
    parser.add_argument(
        "--plain-max-new-tokens", type=int, default=None, help="80 (the dry run: 32)"
    )
    parser.add_argument("--memory-headroom", type=float, default=MEMORY_HEADROOM)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument(
        "--out", type=Path, default=None, help="default bench/results/gpu-<device>.json"
    )
    args = parser.parse_args(argv)
    if args.preset:
        args.shapes = args.preset
    if args.dry_run:
        args.device, args.shapes = "cpu", args.preset or "demo"
    if args.plain_max_new_tokens is None:
        args.plain_max_new_tokens = 32 if args.dry_run else 80
    if args.budget_s is None:
        args.budget_s = DRY_RUN_BUDGET_S if args.dry_run else DEFAULT_BUDGET_S
    return args


def print_shape(result: dict[str, Any]) -> None:
    print(f"\n## {result['shape']} ({json.dumps(result.get('step_s', {}))} s per step)\n")
    for name, error in result.get("errors", {}).items():
        print(f"step {name} failed: {error}")
    flops = result.get("flops")
    if flops is not None:
        bounds = ", ".join(
            f"{peak / 1e12:.0f} TFLOP/s ({name}): {peak / 1e9 / flops['gflop_per_image']:.0f} img/s"
            for name, peak in PEAKS.items()
        )
        print(
            f"FLOPs/image at 80 tokens: {flops['gflop_per_image']:.1f} GFLOP "
            f"(vision {100 * flops['vision_fraction']:.0f}%); compute bound at {bounds}"
        )
    issue = result.get("flops_vs_issue")
    if issue is not None:
        print(
            f"issue's figure: {issue['issue']['gflop_per_image']:.0f} GFLOP "
            f"(ours/issue {issue['ratio']:.2f})"
        )
    print(f"plain decoding fixed at {result['plain_max_new_tokens']} new tokens")
    print(f"note: {MODE_COMPARISON_NOTE}\n")
    rows = result.get("rows", [])
    print(markdown_table(rows))
    if any("bounds" in row for row in rows):
        names = list(PEAKS)
        print(f"\n% of bound in the table: against {names[0]}; against {names[1]}:")
        for row in rows:
            if "bounds" in row:
                share = 100 * row["bounds"][names[1]]["fraction"]
                print(f"- {row['mode']} batch {row['batch_size']}: {share:.2f}%")
    print(f"\nknee (>= 90% of best img/s): {json.dumps(result.get('knee'))}")
    print(
        f"suggested batch size (knee that fits {100 * MEMORY_HEADROOM:.0f}% of memory): "
        f"{json.dumps(result.get('suggested_batch_size'))}; service default "
        f"({SERVICE_MODE.value}): {result.get('suggested_default')}"
    )
    service = result.get("service")
    if service is None:
        return
    if "service" not in service or "saturated_img_s" not in service["service"]:
        print(f"service: {json.dumps(service, default=str)[:2000]}")
        return
    from bench.report import service_section
    from bench.serving import WAIT_POLICY_MS

    reference = img_s_at(rows, SERVICE_MODE, result["suggested_default"])
    ratio = service["service"]["saturated_img_s"] / reference if reference else float("nan")
    result["service_over_offline"] = ratio
    if "ratios" in service:
        print("\n" + service_section(service, ratio, WAIT_POLICY_MS))
    else:
        print(f"service saturated: {service['service']['saturated_img_s']:.1f} img/s")
    if "schedulers" in service:
        compared = service["schedulers"]
        print(f"iteration/static saturation img/s: {compared['saturation_img_s']:.3f}")
        for rate, p99 in compared["p99_at_rate"].items():
            print(f"iteration/static p99 at {rate} img/s offered: {p99:.3f}")
    else:
        print(f"iteration scheduler: {json.dumps(service.get('iteration'), default=str)[:300]}")


def service_figures(
    result: dict[str, Any], payloads: list[bytes], args: argparse.Namespace, budget: Budget
) -> dict[str, Any]:
    """The service suite at the suggested batch size, within what is left of the budget."""
    if result.get("suggested_default") is None:
        return {"skipped": f"no {SERVICE_MODE.value} point measured"}
    # Imported here: the service half needs FastAPI and uvicorn, the sweep does not.
    from bench.serving import service_suite

    env = {
        "FF_VERIFY_CHECKSUMS": "false", "FF_DEVICE": args.device,
        "FF_MAX_BATCH_SIZE": str(result["suggested_default"]), "HF_HUB_OFFLINE": "1",
    }  # fmt: skip
    return service_suite(
        Path(result["model_dir"]), payloads, extra_env=env, quick=not args.service_full,
        device=args.device, image_size=result["image_size"], deadline=budget.deadline,
        compare_schedulers=True,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    # gpu.sh exports it before Python starts (huggingface_hub reads it at import); this
    # covers a direct `python -m bench.gpu` for the service subprocesses at least.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = _parse_args(argv)
    budget = Budget(args.budget_s)
    plan = make_plan(args)
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: use --dry-run for the CPU run of the same steps")
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    name = "dry-run" if args.dry_run else device_slug(device)
    out = args.out or RESULTS_DIR / f"gpu-{name}.json"
    report: dict[str, Any] = {
        "machine": machine_line(), "peaks_tflops": {k: v / 1e12 for k, v in PEAKS.items()},
        "budget_s": args.budget_s, "dry_run": args.dry_run, "shapes": [],
        "mode_comparison_note": MODE_COMPARISON_NOTE,
    }  # fmt: skip
    recorder = Recorder(out, report)
    recorder.save()
    print(f"machine: {report['machine']}; budget {args.budget_s:.0f} s; writing {out}")
    per_shape_service = 0.0 if args.skip_service else SERVICE_RESERVE_S
    for index, shape in enumerate(shapes):
        remaining = len(shapes) - index
        # What the later shapes need (an equal share each) plus this shape's service part
        # is kept back from this sweep: time base leaves unused goes to large.
        later = (budget.left() / remaining) * (remaining - 1)
        result, payloads = bench_shape(
            shape, plan, args, budget, recorder, device, later + per_shape_service
        )
        if not args.skip_service and "rows" in result:
            result["service"] = service_figures(result, payloads, args, budget)
        report["wall_s"] = budget.spent()
        recorder.save()
        print_shape(result)
    report["wall_s"] = budget.spent()
    recorder.save()
    print(f"\nwrote {out} ({report['wall_s']:.0f} s of a {args.budget_s:.0f} s budget)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
