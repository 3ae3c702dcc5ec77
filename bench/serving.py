"""The service under load over loopback, and the ratios against its baselines.

:func:`service_suite` is the service half of both suites (``bench.run`` on CPU,
``bench.gpu`` on a GPU). Every server it starts is a subprocess on 127.0.0.1, measured by
the same closed-loop client (:func:`bench.baselines.measure`) or open-loop generator
(:func:`bench.load.open_loop`), and each run is bounded by a request count and a time
limit. It measures:

1. our service: a closed-loop concurrency sweep (images/s, p50/p90/p99, errors, the mean
   batch the service formed), open-loop arrival at fractions of the saturated rate and
   at 3x it (overload), peak RSS;
2. the dispatch policies: ``FF_BATCH_DISPATCH=idle`` (the sweep above) against ``wait``
   with ``FF_MAX_WAIT_MS`` at a few concurrencies;
3. the paper's one-request-at-a-time demo (per-request ``generate``, 3 beams);
4. plumbing: our real app with an instant backend against a bare FastAPI endpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from bench.baselines import measure, spawn_bare, spawn_instant, spawn_paper_demo
from bench.load import open_loop, summary
from bench.servers import (
    ENGINE_COUNTERS,
    ServerHandle,
    engine_counters,
    service_peak_rss_bytes,
    spawn_service,
)
from service.inference.engine import decoding_mode
from service.settings import Settings

Row = dict[str, Any]

#: The service's default decoding mode: what its offline reference must use too.
SERVICE_MODE: Final = decoding_mode(Settings.model_construct())
#: The policy ``wait`` is measured with this wait (the setting's default).
WAIT_POLICY_MS: Final = 5.0
#: The paper demo's beam count.
PAPER_BEAMS: Final = 3
#: A model server's start (load, grammar compile, warm-up) as budgeted for a GPU run.
STARTUP_S: Final = 30.0


@dataclass(frozen=True)
class SuitePlan:
    """How long each part runs; ``quick`` trades precision for time (smoke runs)."""

    concurrencies: tuple[int, ...] = (1, 4, 16, 32, 64)
    policy_concurrencies: tuple[int, ...] = (1, 4, 16, 32)
    open_fractions: tuple[float, ...] = (0.5, 0.9)
    point_s: float = 8.0
    max_requests: int = 3000
    baseline_concurrency: int = 32
    plumbing_concurrencies: tuple[int, ...] = (1, 32)

    @classmethod
    def quick(cls) -> SuitePlan:
        return cls((1, 8), (1, 8), (0.5,), 1.5, 300, 8, (1, 8))


def measure_ours(
    server: ServerHandle, payloads: list[bytes], concurrency: int, plan: SuitePlan
) -> Row:
    """One closed-loop point against our service, with the mean batch it formed and the
    fraction of the wall time its engine was running a batch (1.0 = never starved)."""
    before = engine_counters(server.base_url)
    row = measure(server.base_url, payloads, concurrency, plan.max_requests, plan.point_s)
    after = engine_counters(server.base_url)
    delta = {name: after[name] - before[name] for name in ENGINE_COUNTERS}
    batches = delta["ff_batch_size_count"]
    row["mean_batch"] = delta["ff_batch_size_sum"] / batches if batches else 0.0
    row["engine_busy"] = delta["ff_inference_duration_seconds_sum"] / max(row["wall_s"], 1e-9)
    return row


def open_point(base_url: str, payloads: list[bytes], rate: float, seconds: float) -> Row:
    tally = asyncio.run(open_loop(base_url, payloads, rate, int(rate * seconds) + 1, seconds))
    return {"rate_per_s": rate, **summary(tally)}


def sweep_service(
    model_dir: Path,
    payloads: list[bytes],
    env: Mapping[str, str],
    plan: SuitePlan,
    open_of_img_s: float | None = None,
) -> Row:
    """``open_of_img_s``: the open loop's rates are fractions of this (another server's
    saturation, to compare two at the same arrival rates) instead of this server's own."""
    with spawn_service(model_dir, env) as server:
        closed = [measure_ours(server, payloads, c, plan) for c in plan.concurrencies]
        saturated = max(row["img_s"] for row in closed)
        reference = open_of_img_s or saturated
        opened = [
            open_point(server.base_url, payloads, fraction * reference, plan.point_s)
            for fraction in plan.open_fractions
        ]
        overload = open_point(server.base_url, payloads, 3 * saturated, plan.point_s)
        rss = service_peak_rss_bytes(server.pid)
        cold = server.cold_start_s
    return {
        "cold_start_s": cold,
        "closed": closed,
        "open": opened,
        "overload": overload,
        "saturated_img_s": saturated,
        "peak_rss_bytes": rss,
    }


def wait_policy(
    model_dir: Path, payloads: list[bytes], env: Mapping[str, str], plan: SuitePlan
) -> list[Row]:
    policy = {"FF_BATCH_DISPATCH": "wait", "FF_MAX_WAIT_MS": str(WAIT_POLICY_MS)}
    with spawn_service(model_dir, {**env, **policy}) as server:
        return [measure_ours(server, payloads, c, plan) for c in plan.policy_concurrencies]


def paper_demo(model_dir: Path, payloads: list[bytes], device: str, plan: SuitePlan) -> Row:
    with spawn_paper_demo(model_dir, PAPER_BEAMS, device=device) as server:
        row = measure(
            server.base_url, payloads, plan.baseline_concurrency, plan.max_requests, plan.point_s
        )
        row["stats"] = httpx.get(f"{server.base_url}/stats", timeout=10, trust_env=False).json()
    return row


def plumbing(payloads: list[bytes], image_size: int, plan: SuitePlan) -> dict[str, list[Row]]:
    """Our app with a backend that costs nothing, against bare FastAPI (with and without a
    PIL decode, since our intake decodes), at each plumbing concurrency."""
    servers: dict[str, Callable[[], ServerHandle]] = {
        "bare": lambda: spawn_bare(),
        "bare_decode": lambda: spawn_bare(decode=True),
        "instant": lambda: spawn_instant(image_size=image_size),
    }
    out: dict[str, list[Row]] = {}
    for name, start in servers.items():
        with start() as server:
            out[name] = [
                measure(server.base_url, payloads, c, plan.max_requests, plan.point_s)
                for c in plan.plumbing_concurrencies
            ]
    return out


def service_suite(
    model_dir: Path,
    payloads: list[bytes],
    *,
    extra_env: Mapping[str, str] | None = None,
    quick: bool = False,
    image_size: int = 128,
    device: str = "auto",
    deadline: float | None = None,
    compare_schedulers: bool = False,
) -> Row:
    """All of the service figures; ``extra_env`` configures every spawn of our service.
    ``compare_schedulers``: last, the same sweep with ``FF_SCHEDULER=iteration`` at the
    static sweep's open-loop rates, and the ratios the scheduling goals are read from.

    With a ``deadline`` (``time.perf_counter()`` seconds) each part runs only if its
    estimated time is left, and a part that fails is recorded with its error while the
    others still run: a GPU run must end in time and keep what it measured."""
    plan = SuitePlan.quick() if quick else SuitePlan()
    env = dict(extra_env or {})
    parts: dict[str, tuple[float, Callable[[], Any]]] = {
        "service": (
            STARTUP_S + plan.point_s * (len(plan.concurrencies) + len(plan.open_fractions) + 1),
            lambda: sweep_service(model_dir, payloads, env, plan),
        ),
        "dispatch_wait": (
            STARTUP_S + plan.point_s * len(plan.policy_concurrencies),
            lambda: wait_policy(model_dir, payloads, env, plan),
        ),
        "paper_demo": (
            STARTUP_S + plan.point_s,
            lambda: paper_demo(model_dir, payloads, device, plan),
        ),
        "plumbing": (
            3 * (5.0 + plan.point_s * len(plan.plumbing_concurrencies)),
            lambda: plumbing(payloads, image_size, plan),
        ),
    }
    if compare_schedulers:
        parts["iteration"] = (
            parts["service"][0],
            lambda: sweep_service(
                model_dir, payloads, {**env, "FF_SCHEDULER": "iteration"}, plan,
                open_of_img_s=out.get("service", {}).get("saturated_img_s"),
            ),
        )  # fmt: skip
    out: Row = {"plan": plan.__dict__}
    for name, (estimate_s, work) in parts.items():
        if deadline is None:
            out[name] = work()
            continue
        left = deadline - time.perf_counter()
        if left < estimate_s:
            out[name] = {"skipped": f"{left:.0f} s left of the budget, ~{estimate_s:.0f} s needed"}
            continue
        try:
            out[name] = work()
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    if all(name in out and "error" not in out[name] and "skipped" not in out[name]
           for name in ("service", "paper_demo", "plumbing")):  # fmt: skip
        out["ratios"] = ratios(out["service"], out["paper_demo"], out["plumbing"])
    if "saturated_img_s" in out.get("iteration", {}):
        out["schedulers"] = scheduler_ratios(out["service"], out["iteration"])
    return out


def scheduler_ratios(static: Row, iteration: Row) -> Row:
    """iteration/static: saturation img/s, and p99 at each open-loop rate (the same
    arrival rates for both)."""
    return {
        "saturation_img_s": iteration["saturated_img_s"] / max(static["saturated_img_s"], 1e-9),
        "p99_at_rate": {
            f"{row['rate_per_s']:.1f}": other["p99_ms"] / max(row["p99_ms"], 1e-9)
            for row, other in zip(static["open"], iteration["open"], strict=True)
        },
    }


def _at(rows: Sequence[Row], concurrency: int) -> Row:
    return next(row for row in rows if row["concurrency"] == concurrency)


def ratios(service: Row, demo: Row, plumbing_rows: Mapping[str, list[Row]]) -> Row:
    low = min(row["concurrency"] for row in plumbing_rows["bare"])
    high = max(row["concurrency"] for row in plumbing_rows["bare"])
    instant, bare, bare_decode = (
        plumbing_rows[name] for name in ("instant", "bare", "bare_decode")
    )
    # Answers of any status: with random weights (GPU suite) the demo's output is rarely
    # valid, and its model time still counts. Equal to img/s when every answer is a 200.
    demo_rate: float = demo["answered_img_s"] if "answered_img_s" in demo else demo["img_s"]
    return {
        "service_over_paper_demo": service["saturated_img_s"] / max(demo_rate, 1e-9),
        "plumbing_over_bare": _at(instant, high)["img_s"] / max(_at(bare, high)["img_s"], 1e-9),
        "plumbing_over_bare_decode": _at(instant, high)["img_s"]
        / max(_at(bare_decode, high)["img_s"], 1e-9),
        "plumbing_added_p99_ms": _at(instant, low)["p99_ms"] - _at(bare, low)["p99_ms"],
        "plumbing_added_p99_ms_vs_decode": _at(instant, low)["p99_ms"]
        - _at(bare_decode, low)["p99_ms"],
        "plumbing_concurrency": high,
        "latency_concurrency": low,
    }
