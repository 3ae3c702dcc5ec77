"""The suite's Markdown, from hand-made figures: every table renders and the ratios are
the ones computed from the rows (no server needed)."""

from __future__ import annotations

import math
from typing import Any

from bench.report import service_section
from bench.serving import ratios


def _closed(clients: int, img_s: float, p99: float) -> dict[str, Any]:
    return {
        "concurrency": clients, "img_s": img_s, "p50_ms": p99 / 2, "p90_ms": p99 * 0.9,
        "p99_ms": p99, "ok": 10, "errors": 0, "mean_batch": 2.0, "engine_busy": 0.5,
    }  # fmt: skip


def _open(rate: float) -> dict[str, Any]:
    return {
        "rate_per_s": rate, "sent": 10, "ok": 8, "by_code": {"queue_full": 2},
        "throughput_ok_per_s": 8.0, "p50_ms": 1.0, "p90_ms": 1.5, "p99_ms": 2.0,
        "refusal_p50_ms": math.nan, "server_errors_5xx_unexpected": 0,
    }  # fmt: skip


def test_service_section_renders_every_part_and_the_ratio_line() -> None:
    plumbing = {
        "bare": [_closed(1, 1000.0, 1.0), _closed(32, 4000.0, 10.0)],
        "bare_decode": [_closed(1, 500.0, 2.0), _closed(32, 2000.0, 20.0)],
        "instant": [_closed(1, 400.0, 3.0), _closed(32, 1000.0, 30.0)],
    }
    service = {
        "closed": [_closed(1, 50.0, 20.0), _closed(32, 200.0, 400.0)],
        "open": [_open(100.0)], "overload": _open(600.0), "saturated_img_s": 200.0,
        "cold_start_s": 4.0, "peak_rss_bytes": 600 * 2**20,
    }  # fmt: skip
    demo = _closed(32, 10.0, 3000.0)
    suite: dict[str, Any] = {
        "service": service,
        "dispatch_wait": [_closed(1, 40.0, 25.0)],
        "paper_demo": demo,
        "plumbing": plumbing,
        "ratios": ratios(service, demo, plumbing),
    }
    assert suite["ratios"]["service_over_paper_demo"] == 20.0
    assert suite["ratios"]["plumbing_over_bare"] == 0.25
    assert suite["ratios"]["plumbing_added_p99_ms"] == 2.0  # at the lowest concurrency
    text = service_section(suite, 0.5, 5.0)
    assert text.endswith("service/offline: 0.500")
    assert "| 1 | 50.0 | 10.0 / 20.0 | 2.0 | 40.0 | 12.5 / 25.0 | 2.0 |" in text  # policy
    assert "queue_full: 2" in text
    assert "| 600 |" in text  # the overload row
    assert "600 MiB" in text
