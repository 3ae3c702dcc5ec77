"""Offline engine throughput against batch size, per decoding mode.

    python -m bench.offline [--model-dir DIR] [--batch-sizes 1,2,4,8,16,32,64]
        [--modes plain,constrained,jump-forward] [--host-repeats N] [--out JSON]

Without ``--model-dir`` the demo model is built and fine-tuned on the colour classes first,
as ``bench.run`` does. Every image is preprocessed once before any timing (preprocessing
is measured on its own elsewhere); a point then runs ``engine.run_batch`` on batches drawn
round-robin from that pool until it has ``images_per_point`` images or has spent
``time_budget_s``, whichever comes first, and reports how many images it measured.

Only ``preprocess`` and ``run_batch`` are used, so what ``preprocess`` returns (a host
array, or a device tensor on CUDA) goes back to the engine untouched.

On CPU the run ends with two lines from the same run: ``host ms/step @32: <ms>``
(:mod:`bench.host_step`, the jump-forward loop's host time per decoder step at batch 32,
the model excluded) and ``jump-forward/plain, worst batch: <ratio>`` (the smallest ratio
of the two modes' images/s over the batch sizes measured).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import torch
from PIL import Image

from bench.host_step import host_rows
from bench.host_step import markdown as host_markdown
from bench.load import payloads as synthetic_payloads
from bench.models import prepare_model
from bench.sweep_table import img_s_at, knee, markdown_table, worst_ratio
from model_store.loading import LoadedModel
from service.backend import DeviceFatalError, DeviceOutOfMemoryError, PreparedImage
from service.inference.decoding.decoders import Decoded, Decoder, DecodingMode
from service.inference.engine import FlorenceEngine

DEFAULT_BATCH_SIZES: Final = (1, 2, 4, 8, 16, 32, 64)
ALL_MODES: Final = tuple(DecodingMode)
#: Constrained modes get the service's default bound: the grammar ends their output, and
#: a smaller bound than the schema's longest output is refused by the engine.
CONSTRAINED_MAX_NEW_TOKENS: Final = 256

Row = dict[str, Any]

#: Callers read the sweep's rows through this module too (moved to keep it short).
__all__ = ["img_s_at", "knee", "markdown_table", "worst_ratio"]


class PassCounter:
    """Wraps an engine's decoder to add up ``Decoded.forward_passes``, which the engine's
    ``ItemOutcome`` does not carry. Per row, as each decoder reports it."""

    def __init__(self, inner: Decoder) -> None:
        self._inner = inner
        self.mode = inner.mode
        self.grammar = inner.grammar
        self.passes = 0

    def decode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor
    ) -> list[Decoded]:
        rows = self._inner.decode(input_ids, attention_mask, pixel_values)
        self.passes += sum(row.forward_passes for row in rows)
        return rows


def count_passes(engine: FlorenceEngine) -> PassCounter | None:
    """The engine's :class:`PassCounter`, installed on first use, if the engine still keeps
    its decoder in ``_decoder`` (a private detail: without it rows carry no pass count)."""
    inner = getattr(engine, "_decoder", None)
    if isinstance(inner, PassCounter):
        return inner
    if inner is None or not hasattr(inner, "decode"):
        return None
    counter = PassCounter(inner)
    engine._decoder = counter  # bench-only instrumentation of a private attribute
    return counter


def load(model_dir: Path, *, device: str = "auto", verify_checksums: bool = True) -> LoadedModel:
    """Load ``model_dir`` on ``device`` in the engine's default dtype (bf16 on CUDA)."""
    from model_store.loading import load_model
    from service.inference.engine import resolve_device, resolve_dtype

    target = resolve_device(device)
    return load_model(
        str(model_dir),
        device=target,
        dtype=resolve_dtype("auto", target),
        verify_checksums=verify_checksums,
    )


def engines_for(
    loaded: LoadedModel,
    modes: Sequence[DecodingMode],
    *,
    max_new_tokens: int = CONSTRAINED_MAX_NEW_TOKENS,
    plain_exact_tokens: bool = False,
) -> dict[DecodingMode, FlorenceEngine]:
    """An engine per mode over one loaded model (a 0.77B model loads once, not 3 times).

    ``max_new_tokens`` bounds plain decoding only; constrained modes keep
    :data:`CONSTRAINED_MAX_NEW_TOKENS` (their grammar ends the output). With
    ``plain_exact_tokens`` plain decoding emits exactly ``max_new_tokens`` tokens: random
    weights would otherwise stop after a random number (often at once) and the plain
    figures would measure the vision tower alone.
    """
    engines: dict[DecodingMode, FlorenceEngine] = {}
    for mode in modes:
        if mode is DecodingMode.PLAIN:
            model = _exact_length(loaded, max_new_tokens) if plain_exact_tokens else loaded
            engines[mode] = FlorenceEngine(model, max_new_tokens=max_new_tokens, decoding=mode)
        else:
            engines[mode] = FlorenceEngine(
                loaded, max_new_tokens=CONSTRAINED_MAX_NEW_TOKENS, decoding=mode
            )
    return engines


def _exact_length(loaded: LoadedModel, tokens: int) -> LoadedModel:
    """The same weights behind a generation config that suppresses ``</s>`` until
    ``tokens`` new tokens (``generate`` reads ``min_new_tokens`` from the model's config).
    A shallow copy, so the constrained engines' ``generate`` keeps the original config:
    there a grammar-required ``</s>`` must stay allowed."""
    model = copy.copy(loaded.model)
    model.generation_config = copy.deepcopy(loaded.model.generation_config)
    model.generation_config.min_new_tokens = tokens
    return replace(loaded, model=model)


def prepare_images(
    engine: FlorenceEngine, images: Sequence[bytes] | Sequence[Image.Image]
) -> list[PreparedImage]:
    pictures = [
        Image.open(io.BytesIO(item)).convert("RGB") if isinstance(item, bytes) else item
        for item in images
    ]
    return [engine.preprocess(picture) for picture in pictures]


def _memory_hooks(device: torch.device) -> tuple[Callable[[], None], Callable[[], int | None]]:
    if device.type != "cuda":
        return (lambda: None), (lambda: None)

    def reset() -> None:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)

    return reset, lambda: int(torch.cuda.max_memory_allocated(device))


def measure_point(
    engine: FlorenceEngine,
    prepared: Sequence[PreparedImage],
    size: int,
    target: int,
    budget_s: float,
) -> Row:
    """One (mode, batch size) point: a warm-up batch, then timed batches until the image
    target or the time budget is reached (the first timed batch always runs)."""
    counter = count_passes(engine)
    device = torch.device(engine.info.device)
    reset_peak, peak = _memory_hooks(device)

    def batch_at(index: int) -> list[PreparedImage]:
        return [prepared[(index * size + k) % len(prepared)] for k in range(size)]

    started_point = time.perf_counter()
    reset_peak()
    engine.run_batch(batch_at(0))  # new shapes pay for allocation and kernel selection
    passes_before = 0 if counter is None else counter.passes
    images = tokens = valid = batches = 0
    started = time.perf_counter()
    while images < target:
        if batches and time.perf_counter() - started >= budget_s:
            break
        outcomes = engine.run_batch(batch_at(batches + 1))
        batches += 1
        images += len(outcomes)
        tokens += sum(o.generated_tokens for o in outcomes)
        valid += sum(o.ok for o in outcomes)
    wall = time.perf_counter() - started
    passes = None if counter is None else counter.passes - passes_before
    return {
        "batch_size": size,
        "images": images,
        "batches": batches,
        "complete": images >= target,
        "img_s": images / wall,
        "tokens_per_image": tokens / images,
        "forward_passes_per_image": None if passes is None else passes / images,
        "valid": valid,
        "peak_device_memory_bytes": peak(),
        "wall_s": wall,
        "point_wall_s": time.perf_counter() - started_point,
        "oom": False,
    }


def _failed_row(mode: DecodingMode, size: int, reason: str, error: str | None = None) -> Row:
    return {
        "mode": mode.value, "batch_size": size, "images": 0, "img_s": None,
        "tokens_per_image": None, "forward_passes_per_image": None,
        "peak_device_memory_bytes": None, "wall_s": 0.0,
        "oom": reason == "oom", "skipped": None if reason in ("oom", "error") else reason,
        "error": error,
    }  # fmt: skip


def _release(engine: FlorenceEngine) -> None:
    """After a failed point: give back what its batch held before the next one."""
    if torch.device(engine.info.device).type == "cuda":
        torch.cuda.empty_cache()


def sweep_engines(
    engines: dict[DecodingMode, FlorenceEngine],
    prepared: Sequence[PreparedImage],
    *,
    batch_sizes: Sequence[int],
    images_per_point: int,
    time_budget_s: float,
    sweep_budget_s: float | None = None,
    on_row: Callable[[Row], None] | None = None,
    fail_points: frozenset[tuple[str, int]] = frozenset(),
) -> list[Row]:
    """Batch sizes outer, modes inner, so a sweep cut short by ``sweep_budget_s`` loses the
    largest batches of every mode alike. A point is skipped when its predicted time (two
    batches at the mode's last per-image time) would pass that budget; after a device OOM
    the mode's larger batch sizes are skipped.

    Every point is isolated: an error in one is recorded in its row (``error``) and the
    sweep goes on, except after a fatal device error, when every later point would fail
    too and is skipped. ``on_row`` gets each row as soon as it exists (the caller writes
    its report there, so a run cut short keeps every point it measured). ``fail_points``
    ((mode, batch size) pairs) raise inside the point instead of running it: how the dry
    run shows the isolation."""
    deadline = None if sweep_budget_s is None else time.perf_counter() + sweep_budget_s
    seconds_per_image: dict[DecodingMode, float] = {}
    out_of_memory: set[DecodingMode] = set()
    fatal: str | None = None
    rows: list[Row] = []

    def record(row: Row) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)

    for size in sorted(batch_sizes):
        for mode, engine in engines.items():
            if fatal is not None:
                record(_failed_row(mode, size, f"device unusable after: {fatal}"))
                continue
            if mode in out_of_memory:
                record(_failed_row(mode, size, "larger batch ran out of memory"))
                continue
            predicted = 2 * size * seconds_per_image.get(mode, 0.0)
            if deadline is not None and time.perf_counter() + predicted > deadline:
                record(_failed_row(mode, size, "sweep time budget spent"))
                continue
            error: str | None = None
            try:
                if (mode.value, size) in fail_points:
                    raise RuntimeError(f"injected failure at {mode.value} batch {size}")
                row = measure_point(
                    engine, prepared, size, max(images_per_point, size), time_budget_s
                )
            except DeviceOutOfMemoryError:
                out_of_memory.add(mode)
                error = "oom"
            except DeviceFatalError as exc:
                fatal = error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            if error is not None:
                # Outside the except block, so the traceback no longer pins the batch.
                _release(engine)
                oom = error == "oom"
                record(_failed_row(mode, size, "oom" if oom else "error", None if oom else error))
                continue
            seconds_per_image[mode] = 1.0 / row["img_s"]
            record({"mode": mode.value, **row})
    return rows


def offline_sweep(
    model_dir: Path,
    payloads: Sequence[bytes] | Sequence[Image.Image],
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    modes: Sequence[DecodingMode] = ALL_MODES,
    device: str = "auto",
    images_per_point: int = 64,
    time_budget_s: float = 2.0,
    sweep_budget_s: float | None = None,
    max_new_tokens: int = CONSTRAINED_MAX_NEW_TOKENS,
    plain_exact_tokens: bool = False,
    verify_checksums: bool = True,
) -> list[Row]:
    """Engine images/s for every (mode, batch size): see :func:`sweep_engines`."""
    loaded = load(model_dir, device=device, verify_checksums=verify_checksums)
    engines = engines_for(
        loaded, modes, max_new_tokens=max_new_tokens, plain_exact_tokens=plain_exact_tokens
    )
    prepared = prepare_images(next(iter(engines.values())), payloads)
    return sweep_engines(
        engines,
        prepared,
        batch_sizes=batch_sizes,
        images_per_point=images_per_point,
        time_budget_s=time_budget_s,
        sweep_budget_s=sweep_budget_s,
    )


def machine_line() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    return (
        f"{platform.machine()} {os.cpu_count()} cpus, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f} (torch {torch.__version__})"
    )


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=None, help="default: trained demo")
    parser.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)))
    parser.add_argument("--modes", default=",".join(m.value for m in ALL_MODES))
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--images", type=int, default=64, help="distinct images in the pool")
    parser.add_argument(
        "--images-per-point", type=int, default=192, help="3 batches at 64: one is noise"
    )
    parser.add_argument("--time-budget-s", type=float, default=2.0, help="per point")
    parser.add_argument(
        "--sweep-budget-s", type=float, default=80.0, help="whole sweep; later points skip"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=CONSTRAINED_MAX_NEW_TOKENS, help="plain mode"
    )
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch intra-op threads; 1 on a host shared with other work, where a preempted "
        "intra-op thread stalls every multi-threaded op (figures swing 100x otherwise)",
    )  # fmt: skip
    parser.add_argument(
        "--host-repeats", type=int, default=5,
        help="decodes per batch size for host ms/step (CPU only; 0 skips it)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    return parser.parse_args()


def main() -> int:
    args = _parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    modes = [DecodingMode(m.strip()) for m in args.modes.split(",") if m.strip()]
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="ff-bench-offline-") as work:
        if args.model_dir is None:
            args.model_dir = prepare_model(Path(work))
        started = time.perf_counter()
        rows = offline_sweep(
            args.model_dir, synthetic_payloads(args.images),
            batch_sizes=sizes, modes=modes, device=args.device,
            images_per_point=args.images_per_point, time_budget_s=args.time_budget_s,
            sweep_budget_s=args.sweep_budget_s, max_new_tokens=args.max_new_tokens,
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        host = host_rows(args.model_dir, sorted({*sizes, 32}), args.host_repeats)
    print(f"machine: {machine_line()}; sweep {elapsed:.1f} s\n")
    print(markdown_table(rows))
    knees = knee(rows)
    print("\nknee (smallest batch at >= 90% of the mode's best img/s): " + json.dumps(knees))
    ratio = worst_ratio(rows, DecodingMode.JUMP_FORWARD, DecodingMode.PLAIN)
    if host:
        print("\njump-forward host time per decoder step (model excluded):\n")
        print(host_markdown(host))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "machine": machine_line(), "sweep_s": elapsed, "knee": knees, "rows": rows,
            "host_ms_per_step": host, "jump_forward_over_plain_worst": ratio,
        }  # fmt: skip
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    at_32 = next((r["host_ms_per_step"] for r in host if r["batch_size"] == 32), None)
    print(f"host ms/step @32: {'-' if at_32 is None else f'{at_32:.3f}'}")
    print(f"jump-forward/plain, worst batch: {'-' if ratio is None else f'{ratio:.3f}'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
