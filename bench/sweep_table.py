"""The offline sweep's rows read back: the point at a (mode, batch), the knee, a table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from service.inference.decoding.decoders import DecodingMode

KNEE_FRACTION: Final = 0.9

Row = dict[str, Any]


def img_s_at(rows: Sequence[Row], mode: DecodingMode, batch_size: int | None) -> float | None:
    """The measured images/s at (mode, batch size); None if that point did not run."""
    for row in rows:
        if row["mode"] == mode.value and row["batch_size"] == batch_size:
            return float(row["img_s"]) if row.get("img_s") else None
    return None


def worst_ratio(rows: Sequence[Row], top: DecodingMode, bottom: DecodingMode) -> float | None:
    """The smallest ``top``/``bottom`` images/s ratio over the batch sizes both measured."""
    ratios = []
    for size in sorted({int(r["batch_size"]) for r in rows}):
        high, low = img_s_at(rows, top, size), img_s_at(rows, bottom, size)
        if high is not None and low is not None:
            ratios.append(high / low)
    return min(ratios) if ratios else None


def knee(rows: Sequence[Row], fraction: float = KNEE_FRACTION) -> dict[str, int]:
    """Per mode, the smallest batch size reaching ``fraction`` of the mode's best img/s:
    larger batches buy little throughput and cost latency and memory."""
    best: dict[str, float] = {}
    for row in rows:
        if row.get("img_s") is not None:
            best[row["mode"]] = max(best.get(row["mode"], 0.0), row["img_s"])
    knees: dict[str, int] = {}
    for row in sorted(rows, key=lambda r: int(r["batch_size"])):
        mode, rate = row["mode"], row.get("img_s")
        if mode not in knees and rate is not None and rate >= fraction * best[mode]:
            knees[mode] = int(row["batch_size"])
    return knees


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def markdown_table(rows: Sequence[Row]) -> str:
    """One line per point; extra columns (e.g. ``fraction_of_bound``) when present."""
    bound = any("fraction_of_bound" in row for row in rows)
    header = "| mode | batch | img/s | tokens/img | passes/img | peak MiB | images | wall s |"
    lines = [header + (" % of bound |" if bound else ""), "|---" * (9 if bound else 8) + "|"]
    for row in rows:
        if row.get("img_s") is None:
            why = "out of memory" if row.get("oom") else row.get("error") or row.get("skipped")
            lines.append(f"| {row['mode']} | {row['batch_size']} | {why} |")
            continue
        passes = row.get("forward_passes_per_image")
        line = (
            f"| {row['mode']} | {row['batch_size']} | {row['img_s']:.1f} | "
            f"{row['tokens_per_image']:.1f} | {'-' if passes is None else f'{passes:.1f}'} | "
            f"{_mib(row['peak_device_memory_bytes'])} | {row['images']}"
            f"{'' if row.get('complete', True) else ' (budget)'} | {row['wall_s']:.2f} |"
        )
        if bound:
            line += f" {100 * row.get('fraction_of_bound', 0.0):.2f} |"
        lines.append(line)
    return "\n".join(lines)
