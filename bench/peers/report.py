"""Tables (Markdown) and plots (matplotlib, to docs/img/) of a peers run."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from bench.peers.load_runs import median_at

Row = dict[str, Any]
IMG_DIR: Final = Path(__file__).resolve().parents[2] / "docs" / "img"


def _f(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def closed_table(rows: Sequence[Row]) -> str:
    lines = [
        "| round | server | clients | img/s | valid/s | p50 ms | p99 ms | mean batch | model busy | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "unavailable" in row:
            lines.append(f"| {row['round']} | {row['server']} | - | unavailable: "
                         f"{row['unavailable'][:160]} | | | | | | |")  # fmt: skip
            continue
        for p in row["closed"]:
            lines.append(
                f"| {row['round']} | {row['server']} | {p['concurrency']} | {_f(p['img_s'])} | "
                f"{_f(p['valid_per_s'])} | {_f(p['p50_ms'])} | {_f(p['p99_ms'])} | "
                f"{_f(p['mean_batch'])} | {_f(p['engine_busy'], 2)} | {p['errors']} |"
            )
    return "\n".join(lines)


def open_table(rows: Sequence[Row]) -> str:
    lines = [
        "| round | server | x saturation | offered/s | sent | answered | 200 | refused (status: n) | transport errors | p99 ms (200) | refusal p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for p in row.get("open", []):
            refused = {s: n for s, n in p["by_status"].items() if int(s) != 200}
            lines.append(
                f"| {row['round']} | {row['server']} | {p['fraction']} | {_f(p['rate_per_s'])} | "
                f"{p['sent']} | {p['answered']} | {p['ok']} | {json.dumps(refused)} | "
                f"{p['transport_errors']} | {_f(p['p99_ms'])} | {_f(p['refusal_p99_ms'], 2)} |"
            )
    return "\n".join(lines)


def resources_table(rows: Sequence[Row]) -> str:
    lines = [
        "| round | server | cold start s | peak RSS MiB (all its processes) |",
        "|---|---|---|---|",
    ]
    for row in rows:
        if "cold_start_s" in row:
            lines.append(f"| {row['round']} | {row['server']} | {row['cold_start_s']:.1f} | "
                         f"{row['peak_rss_bytes'] / 2**20:.0f} |")  # fmt: skip
    return "\n".join(lines)


def behaviour_table(rows: Sequence[Row]) -> str:
    lines = [
        "| server | corrupt: good answered | disconnect: hung-up images run | deadline: late answers, run | overload burst: statuses, with Retry-After, refusal p99 ms | /metrics: batch size; queue wait |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        b = row.get("behaviour")
        if not b:
            continue
        c = b["corrupt"]
        cells = [f"{c['good_answered']}/{c['good_sent']}"]
        if "disconnect" in b:
            d, t, o = b["disconnect"], b["deadline"], b["overload"]
            cells += [
                f"{d['late_run_by_model']}/{d['late']}",
                f"{json.dumps(t['late_statuses'])}, run {t['late_run_by_model']}/{t['late']}",
                f"{json.dumps(o['statuses'])}, {o['refused_with_retry_after']}/{o['refused']}, "
                f"{_f(o['refusal_p99_ms'], 2)}",
            ]
        else:
            cells += ["-", "-", "-"]
        m = b["metrics"]
        shown = (f"{m.get('status')}: {', '.join(m.get('batch_size', [])) or 'none'}; "
                 f"{', '.join(m.get('queue_wait', [])) or 'none'}")  # fmt: skip
        cells.append(shown if m.get("url") else "-")
        lines.append(f"| {row['server']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: Sequence[Row], name: str, title: str, out_dir: Path = IMG_DIR) -> list[Path]:
    """images/s against clients, and p99 against offered load; one line per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    servers = sorted({row["server"] for row in rows if "closed" in row})
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for server in servers:
        clients = sorted({p["concurrency"] for r in rows if r["server"] == server
                          for p in r.get("closed", [])})  # fmt: skip
        medians = [(c, median_at(rows, server, c, "img_s")) for c in clients]
        known = [(c, y) for c, y in medians if y is not None]
        if known:
            ax.plot(*zip(*known, strict=True), marker="o", label=server)
    ax.set(xlabel="clients (closed loop)", ylabel="images/s (median of rounds)", title=title)
    ax.legend()
    paths.append(out_dir / f"{name}-throughput.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for server in servers:
        points = sorted((p["rate_per_s"], p["p99_ms"]) for r in rows if r["server"] == server
                        for p in r.get("open", []) if not math.isnan(p["p99_ms"]))  # fmt: skip
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=server)
    if not ax.lines:
        plt.close(fig)
        return paths  # no open-loop points (a quick run)
    ax.set(xlabel="offered load (requests/s, open loop)", ylabel="p99 of 200s (ms)", title=title,
           yscale="log")  # fmt: skip
    ax.legend()
    paths.append(out_dir / f"{name}-p99.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths
