"""The CPU benchmark suite (``make bench``): engine, service, baselines, in one run.

    python -m bench.run [--quick] [--model-dir DIR] [--out JSON]

Builds the demo model and fine-tunes it on the synthetic colour classes (so every image
decodes a full ~30-token JSON, as a real model would), then measures, in this order:

1. offline engine throughput against batch size, per decoding mode (:mod:`bench.offline`);
2. preprocessing (decode + resize + normalize) per core (:mod:`bench.preprocess`);
3. the service over loopback: closed-loop concurrency sweep, open-loop arrival, overload,
   both dispatch policies, peak RSS, and its ratios to the paper-style demo and to a bare
   FastAPI endpoint (:mod:`bench.serving`).

Prints Markdown tables and the line ``service/offline: <ratio>`` (the service at
saturation over the offline engine in the service's decoding mode at the service's max
batch size), and writes everything as JSON. Bounded: about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from bench import report
from bench.load import payloads
from bench.models import prepare_model
from bench.offline import img_s_at, knee, machine_line, markdown_table, offline_sweep
from bench.preprocess import preprocessing_per_core
from bench.serving import SERVICE_MODE, WAIT_POLICY_MS, service_suite
from service.settings import Settings

__all__ = ["main"]

RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
#: The service's defaults, which the offline reference must match.
SERVICE_MAX_BATCH: Final = Settings.model_construct().max_batch_size
BATCH_SIZES: Final = (1, 4, 16, 32, 64)


def preprocessing(quick: bool) -> list[dict[str, Any]]:
    return preprocessing_per_core(quick=quick, cuda_path=True)


def service_threads() -> int:
    """The torch threads the spawned service gives its model (FF_TORCH_THREADS unset)."""
    import torch

    from service.inference.engine import cpu_threads_for_model

    return cpu_threads_for_model(0, torch.device("cpu")) or torch.get_num_threads()


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def offline_reference(rows: list[dict[str, Any]]) -> float:
    """The offline figure the service is held to: its mode at its max batch size."""
    measured = img_s_at(rows, SERVICE_MODE, SERVICE_MAX_BATCH)
    if measured is None:
        raise RuntimeError("the offline sweep has no point at the service's mode and batch size")
    return measured


def render(result: dict[str, Any]) -> str:
    lines = [
        f"machine: {result['machine']}",
        f"suite wall time: {result['wall_s']:.0f} s",
        "",
        "## Offline engine: images/s against batch size, per decoding mode",
        "",
        markdown_table(result["offline"]),
        "",
        f"knee (smallest batch at >= 90% of the mode's best): {json.dumps(result['knee'])}",
        "",
        '## Preprocessing per core (one thread; "resize only" is what the CUDA path leaves to the host)',
        "",
        report.preprocessing_table(result["preprocessing"]),
        "",
        report.service_section(result["suite"], result["service_over_offline"], WAIT_POLICY_MS),
        "",
        f"The service's model runs on {result['service_torch_threads']} torch thread(s) "
        "(FF_TORCH_THREADS default: half the CPUs); the offline engine at that thread count: "
        f"{result['offline_at_service_threads']['img_s']:.1f} img/s, so "
        f"service/offline at equal model threads: "
        f"{result['service_over_offline_at_service_threads']:.3f}",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short points (smoke run)")
    parser.add_argument("--model-dir", type=Path, default=None, help="skip building the model")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "cpu-suite.json")
    args = parser.parse_args()

    started = time.perf_counter()
    images = payloads(64 if args.quick else 256)
    with tempfile.TemporaryDirectory(prefix="ff-bench-") as work:
        model_dir = args.model_dir or prepare_model(Path(work))
        offline = offline_sweep(
            model_dir, images,
            batch_sizes=(1, SERVICE_MAX_BATCH) if args.quick else BATCH_SIZES,
            images_per_point=32 if args.quick else 128,
            time_budget_s=1.0 if args.quick else 3.0,
        )  # fmt: skip
        # The service gives the model only part of the cores (FF_TORCH_THREADS); the same
        # point at that thread count separates "fewer cores" from "serving overhead".
        threads = service_threads()
        with torch_threads(threads):
            equal = offline_sweep(
                model_dir, images, batch_sizes=(SERVICE_MAX_BATCH,), modes=(SERVICE_MODE,),
                images_per_point=32 if args.quick else 128,
                time_budget_s=1.0 if args.quick else 3.0,
            )  # fmt: skip
        prep = preprocessing(args.quick)
        suite = service_suite(model_dir, images, quick=args.quick, device="cpu")
    result = {
        "machine": machine_line(),
        "wall_s": time.perf_counter() - started,
        "offline": offline,
        "knee": knee(offline),
        "preprocessing": prep,
        "suite": suite,
        "service_over_offline": suite["service"]["saturated_img_s"] / offline_reference(offline),
        "service_torch_threads": threads,
        "offline_at_service_threads": equal[0],
        "service_over_offline_at_service_threads": suite["service"]["saturated_img_s"]
        / offline_reference(equal),
    }
    print(render(result))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
