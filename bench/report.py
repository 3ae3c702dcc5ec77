"""Markdown for the suite's figures: one table per part, ratios last.

Pure formatting of the dicts that :mod:`bench.serving` and :mod:`bench.offline` return,
so the CPU suite and the GPU suite print the same tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

Row = dict[str, Any]


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f}"


def closed_table(rows: Sequence[Row], *, with_batch: bool = True) -> str:
    head = "| clients | img/s | p50 ms | p90 ms | p99 ms | ok | errors |"
    head += " mean batch | engine busy |" if with_batch else ""
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for row in rows:
        line = (
            f"| {row['concurrency']} | {row['img_s']:.1f} | {_ms(row['p50_ms'])} | "
            f"{_ms(row['p90_ms'])} | {_ms(row['p99_ms'])} | {row['ok']} | {row['errors']} |"
        )
        if with_batch:
            line += (
                f" {row.get('mean_batch', 0.0):.1f} | {100 * row.get('engine_busy', 0.0):.0f}% |"
            )
        lines.append(line)
    return "\n".join(lines)


def open_table(rows: Sequence[Row]) -> str:
    lines = [
        "| offered req/s | sent | ok | refused (code: n) | ok img/s | p50 ms | p90 ms | p99 ms |"
        " refusal p50 ms | unexpected 5xx |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        refused = ", ".join(f"{code}: {n}" for code, n in row["by_code"].items()) or "none"
        lines.append(
            f"| {row['rate_per_s']:.0f} | {row['sent']} | {row['ok']} | {refused} | "
            f"{row['throughput_ok_per_s']:.1f} | {_ms(row['p50_ms'])} | {_ms(row['p90_ms'])} | "
            f"{_ms(row['p99_ms'])} | "
            f"{_ms(row['refusal_p50_ms'])} | {row['server_errors_5xx_unexpected']} |"
        )
    return "\n".join(lines)


def policy_table(idle: Sequence[Row], wait: Sequence[Row], wait_ms: float) -> str:
    lines = [
        f"| clients | idle img/s | idle p50 / p99 ms | idle mean batch | wait {wait_ms:g} ms img/s"
        " | wait p50 / p99 ms | wait mean batch |",
        "|---|---|---|---|---|---|---|",
    ]
    by_clients = {row["concurrency"]: row for row in idle}
    for row in wait:
        other = by_clients.get(row["concurrency"])
        if other is None:
            continue
        lines.append(
            f"| {row['concurrency']} | {other['img_s']:.1f} | {_ms(other['p50_ms'])} / "
            f"{_ms(other['p99_ms'])} | {other['mean_batch']:.1f} | {row['img_s']:.1f} | "
            f"{_ms(row['p50_ms'])} / {_ms(row['p99_ms'])} | {row['mean_batch']:.1f} |"
        )
    return "\n".join(lines)


def plumbing_table(plumbing: dict[str, list[Row]]) -> str:
    lines = ["| server | clients | img/s | p50 ms | p99 ms | errors |", "|---|---|---|---|---|---|"]
    for name, rows in plumbing.items():
        for row in rows:
            lines.append(
                f"| {name} | {row['concurrency']} | {row['img_s']:.1f} | {_ms(row['p50_ms'])} | "
                f"{_ms(row['p99_ms'])} | {row['errors']} |"
            )
    return "\n".join(lines)


def ratio_table(ratios: Row, service_over_offline: float) -> str:
    rows = [
        ("service at saturation / offline engine (same mode, same max batch)", "≥ 0.95",
         f"{service_over_offline:.3f}"),
        ("service at saturation / paper-style demo (1 request at a time, 3 beams)",
         "≥ 5 (CPU), ≥ 20 (GPU)", f"{ratios['service_over_paper_demo']:.1f}"),
        (f"plumbing: instant backend / bare FastAPI, {ratios['plumbing_concurrency']} clients",
         "≥ 0.6", f"{ratios['plumbing_over_bare']:.3f}"),
        ("plumbing: instant backend / bare FastAPI that also decodes",
         "-", f"{ratios['plumbing_over_bare_decode']:.3f}"),
        (f"plumbing: added p99 at {ratios['latency_concurrency']} client(s) vs bare",
         "≤ 5 ms", f"{ratios['plumbing_added_p99_ms']:.2f} ms"),
        ("plumbing: added p99 vs bare that also decodes",
         "-", f"{ratios['plumbing_added_p99_ms_vs_decode']:.2f} ms"),
    ]  # fmt: skip
    lines = ["| ratio | goal | measured |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def preprocessing_table(rows: Sequence[Row]) -> str:
    lines = [
        "| images | model size px | step | img/s per core | ms per image |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['images']} | {row['size']} | {row.get('step', '')} | {row['img_s']:.1f} | "
            f"{1000 / row['img_s']:.2f} |"
        )
    return "\n".join(lines)


def service_section(suite: Row, service_over_offline: float, wait_ms: float) -> str:
    """Every table of :func:`bench.serving.service_suite`'s result, ratios last."""
    service = suite["service"]
    lines = [
        "## Service, closed loop over loopback (FF_BATCH_DISPATCH=idle)",
        "",
        closed_table(service["closed"]),
        "",
        f"cold start (spawn to /readyz 200): {service['cold_start_s']:.2f} s; "
        f"peak RSS of the service (all its processes): {service['peak_rss_bytes'] / 2**20:.0f} MiB",
        "",
        "## Service, open loop (constant arrival rate; the last row is 3x saturation)",
        "",
        open_table([*service["open"], service["overload"]]),
        "",
        "## Dispatch policy: idle (dispatch when the engine is free) vs wait",
        "",
        policy_table(service["closed"], suite["dispatch_wait"], wait_ms),
        "",
        "## Baselines",
        "",
        "Paper-style demo (one request at a time, per-request generate, 3 beams):",
        "",
        closed_table([suite["paper_demo"]], with_batch=False),
        "",
        "Plumbing (no model): bare FastAPI, bare FastAPI + PIL decode, our app + instant backend:",
        "",
        plumbing_table(suite["plumbing"]),
        "",
        "## Ratios",
        "",
        ratio_table(suite["ratios"], service_over_offline),
        "",
        f"service/offline: {service_over_offline:.3f}",
    ]
    return "\n".join(lines)
