"""Before/after for one service setting: the same closed-loop points, one server per config.

    python -m bench.ablation [--model-dir DIR] [--clients 16,32,64] [--point-s 6]
        --config FF_TORCH_THREADS=2 --config FF_TORCH_THREADS=1

Each ``--config`` is a set of FF_* variables (comma-separated ``NAME=VALUE`` pairs; an
empty string is the defaults) for one spawn of our service on 127.0.0.1; every config is
measured at every client count with :func:`bench.serving.measure_ours` (images/s,
p50/p99, mean batch, engine busy). Configs run one after another, never at once, so they
do not share the cores. Without ``--model-dir`` the colour-trained demo model is built
first, as ``bench.run`` does. This is how the optimizations in docs/BENCHMARKS.md were
measured.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.load import payloads
from bench.models import prepare_model
from bench.report import closed_table
from bench.servers import spawn_service
from bench.serving import SuitePlan, measure_ours


def parse_config(text: str) -> dict[str, str]:
    pairs = [item.strip() for item in text.split(",") if item.strip()]
    config = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.startswith("FF_"):
            raise argparse.ArgumentTypeError(f"expected FF_NAME=VALUE, got {pair!r}")
        config[name] = value
    return config


def ablate(
    model_dir: Path, configs: list[dict[str, str]], clients: list[int], point_s: float
) -> list[dict[str, Any]]:
    plan = SuitePlan(point_s=point_s)
    images = payloads(64)
    results = []
    for config in configs:
        with spawn_service(model_dir, config) as server:
            rows = [measure_ours(server, images, count, plan) for count in clients]
        results.append({"config": config, "rows": rows})
    return results


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--config", type=parse_config, action="append", required=True)
    parser.add_argument("--clients", default="16,32,64")
    parser.add_argument("--point-s", type=float, default=6.0)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    with tempfile.TemporaryDirectory(prefix="ff-ablation-") as work:
        model_dir = args.model_dir or prepare_model(Path(work))
        results = ablate(model_dir, args.config, clients, args.point_s)
    for result in results:
        print(f"\n### {json.dumps(result['config']) or 'defaults'}\n")
        print(closed_table(result["rows"]))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
